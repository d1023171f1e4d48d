"""Dimensional emotion: continuous attributes (arousal, valence, dominance) and how they are scored.

The concordance correlation coefficient (Lin 1989) is the attribute metric of today's SER challenges
(MSP-Podcast, Odyssey 2024): ``CCC = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)`` with
population (co)variances; 1 for identical sequences, 0 for a constant prediction, -1 for a mirrored one.
It penalises a bias and a wrong scale that Pearson's r ignores. Training minimises ``1 - CCC`` over a batch
(:func:`ccc_loss`); targets are standardised with the training fold's statistics (:class:`TargetScaler`)
and predictions returned in the attribute's original scale.
"""

from __future__ import annotations

import numpy as np
import torch

ATTRIBUTES = ("arousal", "valence", "dominance")


def concordance_correlation(true, predicted) -> float:
    """CCC of two 1-D sequences (numpy, float64); nan when both are constant (no variance to agree on)."""
    x, y = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError(f"CCC needs two 1-D sequences of one length, got {x.shape} and {y.shape}")
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    denominator = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denominator) if denominator > 0 else float("nan")


def regression_metrics(true, predicted) -> dict[str, float]:
    """CCC, Pearson r and RMSE of one attribute (r nan when either side is constant)."""
    x, y = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    r = float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 and x.std() > 0 and y.std() > 0 else float("nan")
    return {"CCC": concordance_correlation(x, y), "r": r, "RMSE": float(np.sqrt(((x - y) ** 2).mean()))}


def ccc_loss(predicted: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - CCC`` per attribute column of ``predicted, target [B, A]``, averaged over attributes (a scalar);
    population statistics over the batch, as :func:`concordance_correlation`."""
    if predicted.shape != target.shape or predicted.dim() != 2:
        raise ValueError(f"ccc_loss needs [B, A] predictions and targets, got {tuple(predicted.shape)} and "
                         f"{tuple(target.shape)}")
    mp, mt = predicted.mean(dim=0), target.mean(dim=0)
    cov = ((predicted - mp) * (target - mt)).mean(dim=0)
    denominator = predicted.var(dim=0, unbiased=False) + target.var(dim=0, unbiased=False) + (mp - mt) ** 2
    return (1 - 2 * cov / (denominator + eps)).mean()


class TargetScaler:
    """Per-attribute standardisation of targets with the training fold's mean and std (population; 1 for a
    constant attribute): models learn ``(y - mean) / std`` and :meth:`inverse` returns the original scale."""

    def __init__(self, mean, std):
        self.mean, self.std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)

    @classmethod
    def fit(cls, targets) -> "TargetScaler":
        y = np.asarray(targets, dtype=np.float64)
        if y.ndim != 2 or not len(y):
            raise ValueError(f"targets must be [N, attributes] with N > 0, got shape {y.shape}")
        std = y.std(axis=0)
        return cls(y.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, targets) -> np.ndarray:
        return (np.asarray(targets, dtype=np.float64) - self.mean) / self.std

    def inverse(self, scaled) -> np.ndarray:
        return np.asarray(scaled, dtype=np.float64) * self.std + self.mean

    def state_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}
