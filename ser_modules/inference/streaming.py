"""Streaming inference over files (:mod:`ser_modules.infer`): each window is read when its batch is
filled, batches hold at most ``batch_size`` windows (of one file or of several), and a file keeps only
its running duration-weighted probability sum and transcript pieces until its last window is done, so
memory does not grow with the length of a recording."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from ser_modules.data.audio import TARGET_SAMPLE_RATE, AudioReadError
from ser_modules.inference.windows import WindowPlanner
from ser_modules.utils.fileio import ManifestError

# What reading a file or its context may raise: the file gets an error row, the others go on.
READ_ERRORS = (AudioReadError, ManifestError, OSError, RuntimeError)


@dataclass
class FileState:
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


class ResultRows:
    """The result rows of one run over files: a file's row (emotion, class probabilities, attribute values,
    transcript and, for IAAN, the dialog context used) once its last window is done, or its error; and the
    audio heard. A file's output vector holds the ``classes``' probabilities then the ``attributes``."""

    def __init__(self, classes: list[str], iaan: bool, attributes: list[str] = ()):
        self.classes, self.iaan, self.attributes = classes, iaan, list(attributes)
        self.rows: list[dict] = []
        self.audio_seconds = 0.0

    def error(self, path: str, message: str) -> None:
        """The error row of a file that could not be read (or gave no usable probabilities)."""
        self.rows.append({"file": path, "status": "error", "error": message, "duration": "", "windows": 0,
                          **({"emotion": ""} if self.classes else {}), **{f"p_{c}": "" for c in self.classes},
                          **{a: "" for a in self.attributes}, "transcript": "", **({"context": ""} if self.iaan else {})})

    def finish(self, state: FileState) -> None:
        """The row of a file whose windows are all done: probabilities (and attributes) averaged weighted by
        duration."""
        p = state.weighted / float(state.samples)
        if not np.isfinite(p).all():  # never an emotion without probabilities
            self.error(state.path, f"{state.path}: the model gave non-finite "
                                   f"{'class probabilities' if self.classes else 'attribute values'}")
            return
        seconds = state.samples / TARGET_SAMPLE_RATE
        self.audio_seconds += seconds
        n = len(self.classes)
        self.rows.append({"file": state.path, "status": "ok", "error": "", "duration": round(seconds, 3),
                          "windows": state.windows, **({"emotion": self.classes[int(p[:n].argmax())]} if n else {}),
                          **{f"p_{c}": round(float(v), 6) for c, v in zip(self.classes, p)},
                          **{a: round(float(v), 6) for a, v in zip(self.attributes, p[n:])},
                          "transcript": " ".join(state.texts), **({"context": state.note} if self.iaan else {})})

    def ordered(self, paths: list[str]) -> list[dict]:
        """The rows in the order their files were given."""
        order = {p: i for i, p in enumerate(paths)}
        return sorted(self.rows, key=lambda r: order[r["file"]])


class WindowStream:
    """Feeds files' windows (``planner``) through batches of at most ``batch_size`` windows to ``predict``
    (signals, contexts -> probabilities, transcripts), with each file's dialog context (``context_of``:
    path -> (context signals, note)), and hands each finished file or error to ``rows``."""

    def __init__(self, planner: WindowPlanner, context_of: Callable[[str], tuple[tuple, str]],
                 predict: Callable, rows: ResultRows, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.planner, self.context_of, self.predict, self.rows = planner, context_of, predict, rows
        self.batch_size = batch_size
        self.batch: list[tuple[FileState, torch.Tensor]] = []

    def run(self, paths: list[str], progress: bool = False) -> None:
        """Every file's windows, then the last partial batch."""
        for path in tqdm(paths, desc="inference", disable=not progress, unit="file"):
            self.add(path)
        self.flush()

    def add(self, path: str) -> None:
        """Plan the file's windows and read each into the batch, running the batch whenever it is full."""
        try:
            spans = self.planner.spans(path)
            context, note = self.context_of(path)
        except READ_ERRORS as err:
            self.rows.error(path, str(err))
            return
        state = FileState(path, len(spans), context, note)
        for span in spans:
            try:
                wav = self.planner.read(path, span)
            except READ_ERRORS as err:
                state.failed = True  # its windows still waiting in the batch are dropped
                self.rows.error(path, str(err))
                return
            self.batch.append((state, wav))
            if len(self.batch) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        """Run the batch's windows of files that have not failed and add them to their files."""
        live = [(state, wav) for state, wav in self.batch if not state.failed]
        self.batch = []
        if not live:
            return
        probs, texts = self.predict([w for _, w in live], [s.context for s, _ in live])
        for (state, wav), p, text in zip(live, probs, texts):
            state.add(p, len(wav), text)
            if state.done == state.windows:
                self.rows.finish(state)
