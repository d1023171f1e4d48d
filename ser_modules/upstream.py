"""Pretrained speech encoders ("upstreams") as frozen layer providers, loaded from local files only.

Two folder formats and two checkpoint files are read; nothing is ever downloaded:

- a Hugging Face ``transformers`` folder (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``) of wav2vec 2.0, HuBERT, WavLM, data2vec-audio, or Whisper (its encoder, read
  from a folder of the whole model or of the encoder alone: see :func:`load_whisper_encoder`);
- a SpeechBrain folder (``hyperparams.yaml`` + checkpoints): the file must define ``encoder`` (a
  module on ``[B, T, F]`` features, its top-level children are the layers), optionally
  ``compute_features`` (waveform -> ``[B, T, F]``) and ``normalize``; every loadable of its
  ``pretrainer`` is read from ``<folder>/<name>.ckpt`` (the ``paths`` of a hub model are ignored);
- an ``openai-whisper`` checkpoint (``base.pt``: read as transformers' Whisper encoder) or a torchaudio
  pipeline checkpoint (``wavlm_base_plus.pth``, :class:`TorchaudioUpstream`): see
  :mod:`ser_modules.upstream_checkpoints`.

An upstream exposes the interface of the toolkit's ASR models (:mod:`ser_modules.asr_models`):
``layer_names``, ``layer_sizes`` and ``forward_layers(wavs, samples, layers) -> {name: (hidden
[B, T, D], frames [B])}``; its front end :class:`WaveformInput` passes the waveform through. Layer
``layer0`` is the encoder's input (HF: ``hidden_states[0]``, the CNN features after the positional
convolution) and ``layerK`` the output of block K.

``transformers`` is imported only here, and only when an HF folder is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import numpy as np
import torch
import torch.nn as nn

from ser_modules.fileio import ManifestError, file_digest, key_digest
from ser_modules.upstream_checkpoints import (build_torchaudio, check_openai_whisper, check_torchaudio, checkpoint_kind,
                                              first_keys, load_openai_whisper, load_whisper_state, resolve_arch)

HF_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
WHISPER_ENCODER_PREFIXES = ("model.encoder.", "encoder.")  # WhisperForConditionalGeneration's, WhisperModel's
# Not the upstream: the decoder and its LM head, and the head of WhisperForAudioClassification (its encoder is).
WHISPER_IGNORED_PREFIXES = ("model.decoder.", "decoder.", "proj_out.", "projector.", "classifier.", "layer_weights")
SAMPLE_RATE = 16000


def upstream_kind(path: str) -> str:
    """``"hf"`` or ``"speechbrain"`` for a model folder, ``"openai-whisper"`` or ``"torchaudio"`` for a
    checkpoint file; :class:`ManifestError` naming what is missing."""
    if os.path.isfile(path):
        return checkpoint_kind(path)
    if not os.path.isdir(path):
        raise ManifestError(f"{path}: upstream folder or checkpoint file not found")
    if os.path.isfile(os.path.join(path, "config.json")):
        if not any(os.path.isfile(os.path.join(path, w)) for w in HF_WEIGHTS):
            raise ManifestError(f"{path}: has config.json but no weights ({' or '.join(HF_WEIGHTS)})")
        model_type = read_config(path).get("model_type")
        if model_type not in HF_TYPES:
            raise ManifestError(f"{path}/config.json: model_type {model_type!r} is not a supported upstream "
                                f"({', '.join(HF_TYPES)})")
        return "hf"
    if os.path.isfile(os.path.join(path, "hyperparams.yaml")):
        return "speechbrain"
    raise ManifestError(f"{path}: not an upstream model folder: no config.json (Hugging Face transformers) "
                        "and no hyperparams.yaml (SpeechBrain)")


def upstream_arch(path: str, arch: str | None = None) -> tuple[str, dict | None]:
    """``(kind, architecture)`` of an ``--upstream`` and its ``--upstream-arch``: a torchaudio checkpoint's
    architecture resolved (:func:`resolve_arch`), None for the other kinds, for which ``arch`` is refused."""
    kind = upstream_kind(path)
    if kind == "torchaudio":
        return kind, resolve_arch(path, arch)
    if arch:
        raise ManifestError(f"{path}: --upstream-arch {arch} is for torchaudio checkpoints; this is a {kind} upstream")
    return kind, None


def check_upstream(path: str, arch: str | None = None) -> str:
    """:func:`upstream_arch`, and for a checkpoint file its keys against its architecture without loading a
    weight, so a bad ``--upstream`` stops a run before stage 1. Returns the kind."""
    kind, resolved = upstream_arch(path, arch)
    if kind == "torchaudio":
        check_torchaudio(path, resolved)
    elif kind == "openai-whisper":
        check_openai_whisper(path)
    return kind


def read_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}/config.json: not valid JSON ({err})") from err


def weight_files(path: str) -> list[str]:
    """The files an upstream's outputs depend on (configuration and weights), sorted; a checkpoint: itself."""
    if os.path.isfile(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if n.endswith((".json", ".yaml", ".safetensors", ".bin", ".ckpt")))
    return [os.path.join(path, n) for n in names]


def upstream_digest(path: str, arch: dict | None = None) -> str:
    """SHA-1 of the configuration and weight files (and a checkpoint's resolved architecture): a store of
    its layers is keyed by it."""
    digest = file_digest(*weight_files(path))
    return key_digest({"weights": digest, "arch": arch}) if arch else digest


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
    Whisper runs one utterance at a time, in consecutive 30 s windows (its own): each is padded to the
    window as Whisper was trained, encoded alone and cropped to its own frames, and the windows' frames
    are joined, so an utterance of any length gives :meth:`frames` frames (up to 30 s: one window).
    """

    def __init__(self, model: nn.Module, model_type: str):
        super().__init__()
        self.model, self.model_type = model.eval(), model_type
        for p in self.model.parameters():
            p.requires_grad = False
        cfg = model.config
        self.whisper = model_type == "whisper"
        n_layers = cfg.encoder_layers if self.whisper else cfg.num_hidden_layers
        self.layer_names = [f"layer{k}" for k in range(n_layers + 1)]
        self.layer_sizes = dict.fromkeys(self.layer_names, int(cfg.d_model if self.whisper else cfg.hidden_size))
        if self.whisper:
            self.hop, self.win = 320, 400  # 10 ms mel frames, stride-2 convolution: 20 ms per frame
            from transformers import WhisperFeatureExtractor

            self.mel = WhisperFeatureExtractor(feature_size=cfg.num_mel_bins)
        else:
            self.hop = int(np.prod(cfg.conv_stride))
            self.win = receptive_field(cfg.conv_kernel, cfg.conv_stride)
        # data2vec-audio's positional convolutions are stacked without re-zeroing padded frames: unbatched too.
        self.batched = model_type in ("wav2vec2", "hubert", "wavlm") and cfg.feat_extract_norm == "layer"

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

    def _whisper_states(self, wavs, samples):
        """All hidden states ``(L+1) x [B, T, D]`` of a padded batch, one utterance at a time (zeros after
        each one's frames)."""
        outs = [self._whisper_utterance(wavs[i, : int(n)]) for i, n in enumerate(samples)]
        return tuple(_pad_cat([o[k] for o in outs]) for k in range(len(outs[0])))

    def _whisper_utterance(self, wav):
        """Hidden states ``(L+1) x [T, D]`` of one utterance ``wav [S]``, T = ceil(S / 320): its consecutive 30 s
        windows encoded one by one and joined (a 30 s window is 1500 whole frames, so T adds up)."""
        n = self.mel.n_samples
        starts = range(0, max(len(wav), 1), n)  # an empty utterance is still one (empty) window
        windows = [self._whisper_window(wav[start : start + n]) for start in starts]
        return tuple(torch.cat(parts) for parts in zip(*windows))

    def _whisper_window(self, wav):
        """Hidden states ``(L+1) x [T, D]`` of at most 30 s ``wav [S]``, T = ceil(S / 320)."""
        mel = self.mel(wav.cpu().numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt")  # padded to 30 s, as trained
        feats = mel.input_features.to(wav.device, self.model.conv1.weight.dtype)
        t = -(-len(wav) // self.hop)
        return tuple(s[0, :t] for s in self.model(feats, output_hidden_states=True).hidden_states)


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

    def _states(self, wavs: torch.Tensor, samples: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        if self.arch["normalize_waveform"]:
            wavs = normalize_each(wavs, samples)
        x, lengths = self.model.feature_extractor(wavs, samples)
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


class CTCUpstream(nn.Module):
    """An HF upstream fine-tuned with CTC (stage 3 of upstream_probe, ``adapt.ctc_head``): a linear CTC
    head (the toolkit's character vocabulary, blank first, as DeepSpeech2) on its last layer.

    The convolutional feature encoder stays frozen (and in eval mode), as in wav2vec 2.0 fine-tuning;
    the transformer and the head train, with the model's own dropout and time masking in training
    mode. ``forward(wavs, samples) -> (logits [B, T, V], frames [B])`` is what :class:`CTCBrain` and the
    greedy CTC decoder read; ``layer_names`` / ``forward_layers`` are the upstream's (stage 4 dumps them).
    """

    is_ctc = True

    def __init__(self, upstream: HFUpstream, n_tokens: int):
        super().__init__()
        if not isinstance(upstream, HFUpstream):
            raise ManifestError(f"CTC adaptation needs a transformers upstream (a folder or an openai-whisper "
                                f"checkpoint), not a {type(upstream).__name__}")
        self.upstream = upstream
        self.layer_names, self.layer_sizes, self.win = upstream.layer_names, upstream.layer_sizes, upstream.win
        self.head = nn.Linear(upstream.layer_sizes[upstream.layer_names[-1]], int(n_tokens))
        frozen = {id(p) for p in self.feature_encoder().parameters()}
        for p in upstream.parameters():
            p.requires_grad = id(p) not in frozen

    def feature_encoder(self) -> nn.Module:
        """The convolutional front of the upstream (Whisper: its two convolutions and positions)."""
        m = self.upstream.model
        if self.upstream.whisper:
            return nn.ModuleList([m.conv1, m.conv2, m.embed_positions])
        return m.feature_extractor

    @property
    def frame_rate(self) -> float:
        return self.upstream.frame_rate

    def train(self, mode: bool = True):
        super().train(mode)  # the upstream's own train() keeps the HF model in eval mode
        if mode:
            self.upstream.model.train()
            self.feature_encoder().eval()
        return self

    def forward(self, wavs: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers_and_output(wavs, samples, [])[1]

    def layers_and_output(self, wavs: torch.Tensor, samples: torch.Tensor, layers=None) -> tuple[dict, tuple]:
        """One pass of the upstream for both ``forward_layers`` and ``forward``: ``({name: (hidden [B, T, D],
        frames [B])}, (logits [B, T, V], frames))`` (inference reads a SER layer and decodes from one pass)."""
        states = self.upstream.hidden_states(wavs, samples)
        frames = self.upstream.frames(samples).to(wavs.device)
        hidden = self.upstream.layers_of(states, samples, self.layer_names if layers is None else layers)
        return hidden, (self.head(states[-1][:, : int(frames.max())]), frames)

    def forward_layers(self, wavs: torch.Tensor, samples: torch.Tensor, layers: list[str]) -> dict:
        return self.upstream.forward_layers(wavs, samples, layers)


def load_adapted_upstream(source: str, weights: str, symbols: list[str], device: str = "cpu"):
    """``(CTCUpstream, front end, vocabulary)``: the upstream folder ``source`` with the adapted weights
    ``weights`` (a state dict of :class:`CTCUpstream`); ``symbols`` the vocabulary, blank first."""
    from ser_modules.text import CharVocabulary

    upstream, features = load_upstream(source, device)
    vocab = CharVocabulary(specials=symbols[:1], characters=symbols[1:])
    model = CTCUpstream(upstream, len(vocab))
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    except (RuntimeError, FileNotFoundError) as err:
        raise ManifestError(f"{weights}: cannot load the adapted upstream ({str(err).splitlines()[0]})") from err
    return model.to(device).eval(), features, vocab


def load_hf(path: str) -> HFUpstream:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model_type = read_config(path)["model_type"]
    if model_type == "whisper":
        return HFUpstream(load_whisper_encoder(path), model_type)
    try:
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: cannot load the transformers model ({str(err).splitlines()[0]})") from err
    return HFUpstream(model, model_type)


def load_whisper_encoder(path: str) -> nn.Module:
    """transformers' ``WhisperEncoder`` from a Whisper folder, built from its ``config.json`` and given the
    encoder's weights read here: keys ``model.encoder.*`` (WhisperForConditionalGeneration), ``encoder.*``
    (WhisperModel, WhisperForAudioClassification, or a folder of the encoder alone) or the encoder's own
    names (``WhisperEncoder.save_pretrained``); the decoder's, ``proj_out`` and a classification head's
    keys are ignored.
    ``from_pretrained`` would log a table of every decoder key an encoder-only folder lacks; here a missing
    or an unexpected key is a one-line :class:`ManifestError`. Its dtype is ``from_pretrained``'s default
    (``dtype="auto"``: the config's, else the weights')."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    try:
        config = WhisperConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: cannot read the Whisper config ({str(err).splitlines()[0]})") from err
    with torch.device("meta"):  # only its key names
        keys = list(WhisperEncoder(config).state_dict())
    state = whisper_encoder_state(path, read_weights(path), keys)
    dtype = config.dtype or next(v.dtype for v in state.values() if v.is_floating_point())
    return load_whisper_state(path, config, state, getattr(torch, dtype) if isinstance(dtype, str) else dtype)


def read_weights(path: str) -> dict:
    """The state dict in an HF folder's weights file (``model.safetensors`` first, as transformers)."""
    file = next(os.path.join(path, w) for w in HF_WEIGHTS if os.path.isfile(os.path.join(path, w)))
    try:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors' and pickle's own error types: one line naming the file
        raise ManifestError(f"{file}: cannot read the weights ({str(err).splitlines()[0]})") from err


def whisper_encoder_state(path: str, state: dict, keys: list[str]) -> dict:
    """The encoder's entries of a Whisper ``state``, named as ``keys`` (``WhisperEncoder``'s own, in order)."""
    known, encoder, unexpected = set(keys), {}, []
    for key, value in state.items():
        # WhisperEncoder.save_pretrained writes the encoder's own names, without a prefix
        prefix = next((p for p in WHISPER_ENCODER_PREFIXES if key.startswith(p)), "" if key in known else None)
        if prefix is not None and key[len(prefix):] in known:
            encoder[key[len(prefix):]] = value
        elif prefix is not None or not key.startswith(WHISPER_IGNORED_PREFIXES):
            unexpected.append(key)
    if unexpected:
        raise ManifestError(f"{path}: {len(unexpected)} unexpected key(s) in the Whisper weights (neither its encoder's "
                            f"nor its decoder's): {first_keys(unexpected)}")
    return encoder


def load_speechbrain(path: str) -> SpeechBrainUpstream:
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.utils.checkpoints import DEFAULT_LOAD_HOOKS, DEFAULT_TRANSFER_HOOKS, get_default_hook

    yaml_path = os.path.join(path, "hyperparams.yaml")
    with open(yaml_path, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f)
    if not isinstance(hp.get("encoder"), nn.Module):
        raise ManifestError(f"{yaml_path}: defines no `encoder` module")
    loadables = getattr(hp.get("pretrainer"), "loadables", None) or {"encoder": hp["encoder"]}
    for name, obj in loadables.items():
        ckpt = os.path.join(path, f"{name}.ckpt")
        if not os.path.isfile(ckpt):
            raise ManifestError(f"{path}: no checkpoint {name}.ckpt for the pretrainer's loadable {name!r}")
        transfer = get_default_hook(obj, DEFAULT_TRANSFER_HOOKS)
        if transfer is not None:
            transfer(obj, ckpt)
        else:
            get_default_hook(obj, DEFAULT_LOAD_HOOKS)(obj, ckpt, end_of_epoch=False)
    feats = hp.get("compute_features")
    win = int(round(getattr(feats, "win_length", 25) * SAMPLE_RATE / 1000)) if feats is not None else 1
    return SpeechBrainUpstream(hp["encoder"], feats, hp.get("normalize"), win)


def load_upstream(path: str, device: str = "cpu", arch: dict | None = None) -> tuple[nn.Module, WaveformInput]:
    """``(upstream in eval mode, its waveform front end)`` from a local folder or checkpoint file (see
    module doc); ``arch``: a torchaudio checkpoint's resolved architecture (default: from its file name)."""
    kind = upstream_kind(path)
    if kind == "hf":
        model = load_hf(path)
    elif kind == "speechbrain":
        model = load_speechbrain(path)
    elif kind == "openai-whisper":
        model = HFUpstream(load_openai_whisper(path), "whisper")
    else:
        arch = arch or resolve_arch(path, None)
        model = TorchaudioUpstream(build_torchaudio(path, arch), arch)
    return model.to(device).eval(), WaveformInput(model.win).to(device)


def describe_upstream(name: str, path: str, device: str = "cpu", probe_seconds: float = 2.0, seed: int = 0,
                      arch: dict | None = None) -> dict:
    """Load an upstream, run it on ``probe_seconds`` of noise and describe it: format (kind), layers,
    dimensions, frame rate (nominal and measured), parameters, digest; :class:`ManifestError` if its
    outputs are not finite or their frame counts disagree with the frame rate."""
    kind = upstream_kind(path)
    model, features = load_upstream(path, device, arch)
    arch = getattr(model, "arch", None)  # a torchaudio checkpoint's, resolved by its file name when not given
    samples = int(probe_seconds * SAMPLE_RATE)
    wav = torch.randn(1, samples, generator=torch.Generator().manual_seed(seed)).to(device) * 0.1
    out = model.forward_layers(wav, torch.tensor([samples], device=device), model.layer_names)
    for layer, (hidden, frames) in out.items():
        if not torch.isfinite(hidden).all():
            raise ManifestError(f"{path}: layer {layer} gives non-finite values on a noise probe")
    measured = int(out[model.layer_names[-1]][1][0]) / probe_seconds
    nominal = float(model.frame_rate)
    if kind != "speechbrain" and abs(measured - nominal) > nominal / probe_seconds + 1:
        raise ManifestError(f"{path}: {measured:.1f} frames per second measured, {nominal:.1f} expected")
    return {"name": name, "source": os.path.abspath(path), "kind": kind,
            "model_type": getattr(model, "model_type", "speechbrain"),
            "arch": arch, "layers": model.layer_names,
            "n_layers": len(model.layer_names) - 1, "dims": model.layer_sizes,
            "frame_rate_hz": round(nominal, 3), "measured_frame_rate_hz": round(measured, 3),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "min_samples": int(features.win), "sha1": upstream_digest(path, arch), "device": device}


def upstream_name(path: str, taken: set[str]) -> str:
    """A short unique name from the folder or file name (``wavlm-base-plus``, ``wavlm_base_plus`` of
    ``wavlm_base_plus.pth``; an openai-whisper ``base.pt`` is ``whisper-base``): what variants and stores
    are called."""
    base = os.path.basename(os.path.normpath(path))
    if os.path.isfile(path):
        base = os.path.splitext(base)[0]
        if upstream_kind(path) == "openai-whisper" and "whisper" not in base.lower():
            base = f"whisper-{base}"
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in base) or "upstream"
    taken = set(taken) | {"pretrained", "upstreams", "adapted"}  # stage 2's DS2/LAS model, the templates
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


class _ArchOfLastUpstream(argparse.Action):
    """``--upstream-arch A`` belongs to the ``--upstream`` before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        given = getattr(namespace, "upstream", None) or []
        if not given:
            parser.error(f"{option_string} {value}: comes after the --upstream it describes")
        if given[-1][1] is not None:
            parser.error(f"{option_string} {value}: --upstream {given[-1][0]} already has --upstream-arch {given[-1][1]}")
        given[-1] = (given[-1][0], value)


class _Upstream(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, "upstream", [*(getattr(namespace, "upstream", None) or []), (value, None)])


def add_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    """``--upstream PATH [--upstream-arch A]`` (repeatable) -> ``args.upstream``: ``[(path, arch or None)]``."""
    parser.add_argument("--upstream", action=_Upstream, default=[], metavar="PATH",
                        help="an upstream: a transformers or SpeechBrain folder, an openai-whisper .pt or a torchaudio "
                             ".pth checkpoint (repeatable)")
    parser.add_argument("--upstream-arch", action=_ArchOfLastUpstream, metavar="BUNDLE|PARAMS.json",
                        help="the architecture of the torchaudio checkpoint of the --upstream before it: a "
                             "torchaudio.pipelines bundle name or a JSON of wav2vec2_model parameters")


def main(argv=None) -> int:
    """``python -m ser_modules.upstream check --upstream PATH [--upstream-arch A] ...``: one line per bad one."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "check":
        print("usage: python -m ser_modules.upstream check --upstream PATH [--upstream-arch A] ...", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m ser_modules.upstream check")
    add_upstream_arguments(parser)
    bad = 0
    for path, arch in parser.parse_args(argv[1:]).upstream:
        try:
            check_upstream(path, arch)
        except ManifestError as err:
            print(f"error: {err}", file=sys.stderr)
            bad += 1
    return 2 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
