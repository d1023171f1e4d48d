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

:class:`EmotionRecognizer` composes parts with one job each: :mod:`ser_modules.infer_loading` loads the
fold models (from an experiment or an export), :mod:`ser_modules.infer_windows` plans and reads a file's
windows, :mod:`ser_modules.infer_streaming` runs them through batches into result rows,
:mod:`ser_modules.infer_batching` computes a batch's inputs and probabilities, :mod:`ser_modules.infer_asr`
holds the ASR models and the transcript decoder, and :class:`ser_modules.dialog.DialogContext` gives IAAN
its previous turns.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd
import torch

from ser_modules.decoding import Transcriber
from ser_modules.dialog import DialogContext
from ser_modules.fileio import ManifestError, write_csv, write_text
from ser_modules.hparams import HparamsError
from ser_modules.infer_asr import AsrModels, TranscriptDecoder
from ser_modules.infer_batching import BatchPredictor
from ser_modules.infer_loading import FoldModel, is_export, load_export, load_experiment
from ser_modules.infer_streaming import ResultRows, WindowStream
from ser_modules.infer_windows import WindowPlanner
from ser_modules.jobs import resolve_device
from ser_modules.ser_training import VariantSpec

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


def _part_attribute(part: str, name: str, doc: str) -> property:
    """An attribute of the recognizer held by one of its parts, read and set through it (so that, e.g.,
    ``rec.max_seconds = 2.0`` changes the windows)."""
    return property(lambda self: getattr(getattr(self, part), name),
                    lambda self, value: setattr(getattr(self, part), name, value), doc=doc)


class EmotionRecognizer:
    """A trained SER variant (one fold, or the ensemble of all folds) plus its ASR front end: the loaded
    models, composed with a window planner, a dialog context, a transcript decoder and a batch predictor."""

    max_seconds = _part_attribute("planner", "max_seconds", "Longer recordings are split or refused.")
    long = _part_attribute("planner", "long", "split or refuse recordings longer than max_seconds.")
    context = _part_attribute("dialog", "turns", "Audio path -> its previous turns (IAAN), or None.")
    decoder = _part_attribute("transcript", "decoder", "Transcript decoding: greedy, beam or joint.")
    transcript_asr = _part_attribute("transcript", "path", "The ASR model that transcribes (None without one).")
    decoding_keys = _part_attribute("transcript", "keys", "The transcript decoder's {key: (value, source)}.")

    def __init__(self, exp_dir: str, variant: str, folds: list[FoldModel], spec: VariantSpec, classes: list[str],
                 handcrafted: torch.nn.Module | None, device: str = "cpu", decoder: str = "greedy",
                 max_seconds: float = 30.0, long: str = "split", context: str | pd.DataFrame | None = None,
                 beam_size: int | None = None, ctc_weight: float | None = None):
        self.exp_dir, self.variant, self.folds, self.spec, self.classes = exp_dir, variant, folds, spec, classes
        self.handcrafted, self.device = handcrafted, resolve_device(device or "auto")
        self.planner = WindowPlanner(max_seconds, long, self.min_samples)
        self.dialog = DialogContext(context, spec.type == "iaan")
        self.asr = AsrModels(self.device)
        self.transcript = TranscriptDecoder(exp_dir, folds[0].asr_path, self.asr, decoder, beam_size, ctc_weight)
        self.batches = BatchPredictor(exp_dir, folds, spec, handcrafted, self.asr, self.transcript, self.device)

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_experiment(cls, exp_dir: str, variant: str | None = None, fold: str | None = None, run: int = 0,
                        device: str = "auto", **kwargs) -> "EmotionRecognizer":
        """The variant ``variant`` (default: the best) of the experiment ``exp_dir``, one fold's model or
        all folds' (:func:`~ser_modules.infer_loading.load_experiment`); ``kwargs`` as the constructor's."""
        return cls(*load_experiment(exp_dir, variant, fold, run, device), **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str, fold: str | None = None, device: str = "auto",
                        ser_models: torch.nn.ModuleDict | None = None, export_id: str | None = None,
                        run: int | None = None, **kwargs) -> "EmotionRecognizer":
        """An exported model folder (:mod:`ser_modules.export`), every file checked against its
        ``manifest.json`` first (:func:`~ser_modules.infer_loading.load_export`: ``ser_models`` already
        loaded by SpeechBrain's pretrainer from the hyperparams of ``export_id``; another ``run`` refused)."""
        return cls(*load_export(folder, fold, device, ser_models, export_id, run), **kwargs)

    @classmethod
    def load(cls, folder: str, variant: str | None = None, fold: str | None = None, run: int | None = None,
             device: str = "auto", **kwargs) -> "EmotionRecognizer":
        """An exported model folder (:meth:`from_pretrained`) or an experiment (:meth:`from_experiment`,
        ``run`` 0 unless given; an export holds one run, and another ``run`` is refused)."""
        if not is_export(folder):
            return cls.from_experiment(folder, variant, fold, run or 0, device, **kwargs)
        rec = cls.from_pretrained(folder, fold, device, run=run, **kwargs)
        if variant not in (None, rec.variant):
            raise ManifestError(f"{folder}: an export of {rec.variant!r}, not of {variant!r}")
        return rec

    def _asr_model(self, path: str) -> tuple:
        """The ASR model at ``path`` as loaded for this recognizer (:meth:`AsrModels.model`)."""
        return self.asr.model(path)

    # -- signals --------------------------------------------------------------------------------

    def predict_signals(self, wavs: list[torch.Tensor], contexts: list[tuple] | None = None) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` of 16 kHz mono signals (fold models averaged);
        ``contexts``: per signal, the signals of its dialog context turns (IAAN) or ``(None, None)``."""
        return self.batches.predict(wavs, contexts, transcripts=False)[0]

    def transcribe(self, wavs: list[torch.Tensor]) -> list[str]:
        """Transcripts of 16 kHz mono signals by the transcript ASR alone ("" without one)."""
        return self.transcript.transcribe(wavs)

    def transcriber(self) -> Transcriber | None:
        """The transcript ASR's decoder (None for an upstream, which has no vocabulary)."""
        return self.transcript.transcriber()

    def decoding_summary(self) -> str:
        """Which model transcribed, with which decoder and keys (and where the keys came from)."""
        return self.transcript.summary()

    def store_dtype(self) -> torch.dtype:
        """The precision stage 4 stored representations in (inference rounds the same way)."""
        return self.batches.store_dtype()

    def min_samples(self) -> int:
        """The shortest signal the variant's front ends hear: one analysis window of each."""
        return self.batches.min_samples()

    # -- files ----------------------------------------------------------------------------------

    def window_spans(self, path: str) -> list[tuple[float, float] | None]:
        """The file's windows as ``(start, end)`` seconds, ``[None]`` for one (:meth:`WindowPlanner.spans`)."""
        return self.planner.spans(path)

    def read_window(self, path: str, span: tuple[float, float] | None) -> torch.Tensor:
        """One window of :meth:`window_spans` read from the file (:meth:`WindowPlanner.read`)."""
        return self.planner.read(path, span)

    def iter_windows(self, path: str):
        """The file's windows, read one at a time as they are consumed."""
        return self.planner.iter_windows(path)

    def windows(self, path: str) -> list[torch.Tensor]:
        """All windows of the file at once (:meth:`predict_files` streams them instead)."""
        return list(self.iter_windows(path))

    def dialog_context(self, path: str) -> tuple[tuple, str]:
        """IAAN's context signals of ``path`` (previous turn of the same speaker, of the other; None
        where missing) and what the result row says about them."""
        return self.dialog(path, self.max_seconds)

    def predict_files(self, paths: list[str], batch_size: int = 8, progress: bool = False) -> list[dict]:
        """One result row per file, in the order given: emotion, class probabilities, transcript, or the
        error (and for IAAN, the dialog context used); windows stream through batches of at most
        ``batch_size`` (:class:`~ser_modules.infer_streaming.WindowStream`)."""
        rows = ResultRows(self.classes, self.spec.type == "iaan")
        stream = WindowStream(self.planner, self.dialog_context, self.batches.predict, rows, batch_size)
        started = time.time()
        stream.run(paths, progress)
        self.last_rtf = (time.time() - started) / max(rows.audio_seconds, 1e-9)
        self.last_audio_seconds = rows.audio_seconds
        return rows.ordered(paths)


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
