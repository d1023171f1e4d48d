"""PNG figures of the scoring stage: confusion matrices (Lakomkin 2018 Figure 5), t-SNE of pooled
ASR representations (Figure 4), the ASR unit most correlated with loudness (Figure 6) and UA per
layer. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from ser_modules.utils.fileio import atomic_path  # noqa: E402

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


def plot_attribute_scatter(predictions, attributes: list[str], title: str, path: str) -> str:
    """Predicted vs true value of each attribute, one panel each, every (fold, run)'s test utterances (the
    diagonal is a perfect prediction), the pooled CCC in the panel's title."""
    from ser_modules.ser.dimensional import concordance_correlation

    fig, axes = plt.subplots(1, len(attributes), figsize=(3.4 * len(attributes), 3.3), squeeze=False)
    for ax, a in zip(axes[0], attributes):
        true, pred = predictions[f"true_{a}"].astype(float), predictions[f"pred_{a}"].astype(float)
        ax.scatter(true, pred, s=6, alpha=0.35, color="tab:blue", edgecolors="none")
        low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
        ax.set_xlabel(f"true {a}")
        ax.set_ylabel(f"predicted {a}")
        ax.set_title(f"{a}: CCC {concordance_correlation(true, pred):.3f} (pooled)", fontsize=9)
    fig.suptitle(f"{title} ({predictions.groupby(['fold', 'run']).ngroups} folds x runs)", fontsize=10)
    fig.tight_layout()
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
                      metric: str = "UA", lines: dict[str, float] | None = None, title: str | None = None) -> str:
    """``{model family: (layers, means, stds)}`` as error-bar lines, one per family; ``lines``: models
    reading all layers at once (the weighted sum) or none (the handcrafted reference), as horizontal lines."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (layers, means, stds) in series.items():
        ax.errorbar(range(len(layers)), means, yerr=stds, marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(layers)), layers, rotation=45 if len(layers) > 8 else 0)
    styles = ("--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 3)))
    for i, (name, value) in enumerate((lines or {}).items()):
        ax.axhline(value, color="grey" if i % 2 == 0 else "black", ls=styles[i % len(styles)], lw=1.2, label=name)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("ASR layer")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_benchmark(frame, path: str) -> str:
    """Benchmark rows as horizontal bars: achieved / GEMM FLOP rate per model, demo and paper size."""
    labels = [f"{m} [{s}]" for m, s in zip(frame["model"], frame["size"])]
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(frame) + 1.2))
    colours = ["tab:blue" if s == "demo" else "tab:orange" for s in frame["size"]]
    ax.barh(range(len(frame)), frame["ratio"], color=colours)
    ax.set_yticks(range(len(frame)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.35, color="grey", ls="--", lw=0.8)
    ax.axvline(0.20, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("achieved FLOP rate / GEMM rate (training step)")
    ax.set_title(f"{frame['device'].iloc[0]}: GEMM {frame['gemm_gflops'].iloc[0]:.0f} GFLOP/s (blue demo, orange paper)",
                 fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_scaling(frame, path: str) -> str:
    """Wall time and peak RSS of stages 4 and 5 against the corpus replication factor."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for stage, g in frame.groupby("stage"):
        left.plot(g["factor"], g["seconds"], marker="o", label=f"stage {stage}")
        right.plot(g["factor"], g["peak_rss_mb"], marker="o", label=f"stage {stage}")
    factors = sorted(frame["factor"].unique())
    for ax, ylabel in ((left, "wall time (s)"), (right, "peak RSS (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(factors, [f"{f}x" for f in factors])
        ax.set_xlabel("demo emotion corpus replicated")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    right.set_ylim(bottom=0)
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_weights(weights: dict[str, tuple[list[str], np.ndarray]], path: str, title: str | None = None) -> str:
    """``{variant: (layers, weights [folds x runs, layers])}`` as grouped bars of the mean learned softmax
    weight with its spread (std) as error bars and each fold's weights as dots; the uniform weight dotted."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    width = 0.8 / max(len(weights), 1)
    for i, (name, (layers, values)) in enumerate(weights.items()):
        x = np.arange(len(layers)) + i * width
        bars = ax.bar(x, values.mean(axis=0), width, yerr=values.std(axis=0), capsize=2, alpha=0.7,
                      label=f"{name} ({len(values)} folds x runs)")
        jitter = np.linspace(-0.25, 0.25, len(values))[:, None] * width if len(values) > 1 else np.zeros((1, 1))
        ax.scatter((x[None] + jitter).ravel(), values.ravel(), s=6, color=bars.patches[0].get_facecolor(),
                   edgecolors="black", linewidths=0.3, zorder=3)
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2, layers, rotation=45 if len(layers) > 8 else 0)
    ax.axhline(1 / max(len(next(iter(weights.values()))[0]), 1), color="grey", ls=":", lw=1, label="uniform")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("layer")
    ax.set_ylabel("learned weight")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_curves(panels: list[tuple[str, str, dict]], path: str, title: str) -> str:
    """Training curves side by side: each panel ``(title, y label, {line label: (epochs, values)})``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, ylabel, lines) in zip(axes[0], panels):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.1, label=label)
        ax.set_title(name, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if 0 < len(lines) <= 12:
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
