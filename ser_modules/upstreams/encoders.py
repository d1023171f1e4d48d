"""Pretrained speech encoders ("upstreams") as frozen layer providers.

An upstream exposes the interface of the toolkit's ASR models (:mod:`ser_modules.asr.saved_models`):
``layer_names``, ``layer_sizes`` and ``forward_layers(wavs, samples, layers) -> {name: (hidden
[B, T, D], frames [B])}``; its front end :class:`WaveformInput` passes the waveform through. Layer
``layer0`` is the encoder's input (HF: ``hidden_states[0]``, the CNN features after the positional
convolution) and ``layerK`` the output of block K. ``transformers`` is imported only when an HF
model is loaded (:mod:`ser_modules.upstreams.loading`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn as nn

SAMPLE_RATE = 16000


class WaveformInput(nn.Module):
    """The front end of an upstream: ``(wavs [B, S], samples [B]) -> (wavs, samples)`` unchanged.
    ``win`` is the shortest clip the upstream hears (its first analysis window, in samples)."""

    def __init__(self, win: int = 400):
        super().__init__()
        self.win = int(win)
        self.config = {"win": self.win}

    def forward(self, wavs: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return wavs, samples


class FrozenEncoder(nn.Module):
    """What :class:`HFUpstream` and :class:`TorchaudioUpstream` share: a frozen ``self.model`` kept in eval
    mode, ``frames(samples)``, ``hidden_states(wavs, samples)`` (all layers) and the layer taps."""

    hop: int

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: dropout and masking off whatever the caller's mode
        return self

    @torch.no_grad()
    def forward_layers(self, wavs: torch.Tensor, samples: torch.Tensor, layers: list[str]) -> dict:
        return self.layers_of(self.hidden_states(wavs, samples), samples, layers)

    @torch.no_grad()
    def cnn_features(self, wavs: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CNN feature encoder's output ``[B, T, C]`` (before the feature projection) and its ``frames [B]``:
        what whole-encoder fine-tuning keeps frozen (:mod:`ser_modules.upstreams.top_blocks`, ``TransformerStem``).
        Batched where :meth:`hidden_states` is, else one utterance at a time."""
        frames = self.frames(samples)
        if self.batched:
            feats = self._features(wavs, samples)
        else:
            feats = _pad_cat([self._features(wavs[i : i + 1, : int(n)], None)[0] for i, n in enumerate(samples)])
        return feats[:, : int(frames.max())], frames.to(feats.device)

    def layers_of(self, states: tuple, samples: torch.Tensor, layers: list[str]) -> dict:
        """``{name: (hidden [B, T, D], frames [B])}`` of ``layers`` from :meth:`hidden_states`' output."""
        frames = self.frames(samples).to(states[0].device)
        t = int(frames.max())
        return {name: (states[self.layer_names.index(name)][:, :t], frames) for name in layers}


class HFUpstream(FrozenEncoder):
    """A frozen transformers speech encoder; ``layerK`` = ``hidden_states[K]``, K = 0..num_hidden_layers.

    Padded batches: wav2vec 2.0 / HuBERT / WavLM whose feature encoder normalises per frame
    (``feat_extract_norm="layer"``, the large-lv60 style) take the attention mask, so a padded batch gives each utterance its own unpadded
    outputs. Models with ``feat_extract_norm="group"`` (wav2vec2-base, HuBERT Base, WavLM Base+) normalise
    over time and were trained without a mask, and data2vec-audio's stacked positional convolutions
    see the padded frames: those run one utterance at a time, which is exact.
    Whisper encodes each utterance in consecutive windows of at most 30 s, cropped to its own frames and
    joined, so an utterance of any length gives :meth:`frames` frames. ``whisper_window`` says what a
    window is: ``30s``, each padded to 30 s as Whisper was trained (1500 frames encoded whatever the
    speech; the padded windows of a batch run together, each alone in its attention), or
    ``utterance``, the encoder on the window's own frames (positional embeddings cut to its length; a
    batch padded after the shorter ones, whose padded frames no valid frame sees: the convolutions
    stop at each one's mel frames and the attention masks them). Padding changes the
    representations, so the two give different (each exact) outputs; docs/benchmarks.md measures both.
    """

    WHISPER_WINDOWS = ("30s", "utterance")

    def __init__(self, model: nn.Module, model_type: str, whisper_window: str = "30s"):
        super().__init__()
        self.model, self.model_type = model.eval(), model_type
        for p in self.model.parameters():
            p.requires_grad = False
        cfg = model.config
        self.whisper = model_type == "whisper"
        n_layers = cfg.encoder_layers if self.whisper else cfg.num_hidden_layers
        self.layer_names = [f"layer{k}" for k in range(n_layers + 1)]
        self.layer_sizes = dict.fromkeys(self.layer_names, int(cfg.d_model if self.whisper else cfg.hidden_size))
        if whisper_window not in self.WHISPER_WINDOWS:
            raise ValueError(f"whisper_window must be one of {self.WHISPER_WINDOWS}, got {whisper_window!r}")
        self.whisper_window = whisper_window
        if self.whisper:
            self.hop, self.win = 320, 400  # 10 ms mel frames, stride-2 convolution: 20 ms per frame
            from transformers import WhisperFeatureExtractor

            self.mel = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
        else:
            self.hop = int(np.prod(cfg.conv_stride))
            self.win = receptive_field(cfg.conv_kernel, cfg.conv_stride)
        # data2vec-audio's positional convolutions are stacked without re-zeroing padded frames, and a HuBERT
        # whose positional convolution starts with a batch norm (conv_pos_batch_norm, mHuBERT-147) turns the
        # zeroed padding into non-zero frames before it: unbatched too.
        self.batched = self.whisper or (model_type in ("wav2vec2", "hubert", "wavlm") and cfg.feat_extract_norm == "layer"
                                        and not getattr(cfg, "conv_pos_batch_norm", False))

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Output frames of utterances of ``samples`` samples ``[B]``."""
        if self.whisper:
            return (samples + self.hop - 1).div(self.hop, rounding_mode="floor")
        return self.model._get_feat_extract_output_lengths(samples).long()

    def hidden_states(self, wavs: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All hidden states ``(L+1) x [B, T, D]`` of a (padded) batch, valid up to :meth:`frames`."""
        if self.whisper:
            return self._whisper_states(wavs, samples)
        if self.batched:
            mask = (torch.arange(wavs.shape[1], device=wavs.device)[None] < samples[:, None]).long()
            with warnings.catch_warnings():  # WavLM's own mask types: a deprecation notice per batch, not ours
                warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
                return self.model(wavs, attention_mask=mask, output_hidden_states=True).hidden_states
        outs = [self.model(wavs[i : i + 1, : int(n)], output_hidden_states=True).hidden_states
                for i, n in enumerate(samples)]
        return tuple(_pad_cat([o[k][0] for o in outs]) for k in range(len(outs[0])))

    def _features(self, wavs: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
        if self.whisper:
            raise ValueError("Whisper's convolutions are not a separate feature encoder here: fine-tune from layer0")
        return self.model.feature_extractor(wavs).transpose(1, 2)

    def _whisper_states(self, wavs, samples):
        """All hidden states ``(L+1) x [B, T, D]`` of a padded batch (zeros after each one's frames): every
        utterance cut into consecutive 30 s windows, all windows of the batch encoded together."""
        n = self.mel.n_samples
        windows, owner = [], []
        for i, length in enumerate(samples.tolist()):
            for start in range(0, max(length, 1), n):  # an empty utterance is still one (empty) window
                windows.append(wavs[i, start : min(start + n, length)])
                owner.append(i)
        encode = self._whisper_padded if self.whisper_window == "30s" else self._whisper_unpadded
        states = encode(windows)  # per window: (L+1) x [T_w, D]
        per_utt = [[states[w] for w in range(len(windows)) if owner[w] == i] for i in range(len(samples))]
        joined = [tuple(torch.cat(parts) for parts in zip(*ws)) for ws in per_utt]
        return tuple(_pad_cat([j[k] for j in joined]) for k in range(len(joined[0])))

    def _mel(self, wav: torch.Tensor, pad_to_30s: bool) -> torch.Tensor:
        """Whisper's log-mel features ``[n_mels, M]`` of at most 30 s ``wav [S]``: padded to 30 s (M = 3000), or
        on its own ``2 * ceil(S / 320)`` frames, which see zeros after the speech as in a padded window (but for a
        window of a full 30 s, whose last frame the padded extractor computes from a reflection)."""
        t = -(-len(wav) // self.hop)
        device, dtype = self.model.conv1.weight.device, self.model.conv1.weight.dtype
        if not t and not pad_to_30s:  # an empty utterance: no frame (the padded window crops to none either)
            return torch.zeros(self.mel.feature_size, 0, device=device, dtype=dtype)
        if pad_to_30s:
            feats = self.mel(wav.cpu().numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features[0]
        else:
            padded = np.zeros(t * self.hop + self.mel.n_fft // 2, dtype=np.float32)  # zeros after: no reflection
            padded[: len(wav)] = wav.cpu().numpy()
            feats = self.mel(padded, sampling_rate=SAMPLE_RATE, padding="longest", truncation=False,
                             return_tensors="pt").input_features[0, :, : 2 * t]
        return feats.to(device, dtype)

    def _whisper_padded(self, windows: list[torch.Tensor]) -> list[tuple]:
        """``(L+1) x [T, D]`` of each window, encoded padded to 30 s (transformers' own forward), cropped."""
        feats = torch.stack([self._mel(w, True) for w in windows])
        states = self.model(feats, output_hidden_states=True).hidden_states
        return [tuple(s[i, : -(-len(w) // self.hop)] for s in states) for i, w in enumerate(windows)]

    def _whisper_unpadded(self, windows: list[torch.Tensor]) -> list[tuple]:
        """``(L+1) x [T, D]`` of each window on its own frames (:meth:`_mel`), the batch padded after the
        shorter ones: convolutions stop at each one's mel frames, attention masks the padded frames."""
        enc = self.model
        mels = [self._mel(w, False) for w in windows]
        if not any(m.shape[1] for m in mels):  # only empty windows: nothing to encode
            empty = mels[0].new_zeros(0, self.layer_sizes[self.layer_names[0]])
            return [(empty,) * len(self.layer_names) for _ in windows]
        lengths = torch.tensor([m.shape[1] // 2 for m in mels], device=mels[0].device)  # frames after the stride 2
        feats = _pad_cat([m.T for m in mels]).transpose(1, 2)  # [B, n_mels, 2 * T_max], zeros after each one
        x = nn.functional.gelu(enc.conv1(feats))
        x = x * (torch.arange(x.shape[2], device=x.device)[None] < 2 * lengths[:, None]).unsqueeze(1)  # as if unpadded
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)
        t = x.shape[1]
        x = x + enc.embed_positions.weight[:t]
        padded = torch.arange(t, device=x.device)[None] >= lengths[:, None]
        mask = torch.zeros(padded.shape, dtype=x.dtype, device=x.device).masked_fill(padded, torch.finfo(x.dtype).min)
        mask = mask[:, None, None, :]  # [B, 1, 1, T]: no frame attends to a padded one
        states = [x]
        for layer in enc.layers:
            x = layer(x, mask)
            x = x[0] if isinstance(x, tuple) else x
            states.append(x)
        states[-1] = enc.layer_norm(x)  # transformers' last hidden state is after the final layer norm
        return [tuple(s[i, : int(n)] for s in states) for i, n in enumerate(lengths.tolist())]


class TorchaudioUpstream(FrozenEncoder):
    """A frozen torchaudio ``Wav2Vec2Model`` (wav2vec 2.0, HuBERT, WavLM) read from a pipeline checkpoint;
    its layers are transformers' ``hidden_states`` of the same weights: ``layer0`` = the transformer's
    input (feature projection + positional convolution, layer-normalised in post-norm models), ``layerK``
    = the output of block K (torchaudio's ``extract_features``).

    Padded batches as the model was trained: a feature encoder normalised per frame (``extractor_mode
    layer_norm``, the large models) runs batched with lengths (torchaudio zeroes and masks the padded
    frames); a group-normalised one (base models) normalises over time, so one utterance at a time.
    Bundles trained on normalised waveforms (``normalize_waveform``: LV-60k, XLS-R, HuBERT and WavLM
    large) normalise each utterance over its own samples, as ``bundle.get_model()`` does."""

    def __init__(self, model: nn.Module, arch: dict):
        super().__init__()
        self.model, self.arch, self.model_type = model.eval(), arch, arch["family"]
        for p in self.model.parameters():
            p.requires_grad = False
        self.layer_names = [f"layer{k}" for k in range(len(model.encoder.transformer.layers) + 1)]
        self.layer_sizes = dict.fromkeys(self.layer_names, int(model.encoder.feature_projection.projection.out_features))
        convs = model.feature_extractor.conv_layers
        self.kernels, self.strides = [int(c.kernel_size) for c in convs], [int(c.stride) for c in convs]
        self.hop, self.win = int(np.prod(self.strides)), receptive_field(self.kernels, self.strides)
        self.batched = arch["params"].get("extractor_mode") == "layer_norm"

    def frames(self, samples: torch.Tensor) -> torch.Tensor:
        """Output frames of utterances of ``samples`` samples ``[B]`` (torchaudio's ConvLayerBlock lengths)."""
        n = samples.long()
        for k, s in zip(self.kernels, self.strides):
            n = torch.clamp(torch.div(n - k, s, rounding_mode="floor") + 1, min=0)
        return n

    def hidden_states(self, wavs: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All hidden states ``(L+1) x [B, T, D]`` of a (padded) batch, valid up to :meth:`frames`."""
        if self.batched:
            return self._states(wavs, samples)
        outs = [self._states(wavs[i : i + 1, : int(n)], None) for i, n in enumerate(samples)]
        return tuple(_pad_cat([o[k][0] for o in outs]) for k in range(len(outs[0])))

    def _features(self, wavs: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
        return self._extract(wavs, samples)[0]

    def _extract(self, wavs: torch.Tensor, samples: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.arch["normalize_waveform"]:
            wavs = normalize_each(wavs, samples)
        return self.model.feature_extractor(wavs, samples)

    def _states(self, wavs: torch.Tensor, samples: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        x, lengths = self._extract(wavs, samples)
        x, mask = self.model.encoder._preprocess(x, lengths)  # feature projection; padded frames zeroed and masked
        padding = None
        if self.arch["builder"] == "wavlm" and lengths is not None:  # WavLM's attention takes a key padding mask
            padded = torch.arange(x.shape[1], device=x.device)[None] >= lengths[:, None]
            padding, mask = torch.zeros(padded.shape, dtype=x.dtype, device=x.device).masked_fill(padded, -torch.inf), None
        transformer = self.model.encoder.transformer
        x = transformer._preprocess(x)  # + positional convolution (+ layer norm in post-norm models)
        states, bias = [x], None
        for layer in transformer.layers:
            x, bias = layer(x, mask, position_bias=bias, key_padding_mask=padding)
            states.append(x)
        return tuple(states)  # a pre-norm model's final layer norm is not a layer: transformers' hidden_states omit it


def normalize_each(wavs: torch.Tensor, samples: torch.Tensor | None) -> torch.Tensor:
    """Each waveform of ``wavs [B, S]`` layer-normalised over its own ``samples`` (all if None), padding zero."""
    if samples is None:
        return nn.functional.layer_norm(wavs, wavs.shape[1:])
    out = torch.zeros_like(wavs)
    for i, n in enumerate(samples.tolist()):
        out[i, :n] = nn.functional.layer_norm(wavs[i, :n], (n,))
    return out


def receptive_field(kernels, strides) -> int:
    """Samples seen by one output frame of a stack of strided 1-D convolutions."""
    field, jump = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * jump
        jump *= s
    return int(field)


def _pad_cat(seqs: list[torch.Tensor]) -> torch.Tensor:
    return nn.utils.rnn.pad_sequence(seqs, batch_first=True)


class SpeechBrainUpstream(nn.Module):
    """A frozen SpeechBrain encoder: ``layer0`` = its input features (after ``normalize``),
    ``layerK`` = the output of its K-th top-level child. Runs one utterance at a time (exact)."""

    def __init__(self, encoder: nn.Module, compute_features: nn.Module | None, normalize: nn.Module | None,
                 feature_win: int = 400):
        super().__init__()
        self.encoder, self.compute_features, self.normalize = encoder.eval(), compute_features, normalize
        for p in self.parameters():
            p.requires_grad = False
        self.blocks = list(encoder.children()) or [encoder]
        self.win = int(feature_win)
        self.layer_names = [f"layer{k}" for k in range(len(self.blocks) + 1)]
        probe = self._states(torch.zeros(1, SAMPLE_RATE))
        self.layer_sizes = {n: int(s.shape[-1]) for n, s in zip(self.layer_names, probe)}
        self.frame_rate = float(probe[-1].shape[1])  # frames in one second

    def train(self, mode: bool = True):
        super().train(mode)
        self.eval_all()
        return self

    def eval_all(self):
        for m in (self.encoder, self.compute_features, self.normalize):
            if m is not None:
                m.eval()

    @torch.no_grad()
    def _states(self, wav: torch.Tensor) -> list[torch.Tensor]:
        x = self.compute_features(wav) if self.compute_features is not None else wav.unsqueeze(-1)
        if self.normalize is not None:
            x = self.normalize(x, torch.ones(1, device=x.device))
        states = [x]
        for block in self.blocks:
            x = block(x)
            x = x[0] if isinstance(x, tuple) else x  # recurrent layers return (output, hidden)
            states.append(x)
        return states

    @torch.no_grad()
    def forward_layers(self, wavs: torch.Tensor, samples: torch.Tensor, layers: list[str]) -> dict:
        per_utt = [self._states(wavs[i : i + 1, : int(n)]) for i, n in enumerate(samples)]
        out = {}
        for name in layers:
            k = self.layer_names.index(name)
            seqs = [s[k][0] for s in per_utt]
            out[name] = (_pad_cat(seqs), torch.tensor([len(s) for s in seqs], device=wavs.device))
        return out
