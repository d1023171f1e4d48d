"""Analytic FLOP counts of the toolkit's models (used by :mod:`ser_modules.benchmark`).

Conventions, the usual ones for comparing a model's work with a machine's GEMM rate:

- a multiply-add is 2 FLOPs; only matrix products and convolutions are counted (biases,
  activations, normalisation and softmax are linear in the number of elements and left out);
- work is counted on valid frames only: the frames a padded batch adds are waste, not work, so
  padding shows up as a lower achieved rate;
- a training step costs 3 x the forward pass (the backward pass computes gradients for the
  inputs and for the weights, each about one forward pass).

Every model class has a ``forward_flops(...)`` method taking the per-utterance valid lengths its
``forward`` takes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

TRAIN_FACTOR = 3


def total(lengths: Iterable[int]) -> int:
    """Sum of per-utterance frame counts (accepts a tensor, a list or one int)."""
    if isinstance(lengths, int):
        return lengths
    return int(sum(int(n) for n in lengths))


def linear_flops(in_features: int, out_features: int, rows: int) -> int:
    """``rows`` vectors through an ``in x out`` matrix."""
    return 2 * in_features * out_features * rows


def module_linear_flops(module: nn.Module, rows: int) -> int:
    """An ``nn.Linear`` or :class:`~ser_modules.models.lowrank.LowRankLinear` applied to ``rows`` vectors."""
    if hasattr(module, "rank"):  # LowRankLinear: in -> rank -> out
        return linear_flops(module.in_features, module.rank, rows) + linear_flops(module.rank, module.out_features, rows)
    return linear_flops(module.in_features, module.out_features, rows)


GATES = {"gru": 3, "lstm": 4}


def rnn_flops(rnn_type: str, input_size: int, hidden_size: int, frames: int, directions: int = 1) -> int:
    """A GRU (3 gates) or LSTM (4 gates) layer over ``frames`` steps: input and recurrent products."""
    return 2 * GATES[rnn_type] * hidden_size * (input_size + hidden_size) * frames * directions
