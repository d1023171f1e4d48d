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
import pandas as pd
import torch

from ser_modules.utils.fileio import ManifestError

ATTRIBUTES = ("arousal", "valence", "dominance")
# What a SER variant predicts: classes, attributes, or both from one representation (two heads in one layer).
TASKS = ("categorical", "dimensional", "multitask")
ATTRIBUTE_LOSSES = ("ccc", "mse")


def output_sizes(task: str, n_classes: int, n_attributes: int) -> tuple[int, int]:
    """``(class outputs, attribute outputs)`` of a model of ``task``: its last layer has their sum, classes first."""
    if task not in TASKS:
        raise ManifestError(f"task must be one of {TASKS}, got {task!r}")
    return (n_classes if task != "dimensional" else 0), (n_attributes if task != "categorical" else 0)


def attribute_values(manifest: pd.DataFrame, attributes, where: str = "the manifest") -> dict[str, np.ndarray]:
    """``{utterance ID: [A] float64}`` of ``attributes`` (manifest columns); :class:`ManifestError` naming
    ``where``, the column and the first utterance whose value is missing or not a finite number."""
    attributes = list(attributes)
    missing = [a for a in attributes if a not in manifest.columns]
    if missing:
        raise ManifestError(f"{where}: no {', '.join(missing)} column (the corpus has no such attribute labels)")
    columns = []
    for a in attributes:
        values = pd.to_numeric(manifest[a].replace("", np.nan), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise ManifestError(f"{where}: utterance {manifest['ID'].iloc[bad[0]]}: {a} {manifest[a].iloc[bad[0]]!r} is "
                                f"not a number ({len(bad)} of {len(values)} utterances lack it)")
        columns.append(values)
    matrix = np.stack(columns, axis=1) if columns else np.zeros((len(manifest), 0))
    return dict(zip(manifest["ID"].astype(str), matrix))


def has_attributes(manifest: pd.DataFrame, attributes) -> bool:
    """Whether every utterance of ``manifest`` carries a number for each of ``attributes``."""
    try:
        attribute_values(manifest, attributes)
    except ManifestError:
        return False
    return True


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


def attribute_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str = "ccc") -> torch.Tensor:
    """The attribute loss of ``[B, A]`` predictions: ``1 - CCC`` (:func:`ccc_loss`) or the mean squared error."""
    if kind == "mse":
        return torch.nn.functional.mse_loss(predicted, target)
    if kind != "ccc":
        raise ManifestError(f"attribute_loss must be one of {ATTRIBUTE_LOSSES}, got {kind!r}")
    return ccc_loss(predicted, target)


def mean_ccc(true, predicted) -> float:
    """CCC averaged over the attribute columns of ``[N, A]`` arrays (model selection on validation speakers)."""
    x, y = np.asarray(true, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    return float(np.nanmean([concordance_correlation(x[:, a], y[:, a]) for a in range(x.shape[1])]))


class TargetScaler:
    """Per-attribute standardisation of targets with the training fold's mean and std (population; 1 for a
    constant attribute): models learn ``(y - mean) / std`` and :meth:`inverse` returns the original scale,
    clipped to the training targets' range ``[low, high]`` when known (a rating scale is bounded, and a
    linear model extrapolates far outside it on an utterance with outlying features)."""

    def __init__(self, mean, std, low=None, high=None):
        self.mean, self.std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        self.low = None if low is None else np.asarray(low, dtype=np.float64)
        self.high = None if high is None else np.asarray(high, dtype=np.float64)

    @classmethod
    def fit(cls, targets) -> "TargetScaler":
        y = np.asarray(targets, dtype=np.float64)
        if y.ndim != 2 or not len(y):
            raise ValueError(f"targets must be [N, attributes] with N > 0, got shape {y.shape}")
        std = y.std(axis=0)
        return cls(y.mean(axis=0), np.where(std > 0, std, 1.0), y.min(axis=0), y.max(axis=0))

    def transform(self, targets) -> np.ndarray:
        return (np.asarray(targets, dtype=np.float64) - self.mean) / self.std

    def inverse(self, scaled) -> np.ndarray:
        values = np.asarray(scaled, dtype=np.float64) * self.std + self.mean
        return values if self.low is None else np.clip(values, self.low, self.high)

    def state_dict(self) -> dict:
        bounds = {} if self.low is None else {"low": self.low.tolist(), "high": self.high.tolist()}
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), **bounds}


def saved_task(info: dict) -> tuple[list[str], "TargetScaler | None"]:
    """``(attributes, their scaler)`` of a saved model's ``model.json`` (``([], None)`` for a categorical one)."""
    attributes = list(info.get("attributes") or [])
    return attributes, (TargetScaler(**info["attribute_scaler"]) if attributes else None)


def split_outputs(outputs: torch.Tensor, n_class_outputs: int, scaler: "TargetScaler | None" = None):
    """``(class probabilities [N, C] or None, attributes [N, A] or None)`` (numpy) of a model's last-layer outputs
    ``[N, C + A]`` (classes first: :func:`output_sizes`): the softmax of the class logits in float32, the
    attributes in the original scale with ``scaler`` (as the model outputs them without)."""
    outputs = outputs.detach().float()
    probs = outputs[:, :n_class_outputs].softmax(-1).cpu().numpy() if n_class_outputs else None
    rest = outputs[:, n_class_outputs:].cpu().numpy()
    attributes = (scaler.inverse(rest) if scaler is not None else rest) if rest.shape[1] else None
    return probs, attributes
