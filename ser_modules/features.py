"""Batched acoustic features computed on the model's device, with explicit valid lengths.

All features use ``center=False`` framing, so a frame only reads samples of its own utterance:
a padded batch gives, on every valid frame, exactly the features of the unpadded utterance.
Lengths are absolute (samples in, frames out); :func:`frames_for_samples` gives the mapping.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchaudio.functional as AF
import torchaudio.transforms as T


def frames_for_samples(samples: torch.Tensor, win: int, hop: int) -> torch.Tensor:
    """Number of complete ``win``-sample frames with hop ``hop`` (at least 1)."""
    return torch.clamp((samples - win).div(hop, rounding_mode="floor") + 1, min=1)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, max_len]`` boolean mask, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_normalize(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-utterance, per-dimension mean/variance normalisation over valid frames.

    ``x``: ``[B, T, D]``; padded frames are set to zero.
    """
    mask = length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
    n = mask.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (x * mask).sum(dim=1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(dim=1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps) * mask


def _pad_to_frames(wav: torch.Tensor, win: int) -> torch.Tensor:
    if wav.shape[-1] < win:  # an utterance shorter than one window still gives one frame
        wav = torch.nn.functional.pad(wav, (0, win - wav.shape[-1]))
    return wav


class LogSpectrogram(nn.Module):
    """DeepSpeech2 input (Lakomkin 2018): ``log(1 + |STFT|)`` of 20 ms Hamming windows every 10 ms
    (n_fft 320 at 16 kHz -> 161 bins), normalised per utterance.

    Shapes: ``wav [B, S]``, ``lengths [B]`` (samples) -> ``feats [B, T, 161]``, ``frames [B]``.
    """

    def __init__(self, sample_rate: int = 16000, win_ms: float = 20.0, hop_ms: float = 10.0, normalize: bool = True):
        super().__init__()
        self.win = int(sample_rate * win_ms / 1000)
        self.hop = int(sample_rate * hop_ms / 1000)
        self.normalize = normalize
        self.register_buffer("window", torch.hamming_window(self.win), persistent=False)
        self.n_freq = self.win // 2 + 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wav = _pad_to_frames(wav, self.win)
        spec = torch.stft(wav, n_fft=self.win, hop_length=self.hop, win_length=self.win, window=self.window,
                          center=False, return_complex=True)
        feats = torch.log1p(spec.abs()).transpose(1, 2)  # [B, T, F]
        frames = frames_for_samples(lengths, self.win, self.hop).clamp(max=feats.shape[1])
        if self.normalize:
            feats = masked_normalize(feats, frames)
        return feats, frames


def replicate_last_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Fill padded frames with the last valid frame (what edge replication sees on the unpadded
    utterance), so that windowed operations such as deltas give padding-independent results."""
    idx = torch.minimum(torch.arange(x.shape[1], device=x.device)[None, :], (lengths - 1)[:, None])
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def add_deltas(x: torch.Tensor, lengths: torch.Tensor, order: int = 2, win_length: int = 5) -> torch.Tensor:
    """Append time derivatives (regression over ``win_length`` frames) up to ``order``: ``[B, T, D]``
    -> ``[B, T, D * (order + 1)]``."""
    x = replicate_last_valid(x, lengths)
    feats, cur = [x], x
    for _ in range(order):
        cur = AF.compute_deltas(cur.transpose(1, 2), win_length=win_length).transpose(1, 2)
        feats.append(cur)
    return torch.cat(feats, dim=-1)


class MFCC(nn.Module):
    """MFCCs with time deltas, normalised per utterance (CMVN).

    Yeh 2020 LAS input: 13 coefficients + delta + delta-delta = 39 (25 ms / 10 ms, 40 mel bands).
    Shapes: ``wav [B, S]``, ``lengths [B]`` (samples) -> ``feats [B, T, 13 * (order + 1)]``, ``frames [B]``.
    """

    def __init__(self, sample_rate: int = 16000, n_mfcc: int = 13, n_mels: int = 40, win_ms: float = 25.0,
                 hop_ms: float = 10.0, delta_order: int = 2, normalize: bool = True):
        super().__init__()
        self.win = int(sample_rate * win_ms / 1000)
        self.hop = int(sample_rate * hop_ms / 1000)
        self.delta_order = delta_order
        self.normalize = normalize
        self.n_out = n_mfcc * (delta_order + 1)
        self.mfcc = T.MFCC(sample_rate=sample_rate, n_mfcc=n_mfcc,
                           melkwargs={"n_fft": self.win, "win_length": self.win, "hop_length": self.hop,
                                      "n_mels": n_mels, "center": False, "window_fn": torch.hamming_window})

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wav = _pad_to_frames(wav, self.win)
        feats = self.mfcc(wav).transpose(1, 2)  # [B, T, n_mfcc]
        frames = frames_for_samples(lengths, self.win, self.hop).clamp(max=feats.shape[1])
        if self.delta_order:
            feats = add_deltas(feats, frames, self.delta_order)
        if self.normalize:
            feats = masked_normalize(feats, frames)
        else:
            feats = feats * length_mask(frames, feats.shape[1]).unsqueeze(-1)
        return feats, frames
