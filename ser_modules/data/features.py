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

from ser_modules.utils.legacy_paths import legacy_name


def feature_config(module) -> dict:
    """The explicit, canonical configuration of a feature extractor or augmentation: what every cache
    key of computed features is built from (never ``repr()``, which hides parameters)."""
    if module is None:
        return {}
    config = getattr(module, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(module).__name__} has no `config` dict of its parameters: it cannot key a cache")
    # named by its path before the package split, so stores keyed before it are still found
    return {"class": legacy_name(f"{type(module).__module__}.{type(module).__qualname__}"), **config}


def minimum_samples(features) -> int:
    """Samples in one analysis window of ``features`` (an ASR model's front end or the handcrafted
    extractor): a shorter clip holds no complete frame, so the model cannot hear it."""
    inner = getattr(features, "mfcc", None)
    return int(getattr(features, "win", 0) or getattr(inner, "win", 0))


def frames_for_samples(samples: torch.Tensor, win: int, hop: int) -> torch.Tensor:
    """Number of complete ``win``-sample frames with hop ``hop`` (at least 1)."""
    return torch.clamp((samples - win).div(hop, rounding_mode="floor") + 1, min=1)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[B, max_len]`` boolean mask, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def stack_frames(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, D]`` -> ``[B, ceil(T/k), k D]``: every ``k`` consecutive frames side by side (the frame
    rate divided by ``k``), new lengths ``ceil(L/k)``. A partial last group is completed with zero
    frames whatever the padding held, so a padded batch groups each utterance as it would be alone."""
    if k == 1:
        return x, lengths
    x = x * length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
    b, t, d = x.shape
    extra = -t % k
    if extra:
        x = torch.nn.functional.pad(x, (0, 0, 0, extra))
    return x.reshape(b, (t + extra) // k, k * d), (lengths + k - 1).div(k, rounding_mode="floor")


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
        self.config = {"sample_rate": sample_rate, "win_ms": win_ms, "hop_ms": hop_ms, "normalize": normalize}
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
        # Each order sees its input edge-replicated after the last valid frame, as unpadded.
        cur = replicate_last_valid(AF.compute_deltas(cur.transpose(1, 2), win_length=win_length).transpose(1, 2), lengths)
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
        self.config = {"sample_rate": sample_rate, "n_mfcc": n_mfcc, "n_mels": n_mels, "win_ms": win_ms,
                       "hop_ms": hop_ms, "delta_order": delta_order, "normalize": normalize}
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


def moving_average(x: torch.Tensor, width: int) -> torch.Tensor:
    """Centred moving average over the last dimension with edge replication; ``width`` odd."""
    if width <= 1:
        return x
    pad = width // 2
    padded = torch.nn.functional.pad(x.unsqueeze(-2), (pad, width - 1 - pad), mode="replicate").squeeze(-2)
    return padded.unfold(-1, width, 1).mean(dim=-1)


def estimate_pitch(wav: torch.Tensor, sample_rate: int = 16000, hop: int = 160, win: int = 640, fmin: float = 60.0,
                   fmax: float = 500.0, voicing_threshold: float = 0.3) -> torch.Tensor:
    """Autocorrelation pitch track of a 1-D signal: one value (Hz) per ``hop`` samples.

    The normalised autocorrelation of each Hann-windowed ``win``-sample frame is searched for its
    highest peak between lags ``sample_rate / fmax`` and ``sample_rate / fmin``; frames whose peak is
    below ``voicing_threshold`` are unvoiced and take the value of the nearest voiced frame.
    """
    wav = _pad_to_frames(wav.reshape(-1), win)
    frames = wav.unfold(0, win, hop)
    frames = (frames - frames.mean(dim=1, keepdim=True)) * torch.hann_window(win, device=wav.device)
    n_fft = 1 << (2 * win - 1).bit_length()
    spec = torch.fft.rfft(frames, n_fft)
    ac = torch.fft.irfft(spec.real**2 + spec.imag**2, n_fft)[:, :win]
    ac = ac / ac[:, :1].clamp(min=1e-10)
    lo, hi = int(sample_rate / fmax), min(int(sample_rate / fmin), win - 1)
    peak, lag = ac[:, lo : hi + 1].max(dim=1)
    pitch = sample_rate / (lag + lo).float()
    voiced = peak >= voicing_threshold
    if not voiced.any():
        return torch.zeros_like(pitch)
    idx = torch.arange(len(pitch), device=wav.device)
    voiced_idx = idx[voiced]
    nearest = voiced_idx[(idx[:, None] - voiced_idx[None, :]).abs().argmin(dim=1)]
    return pitch[nearest]


class HandcraftedFeatures(nn.Module):
    """The SER baseline's input (Lakomkin 2018, section 3.3) for one utterance: 13 MFCCs and their
    deltas over 20 ms windows every 10 ms, and pitch smoothed by a moving average of 15 frames; each
    feature normalised per utterance. ``wav [S]`` -> ``[T, 27]``.

    Pitch comes from :func:`estimate_pitch` (autocorrelation; the paper used openSMILE).
    """

    def __init__(self, sample_rate: int = 16000, n_mfcc: int = 13, win_ms: float = 20.0, hop_ms: float = 10.0,
                 pitch_smoothing: int = 15, pitch_min: float = 60.0, pitch_max: float = 500.0):
        super().__init__()
        self.config = {"sample_rate": sample_rate, "n_mfcc": n_mfcc, "win_ms": win_ms, "hop_ms": hop_ms,
                       "pitch_smoothing": pitch_smoothing, "pitch_min": pitch_min, "pitch_max": pitch_max}
        self.mfcc = MFCC(sample_rate, n_mfcc=n_mfcc, win_ms=win_ms, hop_ms=hop_ms, delta_order=1, normalize=False)
        self.sample_rate, self.pitch_smoothing = sample_rate, pitch_smoothing
        self.pitch_min, self.pitch_max = pitch_min, pitch_max
        self.n_out = 2 * n_mfcc + 1

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = wav.reshape(-1)
        n = torch.tensor([wav.shape[0]], device=wav.device)
        mfcc, frames = self.mfcc(wav.unsqueeze(0), n)
        mfcc = mfcc[0, : int(frames[0])]
        pitch = estimate_pitch(wav, self.sample_rate, hop=self.mfcc.hop, fmin=self.pitch_min, fmax=self.pitch_max)
        # Align the pitch track to the MFCC frames, then smooth it.
        pitch = torch.nn.functional.interpolate(pitch.view(1, 1, -1), size=mfcc.shape[0], mode="linear",
                                                align_corners=True).view(-1)
        pitch = moving_average(pitch, self.pitch_smoothing)
        feats = torch.cat([mfcc, pitch.unsqueeze(-1)], dim=-1).unsqueeze(0)
        return masked_normalize(feats, torch.tensor([feats.shape[1]], device=wav.device))[0]


class TempoGainAugment(nn.Module):
    """Training augmentation of Lakomkin 2018: tempo x U(0.85, 1.15) (phase vocoder, pitch kept) and
    gain U(-3, +6) dB. ``wav [S]`` -> ``wav [S']``; identity in ``eval()`` mode."""

    def __init__(self, tempo=(0.85, 1.15), gain_db=(-3.0, 6.0), n_fft: int = 512, hop: int = 128):
        super().__init__()
        self.tempo, self.gain_db, self.n_fft, self.hop = tuple(tempo), tuple(gain_db), n_fft, hop
        self.config = {"tempo": list(self.tempo), "gain_db": list(self.gain_db), "n_fft": n_fft, "hop": hop}
        self.stretch = T.TimeStretch(hop_length=hop, n_freq=n_fft // 2 + 1)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wav: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training:
            return wav
        r = torch.rand(2, generator=generator)
        rate = self.tempo[0] + (self.tempo[1] - self.tempo[0]) * float(r[0])
        gain = self.gain_db[0] + (self.gain_db[1] - self.gain_db[0]) * float(r[1])
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, return_complex=True)
        stretched = self.stretch(spec, rate)
        out = torch.istft(stretched, self.n_fft, self.hop, window=self.window,
                          length=max(int(round(wav.shape[-1] / rate)), self.n_fft))
        return out * 10 ** (gain / 20)


def speed_perturbation(speeds, sample_rate: int = 16000):
    """SpeechBrain's ``SpeedPerturb`` drawing one of ``speeds`` (percent) per batch, or ``None`` (no
    perturbation, nothing resampled) for an empty list, so a config can switch it off with a list."""
    if not speeds:
        return None
    from speechbrain.augment.time_domain import SpeedPerturb

    return SpeedPerturb(orig_freq=sample_rate, speeds=list(speeds))


class SpecAugment(nn.Module):
    """SpecAugment masking (Park et al. 2019) of normalised features, within each utterance's own
    frames: ``freq_masks`` bands of U{0..freq_width} bins and ``time_masks`` spans of
    U{0..time_width} frames (at most ``max_time_ratio`` of the utterance each) are set to zero, the
    per-utterance mean of :class:`LogSpectrogram`/:class:`MFCC` features. Padded frames stay as
    they were; identity in ``eval()`` mode.

    Shapes: ``feats [B, T, F]``, ``frames [B]`` -> ``feats [B, T, F]``.
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 27, time_masks: int = 2, time_width: int = 40,
                 max_time_ratio: float = 0.2):
        super().__init__()
        self.freq_masks, self.freq_width = int(freq_masks), int(freq_width)
        self.time_masks, self.time_width, self.max_time_ratio = int(time_masks), int(time_width), float(max_time_ratio)
        self.config = {"freq_masks": self.freq_masks, "freq_width": self.freq_width, "time_masks": self.time_masks,
                       "time_width": self.time_width, "max_time_ratio": self.max_time_ratio}

    @staticmethod
    def _spans(n: int, extent: torch.Tensor, width: torch.Tensor, device) -> torch.Tensor:
        """``[B, n]`` random spans, each of U{0..width_b} positions inside ``[0, extent_b)``, as a
        ``[B, max extent]`` boolean mask of the masked positions."""
        b = extent.shape[0]
        size = extent.max().item()
        positions = torch.arange(size, device=device)[None, None, :]
        widths = (torch.rand(b, n, device=device) * (width[:, None] + 1)).floor()
        starts = (torch.rand(b, n, device=device) * (extent[:, None] - widths + 1).clamp(min=1)).floor()
        inside = (positions >= starts[..., None]) & (positions < (starts + widths)[..., None])
        return inside.any(dim=1)

    def forward(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        if not self.training or not (self.freq_masks * self.freq_width or self.time_masks * self.time_width):
            return feats
        b, t, f = feats.shape
        keep = torch.ones_like(feats, dtype=torch.bool)
        if self.freq_masks > 0 and self.freq_width > 0:
            bins = torch.full((b,), f, device=feats.device)
            keep &= ~self._spans(self.freq_masks, bins, torch.full((b,), min(self.freq_width, f), device=feats.device),
                                 feats.device)[:, None, :]
        if self.time_masks > 0 and self.time_width > 0:
            frames = frames.to(feats.device).clamp(max=t)
            width = torch.minimum(torch.full_like(frames, self.time_width),
                                  (frames.to(torch.float32) * self.max_time_ratio).floor().to(frames.dtype))
            spans = self._spans(self.time_masks, frames, width, feats.device)
            keep[:, : spans.shape[1], :] &= ~spans[:, :, None]
        return feats * keep.to(feats.dtype)


class EGeMAPSFunctionals:
    """The extended Geneva Minimalistic Acoustic Parameter Set (eGeMAPS v02, Eyben et al. 2016): 88
    utterance-level functionals computed by openSMILE, the classical SER reference features.

    ``wav [S]`` (16 kHz mono) -> ``[1, 88]`` (one "frame" per utterance, float32).
    """

    def __init__(self, sample_rate: int = 16000):
        import opensmile

        self.sample_rate = sample_rate
        self._smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                      feature_level=opensmile.FeatureLevel.Functionals)
        self.names = list(self._smile.feature_names)
        self.config = {"feature_set": "eGeMAPSv02", "level": "functionals", "opensmile": opensmile.__version__,
                       "sample_rate": sample_rate}

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        signal = wav.reshape(-1).detach().cpu().numpy().astype("float32")
        values = self._smile.process_signal(signal, self.sample_rate).to_numpy(dtype="float32", copy=True)
        return torch.from_numpy(values.reshape(1, -1))

    def __getstate__(self):  # the openSMILE handle is per process: a copy builds its own
        return {"sample_rate": self.sample_rate}

    def __setstate__(self, state):
        self.__init__(state["sample_rate"])
