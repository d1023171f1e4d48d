"""Audio files without PyTorch: their headers, and whether their samples can be trained on.

Kept free of torch (numpy and soundfile only) so that stage 1's processes checking hundreds of
thousands of files (:mod:`ser_modules.data.audio_screen`) each cost tens of megabytes, not the ~700 MB a
CUDA build of torch takes to import. :mod:`ser_modules.data.audio` reads and resamples audio with torch
on top of these.
"""

from __future__ import annotations

import math
import os

import numpy as np
import soundfile as sf


class AudioReadError(RuntimeError):
    """An audio file is missing, empty, corrupt, not audio, or holds no usable signal (non-finite or
    only zero samples, shorter than a model can hear); the message names the file."""


def audio_info(path: str) -> tuple[int, int, int]:
    """Return ``(sample_rate, num_frames, channels)`` of ``path`` without reading the samples."""
    if not os.path.isfile(path):
        raise AudioReadError(f"{path}: no such audio file")
    try:
        info = sf.info(path)
    except Exception as err:  # libsndfile raises several types; all mean "not readable audio"
        raise AudioReadError(f"{path}: not a readable audio file ({err})") from err
    return int(info.samplerate), int(info.frames), int(info.channels)


def audio_duration(path: str) -> float:
    """Duration of ``path`` in seconds, read from the header."""
    sr, frames, _ = audio_info(path)
    return frames / sr


def header_duration(path: str) -> float:
    """Seconds from the header, NaN for a file whose header cannot be read: a preparer keeps such a row,
    so that stage 1's audio check lists it in ``rejected.csv`` with the reason instead of it vanishing."""
    try:
        return round(audio_duration(path), 4)
    except AudioReadError:
        return float("nan")


def signal_problem(samples: np.ndarray, path: str, min_samples: int = 0, sample_rate: int = 16000) -> str | None:
    """What makes the mono signal ``samples`` of ``path`` unusable (NaN or infinite samples, only zero
    samples, fewer than ``min_samples``, e.g. one analysis window of a model's features), or None."""
    bad = int((~np.isfinite(samples)).sum())
    if bad:
        return f"{path}: {bad} of {samples.size} samples are not finite (NaN or infinite)"
    if samples.size and not np.abs(samples).max() > 0:
        return f"{path}: every sample is zero (digital silence), nothing to recognise"
    if samples.size < min_samples:
        return (f"{path}: {samples.size / sample_rate * 1000:.1f} ms is shorter than the model's minimum of "
                f"{min_samples / sample_rate * 1000:.1f} ms")
    return None


def read_samples(path: str, start: float | None = None, end: float | None = None) -> tuple[np.ndarray, int]:
    """``(mono float32 samples, sample rate)`` of ``path`` or of its segment ``[start, end)`` in seconds,
    at the file's own rate (channels averaged); :class:`AudioReadError` naming the file when it is
    missing, empty, not audio or cannot be decoded, or the segment holds no sample."""
    sr, frames, _ = audio_info(path)
    if frames == 0:
        raise AudioReadError(f"{path}: the file holds no audio samples")
    first = 0 if start is None else max(0, int(round(start * sr)))
    last = frames if end is None else min(frames, int(round(end * sr)))
    if last <= first:
        raise AudioReadError(f"{path}: empty segment [{start}, {end}] s of a {frames / sr:.2f} s file")
    try:
        data, sr = sf.read(path, start=first, stop=last, dtype="float32", always_2d=True)
    except Exception as err:  # libsndfile raises several types; all mean "cannot be decoded"
        raise AudioReadError(f"{path}: cannot decode audio ({err})") from err
    if data.size == 0:
        raise AudioReadError(f"{path}: the file holds no audio samples")
    return np.ascontiguousarray(data.mean(axis=1)), sr


def audio_problem(path: str, start: float | None = None, end: float | None = None,
                  min_seconds: float = 0.0) -> str | None:
    """Why the audio of one manifest row (a file, or its segment) cannot be trained on, naming the
    file, or None. Read at the file's own sample rate: resampling cannot make bad samples good."""
    try:
        samples, sr = read_samples(path, start, end)
    except AudioReadError as err:
        return str(err)
    return signal_problem(samples, path, math.ceil(min_seconds * sr), sr)


def _seconds(cell) -> float | None:
    """A manifest's ``seg_start``/``seg_end`` cell (empty or NaN for a whole file) as seconds or None."""
    return None if cell is None or cell == "" or (isinstance(cell, float) and math.isnan(cell)) else float(cell)


def row_problem(job: tuple) -> tuple[int, str | None]:
    """``(index, path, seg_start, seg_end, min_seconds)`` -> ``(index, audio_problem(...))``: one job of a
    checking pool (a module-level function, so that worker processes import only this module)."""
    index, path, seg_start, seg_end, min_seconds = job
    return index, audio_problem(path, _seconds(seg_start), _seconds(seg_end), min_seconds)
