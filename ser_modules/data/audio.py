"""Reading audio of any format, sample rate and channel count as 16 kHz mono.

``torchaudio.load`` needs torchcodec, which this toolkit does not depend on, so audio is read
with soundfile (libsndfile: WAV, FLAC, NIST SPHERE, OGG, ...) and resampled with torchaudio.
"""

from __future__ import annotations

import math
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ser_modules.utils.audio_file import AudioReadError, audio_duration, audio_info, read_samples, signal_problem  # noqa: F401
from ser_modules.utils.fileio import atomic_path

TARGET_SAMPLE_RATE = 16000


def check_signal(wav: torch.Tensor, path: str, min_samples: int = 0, sample_rate: int = TARGET_SAMPLE_RATE) -> None:
    """Raise :class:`AudioReadError` naming ``path`` when ``wav`` has NaN or infinite samples, only zero
    samples, or fewer than ``min_samples`` samples (e.g. one analysis window of the model's features)."""
    problem = signal_problem(wav.detach().cpu().numpy(), path, min_samples, sample_rate)
    if problem:
        raise AudioReadError(problem)


def load_audio(
    path: str,
    start: float | None = None,
    end: float | None = None,
    target_sr: int = TARGET_SAMPLE_RATE,
) -> torch.Tensor:
    """Read ``path`` (optionally the segment ``[start, end)`` in seconds) as mono float32 at ``target_sr``.

    Channels are averaged; any sample rate is resampled. Returns a 1-D tensor ``[samples]``.
    Raises :class:`AudioReadError` naming the file when it is missing, empty, corrupt or not audio, or
    when its samples are not finite or all zero (:func:`check_signal`).
    """
    data, sr = read_samples(path, start, end)
    wav = torch.from_numpy(data)
    check_signal(wav, path, sample_rate=sr)
    if sr != target_sr:
        wav = resample(wav, sr, target_sr)
    return wav


def resample(wav: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last dimension (torchaudio's windowed sinc)."""
    if orig_sr == target_sr:
        return wav
    g = math.gcd(int(orig_sr), int(target_sr))
    return AF.resample(wav, int(orig_sr) // g, int(target_sr) // g)


def write_audio(path: str, wav: torch.Tensor | np.ndarray, sample_rate: int = TARGET_SAMPLE_RATE) -> None:
    """Write mono audio as 16-bit PCM (format from the extension: .wav, .flac, ...) atomically."""
    data = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    ext = os.path.splitext(path)[1].lstrip(".").upper() or "WAV"
    with atomic_path(path) as tmp:
        sf.write(tmp, data, sample_rate, subtype="PCM_16", format=ext)
