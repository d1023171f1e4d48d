""":class:`EmotionRecognizer`: emotion and transcript for new audio from a trained experiment folder
or an exported model (the command line and the module's documentation: :mod:`ser_modules.infer`).

It composes parts with one job each: :mod:`ser_modules.inference.loading` loads the fold models (from an
experiment or an export), :mod:`ser_modules.inference.windows` plans and reads a file's windows,
:mod:`ser_modules.inference.streaming` runs them through batches into result rows,
:mod:`ser_modules.inference.batching` computes a batch's inputs and probabilities,
:mod:`ser_modules.inference.asr` holds the ASR models and the transcript decoder, and
:class:`ser_modules.data.dialog.DialogContext` gives IAAN its previous turns.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ser_modules.asr.decoding import Transcriber
from ser_modules.data.dialog import DialogContext
from ser_modules.inference.asr import AsrModels, TranscriptDecoder
from ser_modules.inference.batching import BatchPredictor
from ser_modules.inference.loading import FoldModel, is_export, load_experiment, load_export
from ser_modules.inference.streaming import ResultRows, WindowStream
from ser_modules.inference.windows import WindowPlanner
from ser_modules.ser.variants import VariantSpec
from ser_modules.utils.fileio import ManifestError
from ser_modules.utils.jobs import resolve_device


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
        self.exp_dir, self.variant, self.folds, self.spec = exp_dir, variant, folds, spec
        self.classes = classes if spec.predicts_classes else []  # a dimensional variant has no class outputs
        self.attributes = list(folds[0].attributes)  # its attribute outputs, in their original scale
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
        all folds' (:func:`~ser_modules.inference.loading.load_experiment`); ``kwargs`` as the constructor's."""
        return cls(*load_experiment(exp_dir, variant, fold, run, device), **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str, fold: str | None = None, device: str = "auto",
                        ser_models: torch.nn.ModuleDict | None = None, export_id: str | None = None,
                        run: int | None = None, **kwargs) -> "EmotionRecognizer":
        """An exported model folder (:mod:`ser_modules.export`), every file checked against its
        ``manifest.json`` first (:func:`~ser_modules.inference.loading.load_export`: ``ser_models`` already
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
        """Class probabilities ``[N, n_classes]`` of 16 kHz mono signals (fold models averaged), followed by the
        :attr:`attributes` in their original scale for a variant that predicts them (``[N, C + A]``);
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
        """One result row per file, in the order given: emotion, class probabilities, attribute values (a
        variant with attributes), transcript, or the error (and for IAAN, the dialog context used); windows stream through batches of at most
        ``batch_size`` (:class:`~ser_modules.inference.streaming.WindowStream`)."""
        rows = ResultRows(self.classes, self.spec.type == "iaan", self.attributes)
        stream = WindowStream(self.planner, self.dialog_context, self.batches.predict, rows, batch_size)
        started = time.time()
        stream.run(paths, progress)
        self.last_rtf = (time.time() - started) / max(rows.audio_seconds, 1e-9)
        self.last_audio_seconds = rows.audio_seconds
        return rows.ordered(paths)
