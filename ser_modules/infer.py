"""Emotion and transcript for new audio from a trained experiment folder.

Python::

    from ser_modules.infer import EmotionRecognizer
    rec = EmotionRecognizer.from_experiment("recipes/ctc_transfer/exp/demo")   # best variant, all folds
    rows = rec.predict_files(["a.wav", "b.flac"])   # emotion, probabilities, transcript per file

Command line::

    python -m ser_modules.infer EXP_DIR AUDIO... [--out results.csv|results.json] [--variant NAME]
        [--fold NAME] [--decoder greedy|beam|joint] [--device cpu] [--batch-size 8] [--long split|refuse]
        [--context turns.csv|IEMOCAP_FOLDER]

A SER variant was trained once per fold (stage 5); by default the class probabilities of all fold
models are averaged (an ensemble), ``--fold`` picks one. Everything is read from the experiment
folder; nothing is downloaded. Audio of any sample rate or channel count is resampled to 16 kHz
mono. A recording longer than ``--max-seconds`` is split into windows whose probabilities are
averaged (weighted by duration) and whose transcripts are joined, or refused (``--long refuse``).
A file that cannot be read gets its own error row; the exit code is 1 if any file failed.

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
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from hyperpyyaml import load_hyperpyyaml
from tqdm import tqdm

from ser_modules.asr_models import asr_model_path, check_upstream_source, load_asr_model
from ser_modules.audio import AudioReadError, audio_info, check_signal, load_audio
from ser_modules.decoding import Transcriber
from ser_modules.dialog import load_dialog_context
from ser_modules.features import EGeMAPSFunctionals, minimum_samples
from ser_modules.fileio import ManifestError, read_json, write_csv, write_text
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


class EmotionRecognizer:
    """A trained SER variant (one fold, or the ensemble of all folds) plus its ASR front end."""

    def __init__(self, exp_dir: str, variant: str, folds: list[FoldModel], spec: VariantSpec, classes: list[str],
                 handcrafted: torch.nn.Module | None, device: str = "cpu", decoder: str = "greedy",
                 max_seconds: float = 30.0, long: str = "split", context: str | pd.DataFrame | None = None):
        self.exp_dir, self.variant, self.folds, self.spec, self.classes = exp_dir, variant, folds, spec, classes
        self.handcrafted, self.device, self.decoder = handcrafted, device, decoder
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
        self._transcriber = None
        if decoder != "greedy" and self.transcript_asr is not None:  # refuse before any file is read
            transcriber = self.transcriber()
            if transcriber is not None and decoder not in transcriber.methods:
                raise ManifestError(f"{self.transcript_asr}: --decoder {decoder} needs a LAS with a CTC head; this "
                                    f"{type(transcriber.model).__name__} has none (use --decoder greedy or beam)")

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_experiment(cls, exp_dir: str, variant: str | None = None, fold: str | None = None, run: int = 0,
                        device: str = "cpu", **kwargs) -> "EmotionRecognizer":
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
            asr_path = None
            if spec.asr:  # an upstream, the pretrained ASR or the fold's adapted one
                asr_path = asr_model_path(exp_dir, spec.asr, name)
                check_upstream_source(asr_path)  # a moved or deleted upstream folder: one line, not at the first file
            models.append(FoldModel(name, model.to(device).eval(), asr_path))
        handcrafted = None
        if spec.uses_handcrafted:
            handcrafted = load_handcrafted(exp_dir)
        return cls(exp_dir, variant, models, spec, classes, handcrafted, device, **kwargs)

    def _asr_model(self, path: str):
        if path not in self._asr:
            self._asr[path] = load_asr_model(path, self.device)
        return self._asr[path]

    # -- prediction -----------------------------------------------------------------------------

    @torch.no_grad()
    def _inputs(self, wavs: list[torch.Tensor], fold: FoldModel, contexts: list[tuple] | None = None) -> dict:
        """The model inputs of a batch of signals for one fold model (as in stage 5's collate);
        ``contexts`` gives IAAN each signal's (previous same-speaker turn, previous other turn) or Nones."""
        items = [{"id": str(i), "label": 0} for i in range(len(wavs))]
        if self.spec.uses_handcrafted:
            for item, wav in zip(items, wavs):
                item["feats"] = self.handcrafted(wav)
        if self.egemaps is not None:
            for item, wav in zip(items, wavs):
                item["egemaps"] = self.egemaps(wav)
        if self.spec.asr:
            contexts = contexts or [(None, None)] * len(wavs)
            extra = [c for pair in contexts for c in pair if c is not None] if self.spec.type == "iaan" else []
            seqs = self._layer(wavs + extra, fold.asr_path)
            context_seqs = iter(seqs[len(wavs):])
            for i, item in enumerate(items):
                seq = seqs[i]
                item["asr"] = seq.mean(dim=0, keepdim=True) if self.spec.pooled else seq
                if self.spec.type == "iaan":  # a missing context turn is one zero frame, as in training
                    zero = torch.zeros(1, seq.shape[1])
                    prev, other = contexts[i]
                    item["prev"] = next(context_seqs) if prev is not None else zero
                    item["other"] = next(context_seqs) if other is not None else zero
        return collate(items)

    def _layer(self, wavs: list[torch.Tensor], path: str) -> list[torch.Tensor]:
        """The SER variant's ASR layer of each signal (a weighted variant's layers side by side), rounded
        to the precision of the stage-4 stores."""
        model, _, feats, frames = self._asr_features(wavs, path)
        out = model.forward_layers(feats, frames, self.spec.layers)
        hidden = torch.cat([out[n][0].to(self.store_dtype()).float() for n in self.spec.layers], dim=-1)
        hlen = out[self.spec.layers[0]][1]
        return [hidden[i, : int(hlen[i])].cpu() for i in range(len(wavs))]

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
            dtype = "float16"
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    dtype = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("dtype:")), dtype)
            self._dtype = getattr(torch, dtype)
        return self._dtype

    @torch.no_grad()
    def predict_signals(self, wavs: list[torch.Tensor], contexts: list[tuple] | None = None) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` of 16 kHz mono signals (fold models averaged);
        ``contexts``: per signal, the signals of its dialog context turns (IAAN) or ``(None, None)``."""
        probs, batches = [], {}
        for fold in self.folds:
            if fold.asr_path not in batches:  # folds reading the same ASR model share their inputs
                batches[fold.asr_path] = self._inputs(wavs, fold, contexts)
            logits = forward(fold.ser, self.spec, batches[fold.asr_path], self.device)
            probs.append(logits.float().softmax(-1).cpu().numpy())
        return np.mean(probs, axis=0)

    @torch.no_grad()
    def transcribe(self, wavs: list[torch.Tensor]) -> list[str]:
        if self.transcript_asr is None:
            return [""] * len(wavs)
        transcriber = self.transcriber()
        if transcriber is None:  # a pretrained upstream has no output vocabulary: no transcript
            return [""] * len(wavs)
        _, _, feats, frames = self._asr_features(wavs, self.transcript_asr)
        return transcriber(feats, frames, self.decoder)

    def transcriber(self) -> Transcriber | None:
        """The transcript ASR's decoder, built once (None for an upstream, which has no vocabulary)."""
        if self._transcriber is None:
            model, _, vocab, _ = self._asr_model(self.transcript_asr)
            self._transcriber = Transcriber(model, vocab, beam_size=4) if vocab is not None else False
        return self._transcriber or None

    def min_samples(self) -> int:
        """The shortest signal the variant's front ends hear: one analysis window of each."""
        fronts = [self.handcrafted] + ([self._asr_model(f.asr_path)[1] for f in self.folds if f.asr_path])
        return max(minimum_samples(f) for f in fronts if f is not None) if any(fronts) else 0

    def windows(self, path: str) -> list[torch.Tensor]:
        """The file's signal, split into windows of at most ``max_seconds`` (read one at a time);
        :class:`AudioReadError` for samples that are not finite or all zero, or a clip too short."""
        sr, frames, _ = audio_info(path)
        if frames == 0:
            raise AudioReadError(f"{path}: the file holds no audio samples")
        duration = frames / sr
        if duration <= self.max_seconds:
            wavs = [load_audio(path)]
        elif self.long == "refuse":
            raise AudioReadError(f"{path}: {duration:.1f} s is longer than the model's limit of {self.max_seconds:.0f} s "
                                 "(use --long split or raise --max-seconds)")
        else:
            edges = np.linspace(0, duration, int(np.ceil(duration / self.max_seconds)) + 1)
            wavs = [load_audio(path, float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]
        for wav in wavs:
            check_signal(wav, path, self.min_samples())
        return wavs

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
        IAAN, the dialog context used)."""
        rows, pending = [], []
        started, audio_seconds = time.time(), 0.0
        iaan = self.spec.type == "iaan"

        def error_row(path: str, message: str) -> dict:
            return {"file": path, "status": "error", "error": message, "duration": "", "windows": 0, "emotion": "",
                    **{f"p_{c}": "" for c in self.classes}, "transcript": "", **({"context": ""} if iaan else {})}

        def flush():
            nonlocal audio_seconds
            if not pending:
                return
            wavs = [w for _, ws, _, _ in pending for w in ws]
            contexts = [c for _, ws, c, _ in pending for _ in ws]
            probs = self.predict_signals(wavs, contexts)
            texts = self.transcribe(wavs)
            k = 0
            for path, ws, _, note in pending:
                lengths = np.array([len(w) for w in ws], dtype=float)
                p = (probs[k : k + len(ws)] * lengths[:, None]).sum(0) / lengths.sum()
                text = " ".join(t for t in texts[k : k + len(ws)] if t)
                k += len(ws)
                if not np.isfinite(p).all():  # never an emotion without probabilities
                    rows.append(error_row(path, f"{path}: the model gave non-finite class probabilities"))
                    continue
                audio_seconds += lengths.sum() / 16000
                rows.append({"file": path, "status": "ok", "error": "", "duration": round(lengths.sum() / 16000, 3),
                             "windows": len(ws), "emotion": self.classes[int(p.argmax())],
                             **{f"p_{c}": round(float(v), 6) for c, v in zip(self.classes, p)}, "transcript": text,
                             **({"context": note} if iaan else {})})
            pending.clear()

        for path in tqdm(paths, desc="inference", disable=not progress, unit="file"):
            try:
                windows = self.windows(path)
                context, note = self.dialog_context(path)
                pending.append((path, windows, context, note))
            except (AudioReadError, ManifestError, OSError, RuntimeError) as err:
                rows.append(error_row(path, str(err)))
            if sum(len(ws) for _, ws, _, _ in pending) >= batch_size:
                flush()
        flush()
        order = {p: i for i, p in enumerate(paths)}
        rows.sort(key=lambda r: order[r["file"]])
        self.last_rtf = (time.time() - started) / max(audio_seconds, 1e-9)
        self.last_audio_seconds = audio_seconds
        return rows


def best_variant(exp_dir: str) -> str:
    """The variant with the highest mean UA in ``results.csv`` (stage 6), else in stage 5's summary."""
    path = os.path.join(exp_dir, "results.csv")
    if os.path.isfile(path):
        results = pd.read_csv(path)
        if len(results):
            return str(results.sort_values("UA_mean", ascending=False)["model"].iloc[0])
    summary = read_json(os.path.join(exp_dir, "ser", "summary.json"))
    return max(summary["variants"], key=lambda v: summary["variants"][v]["UA"])


def load_handcrafted(exp_dir: str) -> torch.nn.Module:
    """The baseline's feature extractor exactly as stage 4 configured it."""
    path = os.path.join(exp_dir, "dump", "handcrafted_hparams.yaml")
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: missing (stage 4 writes it with the handcrafted features)")
    with open(path, encoding="utf-8") as f:
        return load_hyperpyyaml(f)["handcrafted_features"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Emotion and transcript for audio files with a trained experiment")
    parser.add_argument("exp_dir", help="experiment folder (after stages 1-5, ideally 6)")
    parser.add_argument("audio", nargs="+", help="audio files or folders")
    parser.add_argument("--out", default=None, help="results.csv or results.json (default: print a table)")
    parser.add_argument("--variant", default=None, help="SER variant (default: the best UA in results.csv)")
    parser.add_argument("--fold", default=None, help="one fold's model (default: average all folds)")
    parser.add_argument("--run", type=int, default=0)
    parser.add_argument("--decoder", default="greedy", choices=["greedy", "beam", "joint"],
                        help="transcript decoding; joint: CTC/attention beam search (a LAS with a CTC head)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longer recordings are split or refused")
    parser.add_argument("--long", default="split", choices=["split", "refuse"])
    parser.add_argument("--context", default=None,
                        help="IAAN's dialog context: a CSV path,speaker,dialog,order or an IEMOCAP-style folder")
    args = parser.parse_args(argv)
    try:
        rec = EmotionRecognizer.from_experiment(args.exp_dir, args.variant, args.fold, args.run, args.device,
                                                decoder=args.decoder, max_seconds=args.max_seconds, long=args.long,
                                                context=args.context)
    except ManifestError as err:
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
          f"{rec.last_audio_seconds:.1f} s of audio, real-time factor {rec.last_rtf:.3f}", file=sys.stderr)
    if "context" in frame.columns:
        notes = frame.loc[frame["status"] == "ok", "context"].value_counts().to_dict()
        print("IAAN dialog context: " + ", ".join(f"{n} file(s) {k}" for k, n in notes.items())
              + ("" if args.context else "; give --context (turns.csv or an IEMOCAP-style folder) to use the "
                 "previous turns, as in training"), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
