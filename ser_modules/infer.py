"""Emotion and transcript for new audio from a trained experiment folder.

Python::

    from ser_modules.infer import EmotionRecognizer
    rec = EmotionRecognizer.from_experiment("recipes/ctc_transfer/exp/demo")   # best variant, all folds
    rows = rec.predict_files(["a.wav", "b.flac"])   # emotion, probabilities, transcript per file

Command line::

    python -m ser_modules.infer EXP_DIR|EXPORT_DIR AUDIO... [--out results.csv|results.json] [--variant NAME]
        [--fold NAME] [--decoder greedy|beam|joint] [--beam-size N] [--ctc-weight W] [--device auto]
        [--batch-size 8] [--long split|refuse] [--context turns.csv|IEMOCAP_FOLDER]

A SER variant was trained once per fold (stage 5); by default the class probabilities of all fold
models are averaged (an ensemble), ``--fold`` picks one. Everything is read from the experiment
folder; nothing is downloaded. Audio of any sample rate or channel count is resampled to 16 kHz
mono. A recording longer than ``--max-seconds`` is split into windows whose probabilities are
averaged (weighted by duration) and whose transcripts are joined, or refused (``--long refuse``).
A file that cannot be read gets its own error row; the exit code is 1 if any file failed.

Inference streams: windows are read one at a time (``load_audio(path, start, end)``) and run in
batches of at most ``--batch-size`` windows (of one file or of several), and each file keeps only its
running duration-weighted probability sum and transcript pieces, so memory does not grow with the
length of a recording. Each ASR model runs once per window: one forward gives the SER variant its
layer and the transcript decoder its input (DeepSpeech2's CTC logits, the LAS listener output). The
transcript comes from the first fold's ASR model (the pretrained one, or that fold's adapted one),
decoded with the experiment's own ``beam_size`` and ``decode_ctc_weight``: those of stage 3's
configuration for an adapted model (``adapt/hyperparams.yaml``), else of stage 2's
(``asr/hyperparams.yaml``), else 4 and 0.5; ``--beam-size`` and ``--ctc-weight`` override them.

IAAN variants read the dialog context they were trained with: the previous turn of the same speaker
and of the interlocutor, found in ``--context`` (a CSV ``path,speaker,dialog,order`` or an
IEMOCAP-style folder, :mod:`ser_modules.dialog`). Without it they fall back to zero context, and the
``context`` column and the summary line say so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from hyperpyyaml import load_hyperpyyaml
from tqdm import tqdm

from ser_modules.asr_models import asr_model_path, check_upstream_source, load_asr_model
from ser_modules.audio import TARGET_SAMPLE_RATE, AudioReadError, audio_info, check_signal, load_audio
from ser_modules.decoding import Transcriber
from ser_modules.dialog import load_dialog_context
from ser_modules.experiment import best_variant, decoding_keys
from ser_modules.features import EGeMAPSFunctionals, minimum_samples
from ser_modules.fileio import ManifestError, read_json, write_csv, write_text
from ser_modules.hparams import HparamsError, stage_values
from ser_modules.jobs import resolve_device
from ser_modules.ser_training import VariantSpec, build_model, collate, forward

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".sph", ".mp3", ".aiff", ".aif")


def find_audio(paths: list[str]) -> list[str]:
    """Files as given, folders expanded (recursively, sorted) to their audio files."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            for folder, _, files in sorted(os.walk(p)):
                out += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(AUDIO_EXTENSIONS)]
        else:
            out.append(p)
    return out


@dataclass
class FoldModel:
    """One fold's trained SER model and the ASR model whose layer it reads."""

    fold: str
    ser: torch.nn.Module
    asr_path: str | None


@dataclass
class _FileState:
    """One file while its windows stream through the batches: its running duration-weighted sum of
    class probabilities and its transcript pieces (not its audio)."""

    path: str
    windows: int
    context: tuple
    note: str
    weighted: np.ndarray | None = None
    samples: int = 0
    texts: list[str] = field(default_factory=list)
    done: int = 0
    failed: bool = False

    def add(self, probs: np.ndarray, samples: int, text: str) -> None:
        term = np.asarray(probs, dtype=np.float64) * float(samples)  # float64, as the sum over a file's windows was
        self.weighted = term if self.weighted is None else self.weighted + term
        self.samples += samples
        if text:
            self.texts.append(text)
        self.done += 1


class EmotionRecognizer:
    """A trained SER variant (one fold, or the ensemble of all folds) plus its ASR front end."""

    def __init__(self, exp_dir: str, variant: str, folds: list[FoldModel], spec: VariantSpec, classes: list[str],
                 handcrafted: torch.nn.Module | None, device: str = "cpu", decoder: str = "greedy",
                 max_seconds: float = 30.0, long: str = "split", context: str | pd.DataFrame | None = None,
                 beam_size: int | None = None, ctc_weight: float | None = None):
        self.exp_dir, self.variant, self.folds, self.spec, self.classes = exp_dir, variant, folds, spec, classes
        self.handcrafted, self.device, self.decoder = handcrafted, resolve_device(device or "auto"), decoder
        self.max_seconds, self.long = max_seconds, long
        if long not in ("split", "refuse"):
            raise ValueError(f"long must be split or refuse, got {long!r}")
        self.egemaps = EGeMAPSFunctionals() if spec.type == "reference" else None
        # Dialog context (IAAN): absolute audio path -> (previous turn of the same speaker, of the other).
        self.context = None
        if context is not None:
            turns = load_dialog_context(context) if isinstance(context, str) else context
            self.context = {i: (p or None, o or None) for i, p, o in zip(turns["ID"], turns["prev_same"], turns["prev_other"])}
        self._asr: dict[str, tuple] = {}
        transcriber_asr = folds[0].asr_path or os.path.join(exp_dir, "asr", "model.pt")
        self.transcript_asr = transcriber_asr if os.path.isfile(transcriber_asr) else None
        # The transcript decoder's keys: the experiment's own (stage 3 or 2), unless given here.
        keys = decoding_keys(exp_dir, self.transcript_asr)
        if beam_size is not None:
            keys["beam_size"] = (int(beam_size), "--beam-size")
        if ctc_weight is not None:
            keys["decode_ctc_weight"] = (float(ctc_weight), "--ctc-weight")
        self.decoding_keys = keys
        if keys["beam_size"][0] < 1:
            raise ManifestError(f"beam_size {keys['beam_size'][0]} ({keys['beam_size'][1]}) must be at least 1")
        self._transcriber = None
        self._min_samples = None
        if decoder != "greedy" and self.transcript_asr is not None:  # refuse before any file is read
            transcriber = self.transcriber()
            if transcriber is not None and decoder not in transcriber.methods:
                raise ManifestError(f"{self.transcript_asr}: --decoder {decoder} needs a LAS with a CTC head; this "
                                    f"{type(transcriber.model).__name__} has none (use --decoder greedy or beam)")

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_experiment(cls, exp_dir: str, variant: str | None = None, fold: str | None = None, run: int = 0,
                        device: str = "auto", **kwargs) -> "EmotionRecognizer":
        """The variant ``variant`` (default: the best) of the experiment ``exp_dir``, one fold's model or
        all folds'; ``device`` ``auto`` is CUDA when available, else the CPU."""
        device = resolve_device(device)
        ser_dir = os.path.join(exp_dir, "ser")
        if not os.path.isdir(ser_dir):
            raise ManifestError(f"{exp_dir}: no trained SER models (ser/); run stages 1-5 first")
        if variant is None:
            variant = best_variant(exp_dir)
        vdir = os.path.join(ser_dir, variant)
        if not os.path.isdir(vdir):
            raise ManifestError(f"{exp_dir}: no SER variant {variant!r}; trained: {sorted(os.listdir(ser_dir))}")
        fold_names = [fold] if fold else sorted(f for f in os.listdir(vdir) if os.path.isdir(os.path.join(vdir, f))
                                                and not f.startswith("."))
        models, spec, classes = [], None, None
        for name in fold_names:
            run_dir = os.path.join(vdir, name, f"run{run}")
            info_path = os.path.join(run_dir, "model.json")
            if not os.path.isfile(info_path):
                raise ManifestError(f"{run_dir}: no trained model (model.json); is fold {name!r} run {run} trained?")
            info = read_json(info_path)
            spec, classes = VariantSpec.from_dict(info["variant"]), info["classes"]
            model = build_model(spec, info["dims"], len(classes), info["dropout"])
            model.load_state_dict(torch.load(os.path.join(run_dir, "model.pt"), map_location="cpu"))
            models.append(_fold_model(exp_dir, spec, name, model, device))
        handcrafted = load_handcrafted(exp_dir) if spec.uses_handcrafted else None
        return cls(exp_dir, variant, models, spec, classes, handcrafted, device, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str, fold: str | None = None, device: str = "auto",
                        ser_models: torch.nn.ModuleDict | None = None, export_id: str | None = None,
                        run: int | None = None, **kwargs) -> "EmotionRecognizer":
        """An exported model folder (:mod:`ser_modules.export`), every file checked against its
        ``manifest.json`` first: the fold models its ``hyperparams.yaml`` wires (or ``fold``'s), with
        their weights, and the ASR front end they read. ``ser_models``: those models already loaded
        (SpeechBrain's pretrainer did, in ``foreign_class``) from the hyperparams of ``export_id``;
        ``run`` other than the exported one is refused."""
        from ser_modules.export import export_hparams, fold_key, module_key, verify_export

        device = resolve_device(device)
        verify_export(folder)
        hparams = export_hparams(folder)
        if export_id is not None and export_id != hparams["export_id"]:
            raise ManifestError(f"{folder}: its hyperparams.yaml is not the one loaded (export {export_id}); "
                                "SpeechBrain reuses a savedir's files: give each exported model its own savedir")
        if run not in (None, hparams["run"]):
            raise ManifestError(f"{folder}: an export of run {hparams['run']}, not of run {run}")
        names = hparams["folds"]
        if fold is not None and fold not in names:
            raise ManifestError(f"{folder}: no fold {fold!r}; exported: {names}")
        spec = VariantSpec.from_dict(hparams["spec"])
        models = []
        for name in [fold] if fold else names:
            key = module_key(name)
            if ser_models is not None:
                model = ser_models[key]
            else:
                model = hparams["ser_models"][key]
                weights = hparams["pretrainer"].files[fold_key(name)]
                model.load_state_dict(torch.load(os.path.join(folder, weights), map_location="cpu"))
            models.append(_fold_model(folder, spec, name, model, device))
        handcrafted = load_handcrafted(folder) if spec.uses_handcrafted else None
        return cls(folder, hparams["variant"], models, spec, hparams["classes"], handcrafted, device, **kwargs)

    @classmethod
    def load(cls, folder: str, variant: str | None = None, fold: str | None = None, run: int | None = None,
             device: str = "auto", **kwargs) -> "EmotionRecognizer":
        """An exported model folder (:meth:`from_pretrained`) or an experiment (:meth:`from_experiment`,
        ``run`` 0 unless given; an export holds one run, and another ``run`` is refused)."""
        from ser_modules.export import INTERFACE_FILE, MANIFEST

        # An export's manifest deleted: refused (from_pretrained says so), not loaded unchecked as an experiment.
        if os.path.isfile(os.path.join(folder, MANIFEST)) or os.path.isfile(os.path.join(folder, INTERFACE_FILE)):
            rec = cls.from_pretrained(folder, fold, device, run=run, **kwargs)
            if variant not in (None, rec.variant):
                raise ManifestError(f"{folder}: an export of {rec.variant!r}, not of {variant!r}")
            return rec
        return cls.from_experiment(folder, variant, fold, run or 0, device, **kwargs)

    def _asr_model(self, path: str):
        if path not in self._asr:
            self._asr[path] = load_asr_model(path, self.device)
        return self._asr[path]

    # -- prediction -----------------------------------------------------------------------------

    @torch.no_grad()
    def _inputs(self, wavs: list[torch.Tensor], fold: FoldModel, contexts: list[tuple] | None = None,
                decode: bool = False) -> tuple[dict, tuple | None]:
        """The model inputs of a batch of signals for one fold model (as in stage 5's collate), and with
        ``decode`` what the transcript decoder reads of the signals, from the same ASR forward (else None);
        ``contexts`` gives IAAN each signal's (previous same-speaker turn, previous other turn) or Nones."""
        items = [{"id": str(i), "label": 0} for i in range(len(wavs))]
        decoded = None
        if self.spec.uses_handcrafted:
            for item, wav in zip(items, wavs):
                item["feats"] = self.handcrafted(wav)
        if self.egemaps is not None:
            for item, wav in zip(items, wavs):
                item["egemaps"] = self.egemaps(wav)
        if self.spec.asr:
            contexts = contexts or [(None, None)] * len(wavs)
            extra = [c for pair in contexts for c in pair if c is not None] if self.spec.type == "iaan" else []
            seqs, decoded = self._layer(wavs + extra, fold.asr_path, len(wavs) if decode else 0)
            context_seqs = iter(seqs[len(wavs):])
            for i, item in enumerate(items):
                seq = seqs[i]
                item["asr"] = seq.mean(dim=0, keepdim=True) if self.spec.pooled else seq
                if self.spec.type == "iaan":  # a missing context turn is one zero frame, as in training
                    zero = torch.zeros(1, seq.shape[1])
                    prev, other = contexts[i]
                    item["prev"] = next(context_seqs) if prev is not None else zero
                    item["other"] = next(context_seqs) if other is not None else zero
        return collate(items), decoded

    def _layer(self, wavs: list[torch.Tensor], path: str, n_decode: int = 0) -> tuple[list[torch.Tensor], tuple | None]:
        """The SER variant's ASR layer of each signal (a weighted variant's layers side by side), rounded
        to the precision of the stage-4 stores; with ``n_decode``, also what the transcript decoder reads
        of the first ``n_decode`` signals (``(out, lengths)``, cropped to their longest), from the same
        forward of the model (else None)."""
        model, _, feats, frames = self._asr_features(wavs, path)
        decoded = None
        if n_decode:
            out, (dec, dec_lengths) = self.transcriber().encode_with_layers(feats, frames, self.spec.layers)
            dec_lengths = dec_lengths[:n_decode]
            decoded = (dec[:n_decode, : int(dec_lengths.max())], dec_lengths)
        else:
            out = model.forward_layers(feats, frames, self.spec.layers)
        hidden = torch.cat([out[n][0].to(self.store_dtype()).float() for n in self.spec.layers], dim=-1)
        hlen = out[self.spec.layers[0]][1]
        return [hidden[i, : int(hlen[i])].cpu() for i in range(len(wavs))], decoded

    def _asr_features(self, wavs: list[torch.Tensor], path: str) -> tuple:
        """``(model, vocab, feats, frames)``: the ASR model at ``path`` and its features of the signals."""
        model, features, vocab, _ = self._asr_model(path)
        lengths = torch.tensor([len(w) for w in wavs], device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(self.device)
        return (model, vocab, *features(padded, lengths))

    def store_dtype(self) -> torch.dtype:
        """The precision stage 4 stored representations in (inference rounds the same way)."""
        if not hasattr(self, "_dtype"):
            path = os.path.join(self.exp_dir, "dump", "hyperparams.yaml")
            self._dtype = getattr(torch, stage_values(path).get("dtype", "float16") if os.path.isfile(path) else "float16")
        return self._dtype

    @torch.no_grad()
    def predict_signals(self, wavs: list[torch.Tensor], contexts: list[tuple] | None = None) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` of 16 kHz mono signals (fold models averaged);
        ``contexts``: per signal, the signals of its dialog context turns (IAAN) or ``(None, None)``."""
        return self._predict_batch(wavs, contexts, transcripts=False)[0]

    @torch.no_grad()
    def _predict_batch(self, wavs: list[torch.Tensor], contexts: list[tuple] | None = None,
                       transcripts: bool = True) -> tuple[np.ndarray, list[str]]:
        """Class probabilities ``[N, n_classes]`` (fold models averaged) and transcripts of a batch of
        signals. Each ASR model runs once on the batch: folds reading the same model share its layers,
        and the transcript model's forward also gives the decoder its input when SER reads that model."""
        transcriber = self.transcriber() if transcripts and self.transcript_asr is not None else None
        probs, batches, decoded = [], {}, None
        for fold in self.folds:
            if fold.asr_path not in batches:  # folds reading the same ASR model share their inputs
                decode = transcriber is not None and fold.asr_path == self.transcript_asr
                batches[fold.asr_path], out = self._inputs(wavs, fold, contexts, decode)
                decoded = out if decode else decoded
            logits = forward(fold.ser, self.spec, batches[fold.asr_path], self.device)
            probs.append(logits.float().softmax(-1).cpu().numpy())
        texts = [""] * len(wavs)
        if transcriber is not None:
            if decoded is None:  # SER reads no layer of the transcript model (e.g. the baseline): its own forward
                _, _, feats, frames = self._asr_features(wavs, self.transcript_asr)
                decoded = transcriber.encode(feats, frames)
            texts = transcriber.decode(*decoded, self.decoder)
        return np.mean(probs, axis=0), texts

    @torch.no_grad()
    def transcribe(self, wavs: list[torch.Tensor]) -> list[str]:
        """Transcripts of 16 kHz mono signals by the transcript ASR alone ("" without one)."""
        if self.transcript_asr is None:
            return [""] * len(wavs)
        transcriber = self.transcriber()
        if transcriber is None:  # a pretrained upstream has no output vocabulary: no transcript
            return [""] * len(wavs)
        _, _, feats, frames = self._asr_features(wavs, self.transcript_asr)
        return transcriber(feats, frames, self.decoder)

    def transcriber(self) -> Transcriber | None:
        """The transcript ASR's decoder, built once with the experiment's decoding keys (None for an
        upstream, which has no vocabulary)."""
        if self._transcriber is None:
            model, _, vocab, _ = self._asr_model(self.transcript_asr)
            if vocab is None:
                self._transcriber = False
            else:
                beam, (weight, weight_src) = self.decoding_keys["beam_size"][0], self.decoding_keys["decode_ctc_weight"]
                try:
                    self._transcriber = Transcriber(model, vocab, beam_size=int(beam), ctc_weight=float(weight))
                except ValueError as err:
                    raise ManifestError(f"{self.transcript_asr}: {err} (decode_ctc_weight from {weight_src})") from err
        return self._transcriber or None

    def decoding_summary(self) -> str:
        """Which model transcribed, with which decoder and keys (and where the keys came from)."""
        if self.transcript_asr is None:
            return "transcripts: none (no ASR model in the experiment)"
        transcriber = self.transcriber()
        if transcriber is None:
            return "transcripts: none (a pretrained upstream has no vocabulary)"
        model = f"{type(transcriber.model).__name__} {os.path.relpath(self.transcript_asr, self.exp_dir)}"
        if self.decoder == "greedy":
            return f"transcripts: greedy decoding ({model})"
        wanted = ["beam_size"] + (["decode_ctc_weight"] if self.decoder == "joint" else [])
        by_source: dict[str, list[str]] = {}
        for key in wanted:
            value, source = self.decoding_keys[key]
            by_source.setdefault(source, []).append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
        keys = "; ".join(" and ".join(items) + (" (default)" if src == "default" else f" from {src}")
                         for src, items in by_source.items())
        name = {"beam": "beam search", "joint": "joint CTC/attention beam search"}[self.decoder]
        return f"transcripts: {name}, {keys} ({model})"

    def min_samples(self) -> int:
        """The shortest signal the variant's front ends hear: one analysis window of each."""
        if self._min_samples is None:
            fronts = [self.handcrafted] + ([self._asr_model(f.asr_path)[1] for f in self.folds if f.asr_path])
            self._min_samples = max(minimum_samples(f) for f in fronts if f is not None) if any(fronts) else 0
        return self._min_samples

    def window_spans(self, path: str) -> list[tuple[float, float] | None]:
        """The file's windows of at most ``max_seconds`` as ``(start, end)`` seconds (``[None]``: the
        whole file, one window), from its header; :class:`AudioReadError` for a file without samples or,
        with ``long="refuse"``, a file longer than ``max_seconds``."""
        sr, frames, _ = audio_info(path)
        if frames == 0:
            raise AudioReadError(f"{path}: the file holds no audio samples")
        duration = frames / sr
        if duration <= self.max_seconds:
            return [None]
        if self.long == "refuse":
            raise AudioReadError(f"{path}: {duration:.1f} s is longer than the model's limit of {self.max_seconds:.0f} s "
                                 "(use --long split or raise --max-seconds)")
        edges = np.linspace(0, duration, int(np.ceil(duration / self.max_seconds)) + 1)
        return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]

    def read_window(self, path: str, span: tuple[float, float] | None) -> torch.Tensor:
        """One window of :meth:`window_spans` read from the file; :class:`AudioReadError` for samples
        that are not finite or all zero, or a clip too short."""
        wav = load_audio(path) if span is None else load_audio(path, *span)
        check_signal(wav, path, self.min_samples())
        return wav

    def iter_windows(self, path: str):
        """The file's windows (:meth:`window_spans`), read one at a time as they are consumed."""
        for span in self.window_spans(path):
            yield self.read_window(path, span)

    def windows(self, path: str) -> list[torch.Tensor]:
        """All windows of the file at once (:meth:`predict_files` streams them instead)."""
        return list(self.iter_windows(path))

    def dialog_context(self, path: str) -> tuple[tuple, str]:
        """IAAN's context signals of ``path`` (previous turn of the same speaker, of the other; None
        where missing) and what the result row says about them."""
        if self.spec.type != "iaan":
            return (None, None), ""
        if self.context is None:
            return (None, None), "zero (no --context given)"
        key = os.path.normpath(os.path.abspath(path))
        if key not in self.context:
            return (None, None), "zero (file not in --context)"
        turns = self.context[key]
        signals = tuple(load_audio(t, 0.0, self.max_seconds) if t else None for t in turns)
        return signals, "dialog" if any(t for t in turns) else "zero (first turn of its dialog)"

    def predict_files(self, paths: list[str], batch_size: int = 8, progress: bool = False) -> list[dict]:
        """One result row per file: emotion, class probabilities, transcript, or the error (and for
        IAAN, the dialog context used).

        Streams: each window is read when its batch is filled, batches hold at most ``batch_size``
        windows (of one or several files), and a file keeps only its running duration-weighted
        probability sum and transcript pieces until its last window is done, so memory does not grow
        with the length of a recording."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        rows: list[dict] = []
        batch: list[tuple[_FileState, torch.Tensor]] = []
        started, audio_seconds = time.time(), 0.0
        iaan = self.spec.type == "iaan"

        def error_row(path: str, message: str) -> dict:
            return {"file": path, "status": "error", "error": message, "duration": "", "windows": 0, "emotion": "",
                    **{f"p_{c}": "" for c in self.classes}, "transcript": "", **({"context": ""} if iaan else {})}

        def finish(state: _FileState) -> None:
            nonlocal audio_seconds
            p = state.weighted / float(state.samples)
            if not np.isfinite(p).all():  # never an emotion without probabilities
                rows.append(error_row(state.path, f"{state.path}: the model gave non-finite class probabilities"))
                return
            seconds = state.samples / TARGET_SAMPLE_RATE
            audio_seconds += seconds
            rows.append({"file": state.path, "status": "ok", "error": "", "duration": round(seconds, 3),
                         "windows": state.windows, "emotion": self.classes[int(p.argmax())],
                         **{f"p_{c}": round(float(v), 6) for c, v in zip(self.classes, p)},
                         "transcript": " ".join(state.texts), **({"context": state.note} if iaan else {})})

        def run_batch() -> None:
            live = [(state, wav) for state, wav in batch if not state.failed]
            batch.clear()
            if not live:
                return
            probs, texts = self._predict_batch([w for _, w in live], [s.context for s, _ in live])
            for (state, wav), p, text in zip(live, probs, texts):
                state.add(p, len(wav), text)
                if state.done == state.windows:
                    finish(state)

        for path in tqdm(paths, desc="inference", disable=not progress, unit="file"):
            try:
                spans = self.window_spans(path)
                context, note = self.dialog_context(path)
            except (AudioReadError, ManifestError, OSError, RuntimeError) as err:
                rows.append(error_row(path, str(err)))
                continue
            state = _FileState(path, len(spans), context, note)
            for span in spans:
                try:
                    wav = self.read_window(path, span)
                except (AudioReadError, ManifestError, OSError, RuntimeError) as err:
                    state.failed = True  # its windows still waiting in the batch are dropped
                    rows.append(error_row(path, str(err)))
                    break
                batch.append((state, wav))
                if len(batch) >= batch_size:
                    run_batch()
        run_batch()
        order = {p: i for i, p in enumerate(paths)}
        rows.sort(key=lambda r: order[r["file"]])
        self.last_rtf = (time.time() - started) / max(audio_seconds, 1e-9)
        self.last_audio_seconds = audio_seconds
        return rows


def _fold_model(exp_dir: str, spec: VariantSpec, fold: str, model: torch.nn.Module, device: str) -> FoldModel:
    """``model`` on ``device`` for inference, with the ASR model it reads (an upstream, the pretrained ASR
    or the fold's adapted one); a moved or deleted upstream folder is one line here, not at the first file."""
    asr_path = None
    if spec.asr:
        asr_path = asr_model_path(exp_dir, spec.asr, fold)
        check_upstream_source(asr_path)
    return FoldModel(fold, model.to(device).eval(), asr_path)


def load_handcrafted(exp_dir: str) -> torch.nn.Module:
    """The baseline's feature extractor exactly as stage 4 configured it."""
    path = os.path.join(exp_dir, "dump", "handcrafted_hparams.yaml")
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: missing (stage 4 writes it with the handcrafted features)")
    with open(path, encoding="utf-8") as f:
        return load_hyperpyyaml(f)["handcrafted_features"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Emotion and transcript for audio files with a trained experiment")
    parser.add_argument("exp_dir", help="experiment folder (after stages 1-5, ideally 6) or an exported model folder")
    parser.add_argument("audio", nargs="+", help="audio files or folders")
    parser.add_argument("--out", default=None, help="results.csv or results.json (default: print a table)")
    parser.add_argument("--variant", default=None, help="SER variant (default: the best UA in results.csv)")
    parser.add_argument("--fold", default=None, help="one fold's model (default: average all folds)")
    parser.add_argument("--run", type=int, default=None, help="the run's models (default 0; an export holds one)")
    parser.add_argument("--decoder", default="greedy", choices=["greedy", "beam", "joint"],
                        help="transcript decoding; joint: CTC/attention beam search (a LAS with a CTC head)")
    parser.add_argument("--beam-size", type=int, default=None,
                        help="beam size of --decoder beam/joint (default: the experiment's beam_size, else 4)")
    parser.add_argument("--ctc-weight", type=float, default=None,
                        help="CTC weight of --decoder joint (default: the experiment's decode_ctc_weight, else 0.5)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longer recordings are split or refused")
    parser.add_argument("--long", default="split", choices=["split", "refuse"])
    parser.add_argument("--context", default=None,
                        help="IAAN's dialog context: a CSV path,speaker,dialog,order or an IEMOCAP-style folder")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        rec = EmotionRecognizer.load(args.exp_dir, args.variant, args.fold, args.run, args.device,
                                                decoder=args.decoder, max_seconds=args.max_seconds, long=args.long,
                                                context=args.context, beam_size=args.beam_size,
                                                ctc_weight=args.ctc_weight)
    except (ManifestError, HparamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = find_audio(args.audio)
    rows = rec.predict_files(files, args.batch_size, progress=len(files) > 1)
    frame = pd.DataFrame(rows)
    if args.out and args.out.endswith(".json"):
        write_text(args.out, json.dumps(rows, indent=2) + "\n")
    elif args.out:
        write_csv(args.out, frame)
    else:
        print(frame.to_string(index=False))
    failed = int((frame["status"] != "ok").sum()) if len(frame) else 0
    print(f"{rec.variant} ({len(rec.folds)} fold model(s)): {len(rows) - failed} file(s) ok, {failed} failed; "
          f"{rec.last_audio_seconds:.1f} s of audio, real-time factor {rec.last_rtf:.3f}; {rec.decoding_summary()}",
          file=sys.stderr)
    if "context" in frame.columns:
        notes = frame.loc[frame["status"] == "ok", "context"].value_counts().to_dict()
        print("IAAN dialog context: " + ", ".join(f"{n} file(s) {k}" for k, n in notes.items())
              + ("" if args.context else "; give --context (turns.csv or an IEMOCAP-style folder) to use the "
                 "previous turns, as in training"), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
