"""Recurrent layers over padded batches whose valid outputs never depend on the padding.

The forward direction reads padding only after the valid frames, so it cannot affect them; the
backward direction runs on each sequence reversed within its own length. On CUDA the sequences
are packed (cuDNN then skips padded steps). On CPU, GRUs run on the grouped kernel of
:mod:`ser_modules.models.grouped_gru` (both directions at once; several layers on different inputs
with :func:`run_together`), LSTMs (and GRUs without the kernel) on PyTorch's dense kernels
(PyTorch's packed-sequence backward pass is about three times slower there than the dense one).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ser_modules.data.features import length_mask
from ser_modules.models import grouped_gru
from ser_modules.models.flops import rnn_flops, total

RNN_TYPES = {"gru": nn.GRU, "lstm": nn.LSTM}


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse every sequence of ``x [B, T, D]`` within its length; padded positions stay put."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = lengths[:, None] - 1 - t
    idx = torch.where(idx >= 0, idx, t)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class MaskedRNN(nn.Module):
    """A GRU or LSTM layer, optionally bidirectional, on ``[B, T, input_size]`` with valid ``lengths``.

    Output ``[B, T, H]`` (unidirectional or ``merge="sum"``) or ``[B, T, 2H]`` (``merge="concat"``);
    padded positions are zero.
    """

    def __init__(self, rnn_type: str, input_size: int, hidden_size: int, bidirectional: bool = True,
                 merge: str = "concat"):
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {sorted(RNN_TYPES)}, got {rnn_type!r}")
        if merge not in ("concat", "sum"):
            raise ValueError(f"merge must be concat or sum, got {merge!r}")
        cls = RNN_TYPES[rnn_type]
        self.rnn_type, self.input_size, self.bidirectional = rnn_type, input_size, bidirectional
        self.forward_rnn = cls(input_size, hidden_size, batch_first=True)
        self.backward_rnn = cls(input_size, hidden_size, batch_first=True) if bidirectional else None
        self.hidden_size, self.merge = hidden_size, merge
        self.output_size = hidden_size * (2 if bidirectional and merge == "concat" else 1)

    def forward_flops(self, lengths) -> int:
        """Forward FLOPs over the valid frames ``lengths`` (see :mod:`ser_modules.models.flops`)."""
        return rnn_flops(self.rnn_type, self.input_size, self.hidden_size, total(lengths),
                         2 if self.bidirectional else 1)

    def _run(self, rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = rnn(packed)
            return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
        return rnn(x)[0]

    @property
    def rnns(self) -> list[nn.RNNBase]:
        return [self.forward_rnn] + ([self.backward_rnn] if self.backward_rnn is not None else [])

    def uses_grouped_kernel(self, x: torch.Tensor) -> bool:
        return self.rnn_type == "gru" and grouped_gru.usable(x)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.uses_grouped_kernel(x):
            gi = list(grouped_gru.input_projection(x, self.rnns).chunk(len(self.rnns), dim=-1))
            if self.backward_rnn is not None:
                gi[1] = reverse_padded(gi[1], lengths)  # the projection is per frame: reversing commutes
            hs = grouped_gru.recurrence(gi, self.rnns)
            out, back = hs[0], (reverse_padded(hs[1], lengths) if self.backward_rnn is not None else None)
        else:
            out = self._run(self.forward_rnn, x, lengths)
            back = None
            if self.backward_rnn is not None:
                back = reverse_padded(self._run(self.backward_rnn, reverse_padded(x, lengths), lengths), lengths)
        if back is not None:
            out = out + back if self.merge == "sum" else torch.cat([out, back], dim=-1)
        return out * length_mask(lengths, x.shape[1]).unsqueeze(-1).to(out.dtype)


def run_together(rnns: list[MaskedRNN], inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """``[rnn(x, lengths) for rnn, (x, lengths) in zip(rnns, inputs)]``; unidirectional GRUs of one size
    on inputs of one batch size run as one grouped recurrence on CPU (each over its own steps)."""
    xs = [x for x, _ in inputs]
    grouped = (
        all(r.uses_grouped_kernel(x) and r.backward_rnn is None for r, x in zip(rnns, xs))
        and len({(r.input_size, r.hidden_size) for r in rnns}) == 1
        and len({x.shape[0] for x in xs}) == 1
    )
    if not grouped:
        return [rnn(x, lengths) for rnn, (x, lengths) in zip(rnns, inputs)]
    grus = [r.forward_rnn for r in rnns]
    hs = grouped_gru.recurrence([grouped_gru.input_projection(x, [g]) for g, x in zip(grus, xs)], grus)
    return [h * length_mask(lengths, h.shape[1]).unsqueeze(-1).to(h.dtype) for h, (_, lengths) in zip(hs, inputs)]
