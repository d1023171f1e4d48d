"""SVD low-rank factorisation of fully connected layers (Yeh 2020, section 2.4, "structured LAS").

A trained weight ``W`` (``out x in`` in PyTorch's convention) is approximated by its ``r`` leading
singular triplets, ``W ~ U_r (Sigma_r V_r^T) = U_r N_r``, and the layer becomes two smaller ones:
``x -> N_r x -> U_r (N_r x) + b``. Parameters drop from ``m n`` to ``r (m + n)`` (plus the bias).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class LowRankLinear(nn.Module):
    """``y = U (N x) + b`` with ``N [rank, in_features]`` and ``U [out_features, rank]``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}], got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.project = nn.Linear(in_features, rank, bias=False)  # N_r = Sigma_r V_r^T
        self.expand = nn.Linear(rank, out_features, bias=bias)  # U_r and the original bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        """Initialise from the truncated SVD of a trained ``nn.Linear``."""
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        with torch.no_grad():
            u, s, vh = torch.linalg.svd(linear.weight.double(), full_matrices=False)
            layer.project.weight.copy_((s[:rank, None] * vh[:rank]).to(linear.weight.dtype))
            layer.expand.weight.copy_(u[:, :rank].to(linear.weight.dtype))
            if linear.bias is not None:
                layer.expand.bias.copy_(linear.bias)
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.project(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def factorize_linears(module: nn.Module, names: list[str], rank: int) -> dict[str, tuple[int, int]]:
    """Replace the ``nn.Linear`` children ``names`` of ``module`` by :class:`LowRankLinear` of ``rank``
    (capped at the layer's smaller dimension). Returns ``{name: (params before, params after)}``."""
    counts = {}
    for name in names:
        linear = getattr(module, name)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is a {type(linear).__name__}, not an nn.Linear")
        r = min(rank, linear.in_features, linear.out_features)
        low = LowRankLinear.from_linear(linear, r)
        counts[name] = (sum(p.numel() for p in linear.parameters()), sum(p.numel() for p in low.parameters()))
        setattr(module, name, low)
    return counts


LISTENER_FC = ("fc1", "fc2")


def factorize_listener(las, rank: int) -> dict[str, tuple[int, int]]:
    """Structured LAS (Yeh 2020, section 2.4): the FC layer after each pyramidal BLSTM (``fc1``,
    ``fc2``; m x n = 1024 x 512 at paper size) factorised at ``rank``. An optional FC after the first
    BLSTM (``blstm_fc``) is not one of the paper's listener FC layers and stays as it is."""
    return factorize_linears(las.listener, list(LISTENER_FC), rank)


def listener_size(las) -> dict[str, int]:
    """Parameter counts of a LAS: its listener FC layers (``fc1``, ``fc2``, factorised or not), the
    whole listener and the whole model; the rank of the factorised layers (0 when dense)."""
    fcs = [getattr(las.listener, name) for name in LISTENER_FC]
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return {"rank": max((getattr(fc, "rank", 0) for fc in fcs), default=0),
            "listener_fc": sum(count(fc) for fc in fcs), "listener": count(las.listener), "model": count(las)}
