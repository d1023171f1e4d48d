"""Windows of long recordings for inference (:mod:`ser_modules.infer`): a recording longer than
``max_seconds`` is split into equal windows of at most that length (``long="split"``) or refused
(``long="refuse"``), and each window is read from the file only when it is needed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from ser_modules.data.audio import AudioReadError, audio_info, check_signal, load_audio


class WindowPlanner:
    """Plans a file's windows from its header and reads them one at a time; ``min_samples`` gives the
    shortest signal the model hears (asked only when a window is read: it may load the ASR models)."""

    def __init__(self, max_seconds: float, long: str, min_samples: Callable[[], int]):
        if long not in ("split", "refuse"):
            raise ValueError(f"long must be split or refuse, got {long!r}")
        self.max_seconds, self.long, self.min_samples = max_seconds, long, min_samples

    def spans(self, path: str) -> list[tuple[float, float] | None]:
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

    def read(self, path: str, span: tuple[float, float] | None) -> torch.Tensor:
        """One window of :meth:`spans` read from the file; :class:`AudioReadError` for samples that are
        not finite or all zero, or a clip too short."""
        wav = load_audio(path) if span is None else load_audio(path, *span)
        check_signal(wav, path, self.min_samples())
        return wav

    def iter_windows(self, path: str) -> Iterator[torch.Tensor]:
        """The file's windows (:meth:`spans`), read one at a time as they are consumed."""
        for span in self.spans(path):
            yield self.read(path, span)
