"""Fine-tuned upstream tops (issue 40): a variant with ``finetune_blocks: k`` trains the top ``k`` blocks of its
upstream together with its head, reading the layer stage 4 stored below them (``layer{L-k}``).

:class:`FineTunedTop` is the SER model: trainable copies of the blocks (:mod:`ser_modules.upstreams.top_blocks`)
and an MP or RNN head on the last block's output, or a learned weighted sum (:class:`WeightedLayerSum`) of the
stored layers ``layer0 .. layer{L-k}`` and the blocks' outputs ``layer{L-k+1} .. layer{L}``. The blocks come from the upstream the experiment read
(:func:`attach_upstream_blocks`), so a model is built in two steps: the head from the variant's blueprint, then
the blocks from the upstream; its state dict then holds only the fine-tuned blocks and the head. The blocks
learn at ``upstream_lr`` (default: the head's lr / 30), warmed up linearly over ``warmup_steps`` optimizer steps.
With ``finetune_input: waveform`` the model reads the signal and runs the frozen upstream below its blocks itself
instead of stage 4's store; with ``k = all`` only the CNN feature encoder stays frozen where the upstream has one
(wav2vec 2.0-style encoders; as SpeechBrain's whole-encoder recipes freeze it): the feature projection and
positional convolution train with the blocks (``TransformerStem``, :mod:`ser_modules.upstreams.top_blocks`).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ser_modules.models.ser import WeightedLayerSum
from ser_modules.upstreams.top_blocks import FrozenCompanions
from ser_modules.utils.fileio import ManifestError

DEFAULT_UPSTREAM_LR_RATIO = 30.0  # the blocks' learning rate below the head's (pretrained weights move little)


class FineTunedTop(FrozenCompanions):
    """``x [B, T, D]`` of layer ``L - k``, ``lengths [B]`` -> the head's outputs on block ``L``'s output; with a
    :class:`WeightedLayerSum` head, ``x [B, T, n * D]``: the ``n`` stored layers up to ``L - k`` side by side
    (``L - k`` last), summed with the blocks' ``k`` outputs.

    Built without blocks (``finetune_blocks`` says how many it needs); :meth:`attach` adds them. Weights loaded
    before that (SpeechBrain's pretrainer loads an export's modules as its hyperparams build them) keep the
    blocks' part until they are attached."""

    def __init__(self, head: nn.Module, finetune_blocks: int, waveform_layers: list[str] | None = None):
        super().__init__()
        self.head, self.finetune_blocks, self.blocks = head, int(finetune_blocks), None
        self.waveform_layers = list(waveform_layers) if waveform_layers else None
        self.__dict__["pending_blocks"] = None  # the blocks' weights loaded before the blocks existed
        # finetune_input: waveform: the frozen upstream below the blocks, run per batch; not stored in a fold model
        self.keep_frozen("bottom", None)
        self._register_load_state_dict_pre_hook(self._keep_block_state)

    def _keep_block_state(self, state_dict, prefix, *args):
        if self.blocks is None:
            keys = [k for k in state_dict if k.startswith(prefix + "blocks.")]
            if keys:
                self.__dict__["pending_blocks"] = {k[len(prefix) + len("blocks."):]: state_dict.pop(k) for k in keys}

    def attach(self, blocks: nn.Module, bottom: nn.Module | None = None) -> "FineTunedTop":
        """Add the trainable ``blocks`` and, for a model reading the waveform, the frozen upstream ``bottom``
        that computes its ``waveform_layers`` (``forward_layers``, :mod:`ser_modules.upstreams.encoders`), or with
        a stem in the blocks only the CNN's features (``cnn_features``)."""
        if len(blocks.blocks) != self.finetune_blocks:
            raise ValueError(f"{len(blocks.blocks)} blocks given, the variant fine-tunes {self.finetune_blocks}")
        if blocks.stem is not None and not self.waveform_layers:
            raise ValueError("blocks with a feature stem read the CNN's features: only a model reading the waveform runs them")
        if self.waveform_layers and bottom is None:
            raise ValueError("a fine-tuned top reading the waveform needs the upstream below its blocks")
        if self.pending_blocks is not None:
            if blocks.stem is not None and not any(k.startswith("stem.") for k in self.pending_blocks):
                raise ValueError("these fine-tuned weights were saved before whole-encoder fine-tuning trained the "
                                 "feature projection and positional convolution (the stem): train the variant again")
            blocks.load_state_dict(self.pending_blocks)
            self.__dict__["pending_blocks"] = None
        self.blocks = blocks
        self.keep_frozen("bottom", bottom if self.waveform_layers else None)
        return self

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x``: the stored layers (see the class doc), or with ``waveform_layers`` the signals ``[B, S]`` and
        ``lengths`` their samples ``[B]``."""
        if self.blocks is None:
            raise RuntimeError("FineTunedTop has no blocks: attach the upstream's (attach_upstream_blocks)")
        stem = self.blocks.stem
        if stem is not None:  # every block from the waveform: only the CNN frozen, layer0 trained (SpeechBrain's way)
            features, lengths = self.bottom.cnn_features(x, lengths)
            x = stem(features, lengths)
        elif self.waveform_layers:  # the frozen bottom gives the layers stage 4 would have stored
            with torch.no_grad():
                layers = self.bottom.forward_layers(x, lengths, self.waveform_layers)
            x = torch.cat([layers[n][0] for n in self.waveform_layers], dim=-1)
            lengths = layers[self.waveform_layers[-1]][1]
        if isinstance(self.head, WeightedLayerSum):  # the frozen layers, then the fine-tuned ones
            return self.head(torch.cat([x, *self.blocks(x[..., -self.head.dim:], lengths)], dim=-1), lengths)
        return self.head(self.blocks(x, lengths)[-1], lengths)


def weighted_sum_of(model: nn.Module) -> WeightedLayerSum | None:
    """The learned weighted layer sum of a model (a weighted variant, fine-tuned or not), else None."""
    return next((m for m in model.modules() if isinstance(m, WeightedLayerSum)), None)


def upstream_path(stores_json: str, asr: str, fold: str) -> str:
    """The saved upstream (``asr/upstreams/<name>/model.pt`` of the experiment) whose stored layers ``stores_json``
    (``<exp>/dump/stores_<protocol>.json``) holds."""
    from ser_modules.asr.saved_models import asr_model_path

    return asr_model_path(os.path.dirname(os.path.dirname(os.path.abspath(stores_json))), asr, fold)


def attach_upstream_blocks(model: nn.Module, asr_path: str, device: str = "cpu") -> nn.Module:
    """Give a :class:`FineTunedTop` (other models are returned as they are) the top blocks of the upstream saved
    at ``asr_path``, initialised with its weights (a fold's fine-tuned weights are loaded over them after)."""
    if not isinstance(model, FineTunedTop):
        return model
    from ser_modules.asr.saved_models import load_asr_model
    from ser_modules.upstreams.top_blocks import top_blocks

    upstream, _, _, info = load_asr_model(asr_path, device)
    if not info.get("upstream"):
        raise ManifestError(f"{asr_path}: finetune_blocks needs a pretrained upstream; this is a "
                            f"{info.get('architecture', 'toolkit ASR model')}")
    blocks = top_blocks(upstream, model.finetune_blocks, asr_path, stem=bool(model.waveform_layers))
    return model.attach(blocks, bottom=upstream)


def finetune_param_groups(model: nn.Module, lr: float, upstream_lr: float | None,
                          layer_weights_lr: float | None = None) -> list[dict] | None:
    """Adam's groups of a :class:`FineTunedTop`: the head at ``lr``, the blocks at ``upstream_lr`` (None:
    ``lr / 30``), a weighted head's layer logits at ``layer_weights_lr`` (None: ``lr``); None for other models."""
    if not isinstance(model, FineTunedTop) or model.blocks is None:
        return None
    block_lr = float(upstream_lr) if upstream_lr is not None else lr / DEFAULT_UPSTREAM_LR_RATIO
    blocks = [p for p in model.blocks.parameters() if p.requires_grad]
    summed = weighted_sum_of(model.head)
    logits = [summed.layer_logits] if summed is not None and layer_weights_lr is not None else []
    head = [p for p in model.head.parameters() if p.requires_grad and all(p is not q for q in logits)]
    groups = [{"params": head, "lr": lr, "initial_lr": lr},
              {"params": blocks, "lr": block_lr, "initial_lr": block_lr, "upstream_blocks": True}]
    if logits:
        groups.append({"params": logits, "lr": float(layer_weights_lr), "initial_lr": float(layer_weights_lr),
                       "layer_weights": True})
    return groups


def warmup_factor(step: int, warmup_steps: int | None) -> float:
    """Linear warm-up of the blocks' learning rate: ``step / warmup_steps`` up to 1 (1 without warm-up)."""
    if not warmup_steps:
        return 1.0
    return min(1.0, max(int(step), 0) / float(warmup_steps))
