"""PNG figures of the scoring stage: confusion matrices (Lakomkin 2018 Figure 5), t-SNE of pooled
ASR representations (Figure 4), the ASR unit most correlated with loudness (Figure 6) and UA per
layer. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ser_modules.fileio import atomic_path  # noqa: E402

EMOTION_COLOURS = {"ang": "tab:red", "sad": "tab:blue", "neu": "tab:cyan", "hap": "tab:green"}


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, classes: list[str], title: str, path: str) -> str:
    """A row-normalised confusion matrix with the percentages written in the cells."""
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{100 * matrix[i, j]:.0f}", ha="center", va="center",
                    color="white" if matrix[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_tsne(points: np.ndarray, labels: list[str], title: str, path: str) -> str:
    """2-D embedding coloured by emotion (anger red, sadness blue, neutral cyan, happiness green)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    labels = np.asarray(labels)
    for c in sorted(set(labels)):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=6, alpha=0.7, label=c, color=EMOTION_COLOURS.get(c))
    ax.legend(markerscale=2, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_loudness(examples: list[tuple[str, np.ndarray, np.ndarray]], unit: int, layer: str, mean_r: float,
                  path: str) -> str:
    """The unit's activation (blue) and frame loudness (orange) over time for a few utterances."""
    fig, axes = plt.subplots(len(examples), 1, figsize=(7, 2.3 * len(examples)), squeeze=False)
    for ax, (utt, act, loud) in zip(axes[:, 0], examples):
        ax.plot(act, color="tab:blue", label=f"{layer} unit {unit}")
        ax.set_ylabel("activation", color="tab:blue")
        twin = ax.twinx()
        twin.plot(loud, color="tab:orange", label="loudness (dB)")
        twin.set_ylabel("loudness (dB)", color="tab:orange")
        ax.set_title(f"{utt}: r = {np.corrcoef(act, loud)[0, 1]:.2f}", fontsize=9)
    axes[-1, 0].set_xlabel("frame")
    fig.suptitle(f"{layer} unit {unit}: mean per-utterance Pearson r with loudness {mean_r:.2f}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_scores(series: dict[str, tuple[list[str], list[float], list[float]]], path: str,
                      metric: str = "UA") -> str:
    """``{model family: (layers, means, stds)}`` as error-bar lines, one per family."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (layers, means, stds) in series.items():
        ax.errorbar(range(len(layers)), means, yerr=stds, marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(layers)), layers)
    ax.set_xlabel("ASR layer")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
