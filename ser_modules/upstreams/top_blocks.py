"""The top blocks of a pretrained upstream, run from a stored hidden state so that they can be fine-tuned.

Stage 4 stores every layer of every utterance: ``layer{L-k}`` is the output of block ``L - k`` (``layer0``
the encoder's input). Running only blocks ``L-k+1 .. L`` on it costs ``k`` blocks per training step and keeps
the ``L - k`` blocks below exactly as they were. :func:`top_blocks` copies those blocks out of a loaded
upstream (:mod:`ser_modules.upstreams.encoders`) into a :class:`TopBlocks` whose outputs equal the full
upstream's ``layer{L-k+1} .. layer{L}`` on the waveform (float tolerance), padded batches included:

- transformers Whisper (and openai-whisper, loaded as transformers' encoder), with ``whisper_window:
  utterance`` (each window of at most 1500 frames on its own frames: the stored frames are all the blocks
  attend to; a 30 s window's padding frames were never stored, so ``30s`` is refused); the last block's
  output goes through the encoder's final layer norm, as transformers' last hidden state does;
- transformers wav2vec 2.0, HuBERT, data2vec-audio (post-norm or stable-layer-norm; the encoder's final norm
  applied to the last block's output where the installed transformers' last hidden state has it, measured) and WavLM (its relative position bias recomputed by block 1's
  embedding, frozen unless block 1 is fine-tuned; padded frames masked as keys);
- torchaudio wav2vec 2.0, HuBERT and WavLM (torchaudio's attention mask, WavLM's key padding mask);
- SpeechBrain encoders: their top-level children, one utterance at a time.

``k = 0`` is a frozen probe (no block); ``k = L`` fine-tunes every block from ``layer0``. Fine-tuned from the
waveform with ``k = L`` (``stem=True``), the blocks of a wav2vec 2.0-style encoder (transformers or torchaudio
wav2vec 2.0, HuBERT, WavLM, data2vec-audio) come with a :class:`TransformerStem`: the feature projection and
positional convolution between the frozen CNN feature encoder and block 1, trained as SpeechBrain's wav2vec 2.0
recipes train them (they freeze only the CNN). Whisper's and SpeechBrain's encoders have none: ``layer0`` stays frozen.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ser_modules.data.features import length_mask
from ser_modules.utils.fileio import ManifestError

WHISPER_WINDOW_FRAMES = 1500  # 30 s of Whisper's 20 ms frames: the longest window its positions cover


class FrozenCompanions(nn.Module):
    """A module holding frozen modules outside its state dict and parameters (rebuilt from the upstream, so not
    saved with a fold model: :meth:`keep_frozen`) that move with it all the same (``.to``, ``.double``, ``.cuda``)."""

    def keep_frozen(self, name: str, module: nn.Module | None) -> None:
        names = self.__dict__.setdefault("frozen_companions", [])
        if name not in names:
            names.append(name)
        self.__dict__[name] = module

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for name in self.__dict__.get("frozen_companions", []):
            if self.__dict__[name] is not None:
                self.__dict__[name]._apply(fn, *args, **kwargs)
        return self


class TopBlocks(FrozenCompanions):
    """Blocks ``first + 1 .. first + k`` of an upstream (``kind``: ``whisper``, ``hf``, ``hf-wavlm``,
    ``torchaudio``, ``torchaudio-wavlm``, ``speechbrain``), trainable copies; ``final_norm`` applied to the last
    block's output (None: none), ``bias`` the WavLM relative position embedding (block 1's attention).

    ``forward(x [B, T, D], frames [B]) -> [k x [B, T, D]]``: the outputs of the blocks, zero after each
    utterance's ``frames`` (as the stores hold them)."""

    def __init__(self, blocks: list[nn.Module], kind: str, first: int, final_norm: nn.Module | None = None,
                 bias: nn.Module | None = None, stem: nn.Module | None = None):
        super().__init__()
        self.blocks, self.kind, self.first = nn.ModuleList(blocks), kind, int(first)
        self.final_norm = final_norm
        self.stem = stem  # (first == 0, from the waveform) CNN features -> layer0; its caller runs it (FineTunedTop)
        # Below the fine-tuned blocks the bias embedding is frozen and rebuilt from the upstream: kept out of the
        # state dict (a fold model holds only what it trained), moved with the module all the same.
        self.keep_frozen("frozen_bias", bias if bias is not None and first > 0 else None)
        self.bias = bias if bias is not None and first == 0 else None

    @property
    def layer_names(self) -> list[str]:
        """The layers the blocks output: ``layer{first+1} .. layer{first+k}``."""
        return [f"layer{self.first + i + 1}" for i in range(len(self.blocks))]

    def forward(self, x: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
        if not len(self.blocks):
            return []
        valid = length_mask(frames.to(x.device), x.shape[1])  # [B, T]
        x = x * valid.unsqueeze(-1).to(x.dtype)
        if self.kind == "whisper":
            states = self._whisper(x, frames)
        elif self.kind == "speechbrain":
            states = self._one_at_a_time(x, frames)
        else:
            states = self._masked(x, valid)
        if self.final_norm is not None:
            states[-1] = self.final_norm(states[-1])
        return [s * valid.unsqueeze(-1).to(s.dtype) for s in states]

    def _run(self, x: torch.Tensor, *args, **kwargs) -> list[torch.Tensor]:
        states = []
        for block in self.blocks:
            x = block(x, *args, **kwargs)
            x = x[0] if isinstance(x, tuple) else x
            states.append(x)
        return states

    def _whisper(self, x: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
        """Each utterance's consecutive windows of at most 1500 frames, each alone in its attention (as the
        upstream encoded them), all windows of the batch together; joined back per utterance."""
        windows, where = [], []
        for i, n in enumerate(frames.tolist()):
            for start in range(0, max(int(n), 1), WHISPER_WINDOW_FRAMES):
                windows.append(x[i, start: min(start + WHISPER_WINDOW_FRAMES, int(n))])
                where.append((i, start))
        lengths = torch.tensor([len(w) for w in windows], device=x.device)
        batch = nn.utils.rnn.pad_sequence(windows, batch_first=True)
        padded = torch.arange(batch.shape[1], device=x.device)[None] >= lengths[:, None]
        mask = torch.zeros(padded.shape, dtype=x.dtype, device=x.device).masked_fill(padded, torch.finfo(x.dtype).min)
        states = self._run(batch, mask[:, None, None, :])
        out = [torch.zeros_like(x) for _ in states]
        for w, (i, start) in enumerate(where):
            n = int(lengths[w])
            for o, s in zip(out, states):
                o[i, start: start + n] = s[w, :n]
        return out

    def _masked(self, x: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        """The batch at once, padded frames masked as the upstream's own forward masks them."""
        if self.kind == "hf":
            mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, torch.finfo(x.dtype).min)
            return self._run(x, attention_mask=mask[:, None, None, :])
        if self.kind == "torchaudio":
            mask = (-10000.0 * (~valid)[:, None, None, :].to(x.dtype)).expand(x.shape[0], 1, x.shape[1], x.shape[1])
            return self._run(x, mask)
        embedding = self.bias if self.bias is not None else self.frozen_bias
        bias = embedding.compute_bias(x.shape[1], x.shape[1])  # WavLM: [H, T, T], then per utterance and head
        if self.kind == "hf-wavlm":
            bias = bias.unsqueeze(0).repeat(x.shape[0], 1, 1, 1).view(-1, x.shape[1], x.shape[1])
            return self._run(x, attention_mask=valid, position_bias=bias)
        if self.kind == "torchaudio-wavlm":
            padding = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, -torch.inf)
            return self._run(x, None, position_bias=bias.unsqueeze(0).repeat(x.shape[0], 1, 1, 1),
                             key_padding_mask=padding)
        raise ValueError(f"unknown kind of top blocks: {self.kind!r}")

    def _one_at_a_time(self, x: torch.Tensor, frames: torch.Tensor) -> list[torch.Tensor]:
        per_utt = [self._run(x[i: i + 1, : int(n)]) for i, n in enumerate(frames.tolist())]
        return [nn.utils.rnn.pad_sequence([p[k][0] for p in per_utt], batch_first=True)
                for k in range(len(self.blocks))]


class TransformerStem(nn.Module):
    """``(features [B, T, C], frames [B]) -> layer0 [B, T, D]``: a wav2vec 2.0-style encoder's feature projection,
    positional convolution (its padded frames zeroed first, as the encoders do) and ``norm`` where the encoder
    normalises its input (post-norm), zero after each utterance's ``frames``. ``one_at_a_time``: data2vec-audio's
    stacked positional convolutions, and HuBERT's with a batch norm before it, see padded frames, so each utterance
    runs alone (exact, as the upstream runs)."""

    def __init__(self, projection: nn.Module, pos_conv: nn.Module, norm: nn.Module | None, dropout: nn.Module,
                 one_at_a_time: bool = False):
        super().__init__()
        self.projection, self.pos_conv, self.norm, self.dropout = projection, pos_conv, norm, dropout
        self.one_at_a_time = bool(one_at_a_time)

    def forward(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        if self.one_at_a_time:
            return nn.utils.rnn.pad_sequence([self._valid(features[i: i + 1, : int(n)])[0]
                                              for i, n in enumerate(frames.tolist())], batch_first=True)
        valid = length_mask(frames.to(features.device), features.shape[1]).unsqueeze(-1).to(features.dtype)
        return self._valid(features, valid) * valid

    def _valid(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        x = self.projection(features)
        x = x[0] if isinstance(x, tuple) else x  # (transformers' wav2vec 2.0 also returns its normalised input)
        x = x * valid if valid is not None else x
        x = x + self.pos_conv(x)
        return self.dropout(self.norm(x) if self.norm is not None else x)


def transformer_stem(upstream: nn.Module) -> TransformerStem | None:
    """Trainable copies of ``upstream``'s layers between its CNN and block 1, or None (Whisper, SpeechBrain)."""
    from ser_modules.upstreams.encoders import HFUpstream, TorchaudioUpstream

    if isinstance(upstream, HFUpstream) and not upstream.whisper:
        model, encoder = upstream.model, upstream.model.encoder
        post_norm = not type(encoder).__name__.endswith("StableLayerNorm")
        parts = (model.feature_projection, encoder.pos_conv_embed, encoder.layer_norm if post_norm else None,
                 encoder.dropout)
        # data2vec-audio's stacked convolutions and a batch norm before HuBERT's (conv_pos_batch_norm) see padding
        one_at_a_time = upstream.model_type == "data2vec-audio" or getattr(encoder.pos_conv_embed, "batch_norm", None) is not None
    elif isinstance(upstream, TorchaudioUpstream):
        encoder, transformer = upstream.model.encoder, upstream.model.encoder.transformer
        parts = (encoder.feature_projection, transformer.pos_conv_embed,
                 transformer.layer_norm if transformer.layer_norm_first else None, transformer.dropout)
        one_at_a_time = False
    else:
        return None
    return TransformerStem(*(copy.deepcopy(p) if p is not None else None for p in parts), one_at_a_time)


def top_blocks(upstream: nn.Module, k: int, source: str = "the upstream", stem: bool = False) -> TopBlocks:
    """Trainable copies of the top ``k`` blocks of a loaded ``upstream`` (its weights unchanged) as a
    :class:`TopBlocks` reading ``layer{L-k}``; :class:`ManifestError` naming ``source`` and its format where the
    blocks cannot run from a stored hidden state. ``stem``: with every block, the :class:`TransformerStem` too
    (where the upstream has one), for a model reading the waveform."""
    from ser_modules.upstreams.encoders import HFUpstream, SpeechBrainUpstream, TorchaudioUpstream

    if isinstance(upstream, HFUpstream):
        blocks, kind, final_norm, bias = _hf_blocks(upstream, source)
    elif isinstance(upstream, TorchaudioUpstream):
        layers = list(upstream.model.encoder.transformer.layers)
        wavlm = upstream.arch["builder"] == "wavlm"
        blocks, kind, final_norm = layers, "torchaudio-wavlm" if wavlm else "torchaudio", None
        bias = layers[0].attention if wavlm else None
    elif isinstance(upstream, SpeechBrainUpstream):
        blocks, kind, final_norm, bias = list(upstream.blocks), "speechbrain", None, None
    else:
        raise ManifestError(f"{source}: {type(upstream).__name__} has no blocks to fine-tune from a stored layer")
    n = len(blocks)
    if not 0 <= int(k) <= n:
        raise ManifestError(f"{source}: finetune_blocks {k} is not between 0 and its {n} blocks")
    first = n - int(k)
    top = [copy.deepcopy(b) for b in blocks[first:]]
    if bias is not None and first > 0:  # block 1's embedding stays frozen below the fine-tuned blocks
        bias = _frozen_copy(bias)
    elif bias is not None:
        bias = top[0].attention
    norm = copy.deepcopy(final_norm) if final_norm is not None else None
    module = TopBlocks(top, kind, first, norm, bias, transformer_stem(upstream) if stem and first == 0 else None)
    for p in module.parameters():  # (the frozen bias embedding is not among them)
        p.requires_grad = True
    return module.train()


def _hf_blocks(upstream, source: str):
    """``(blocks, kind, final norm, WavLM bias module)`` of a transformers upstream."""
    model = upstream.model
    if upstream.whisper:
        if upstream.whisper_window != "utterance":
            raise ManifestError(f"{source}: fine-tuning Whisper's top blocks needs whisper_window: utterance (in a "
                                "30 s window the blocks attend to padding frames stage 4 never stored)")
        return list(model.layers), "whisper", model.layer_norm, None
    encoder = model.encoder
    blocks = list(encoder.layers)
    if upstream.model_type not in ("wav2vec2", "hubert", "data2vec-audio", "wavlm"):
        raise ManifestError(f"{source}: transformers model type {upstream.model_type!r}: its blocks cannot be run "
                            "from a stored layer here (wav2vec2, hubert, data2vec-audio, wavlm and whisper can)")
    final_norm = encoder.layer_norm if _last_state_is_normed(upstream) else None
    if upstream.model_type == "wavlm":
        return blocks, "hf-wavlm", final_norm, blocks[0].attention
    return blocks, "hf", final_norm, None


@torch.no_grad()
def _last_state_is_normed(upstream) -> bool:
    """Whether the upstream's last hidden state is after a pre-norm (stable-layer-norm) encoder's final norm:
    transformers versions differ (4.x appends the normed state, 5.x the last block's output), so it is measured
    on a short probe against the model's ``last_hidden_state`` (always after the final norm)."""
    encoder = upstream.model.encoder
    if not type(encoder).__name__.endswith("StableLayerNorm"):
        return False  # post-norm: the blocks end normalised, no final norm
    wav = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0)).to(next(upstream.parameters()).device)
    last = upstream.hidden_states(wav, torch.tensor([8000], device=wav.device))[-1]
    return bool(torch.allclose(last, upstream.model(wav).last_hidden_state, atol=1e-5))


def _frozen_copy(module: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(module)
    for p in frozen.parameters():
        p.requires_grad = False
    return frozen
