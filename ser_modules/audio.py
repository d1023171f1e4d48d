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

TARGET_SAMPLE_RATE = 16000


class AudioReadError(RuntimeError):
    """An audio file is missing, empty, corrupt, not audio, or holds no usable signal (non-finite or
    only zero samples, shorter than a model can hear); the message names the file."""


def check_signal(wav: torch.Tensor, path: str, min_samples: int = 0, sample_rate: int = TARGET_SAMPLE_RATE) -> None:
    """Raise :class:`AudioReadError` naming ``path`` when ``wav`` has NaN or infinite samples, only zero
    samples, or fewer than ``min_samples`` samples (e.g. one analysis window of the model's features)."""
    bad = int((~torch.isfinite(wav)).sum())
    if bad:
        raise AudioReadError(f"{path}: {bad} of {wav.numel()} samples are not finite (NaN or infinite)")
    if wav.numel() and not bool(wav.abs().max() > 0):
        raise AudioReadError(f"{path}: every sample is zero (digital silence), nothing to recognise")
    if wav.numel() < min_samples:
        raise AudioReadError(f"{path}: {wav.numel() / sample_rate * 1000:.1f} ms is shorter than the model's "
                             f"minimum of {min_samples / sample_rate * 1000:.1f} ms")


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
    sr, frames, _ = audio_info(path)
    first = 0 if start is None else max(0, int(round(start * sr)))
    last = frames if end is None else min(frames, int(round(end * sr)))
    if frames == 0:
        raise AudioReadError(f"{path}: the file holds no audio samples")
    if last <= first:
        raise AudioReadError(f"{path}: empty segment [{start}, {end}] s of a {frames / sr:.2f} s file")
    try:
        data, sr = sf.read(path, start=first, stop=last, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioReadError(f"{path}: cannot decode audio ({err})") from err
    if data.size == 0:
        raise AudioReadError(f"{path}: the file holds no audio samples")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
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
    from ser_modules.fileio import atomic_path

    data = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    ext = os.path.splitext(path)[1].lstrip(".").upper() or "WAV"
    with atomic_path(path) as tmp:
        sf.write(tmp, data, sample_rate, subtype="PCM_16", format=ext)
