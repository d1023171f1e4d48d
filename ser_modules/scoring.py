"""SER metrics and result tables.

UA (unweighted accuracy = mean per-class recall = balanced accuracy), WA (accuracy over
utterances) and macro F1 are computed with scikit-learn. A model's score is the mean +/- std over
all (fold, run) pairs (Lakomkin 2018, Table 1); significance against the reference model is a
paired t-test and a Wilcoxon signed-rank test over the same (fold, run) pairs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from ser_modules.fileio import ManifestError

METRICS = ("UA", "WA", "F1")


def classification_metrics(true, predicted, classes: list[str]) -> dict[str, float]:
    """``{"UA", "WA", "F1"}`` of one set of predictions (labels as class names)."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    return {
        "UA": float(balanced_accuracy_score(true, predicted)),
        "WA": float(accuracy_score(true, predicted)),
        "F1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
    }


def normalized_confusion(true, predicted, classes: list[str]) -> np.ndarray:
    """Row-normalised confusion matrix (rows: true class, columns: predicted class)."""
    cm = confusion_matrix(true, predicted, labels=classes).astype(float)
    return cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)


def load_predictions(ser_dir: str, variant: str) -> pd.DataFrame:
    """All finished ``predictions.csv`` of a variant (columns ID, fold, run, true, predicted, p_*);
    work folders of unfinished runs (hidden names) are not read."""
    folder = os.path.join(ser_dir, variant)
    frames = []
    for fold in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        fdir = os.path.join(folder, fold)
        if not os.path.isdir(fdir) or fold.startswith("."):
            continue
        for run in sorted(r for r in os.listdir(fdir) if not r.startswith(".")):
            path = os.path.join(fdir, run, "predictions.csv")
            if os.path.isfile(path):
                frames.append(pd.read_csv(path, keep_default_na=False, dtype={"ID": str, "fold": str}))
    if not frames:
        raise ManifestError(f"{folder}: no predictions (did stage 5 train variant {variant!r}?)")
    return pd.concat(frames, ignore_index=True)


def per_fold_run(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row of metrics per (fold, run)."""
    rows = []
    for (fold, run), group in predictions.groupby(["fold", "run"], sort=True):
        rows.append({"fold": fold, "run": int(run), **classification_metrics(group["true"], group["predicted"], classes)})
    return pd.DataFrame(rows)


def summarize(scores: pd.DataFrame) -> dict:
    """Mean and standard deviation (ddof 1, as usually reported) of each metric over (fold, run)."""
    out = {"folds": int(scores["fold"].nunique()), "runs": int(scores["run"].nunique())}
    for m in METRICS:
        out[f"{m}_mean"] = float(scores[m].mean())
        out[f"{m}_std"] = float(scores[m].std(ddof=1)) if len(scores) > 1 else 0.0
    return out


def paired_tests(scores: pd.DataFrame, reference: pd.DataFrame, metric: str = "UA") -> dict:
    """Paired t-test and Wilcoxon signed-rank p-values of ``scores`` against ``reference`` over the
    (fold, run) pairs both have."""
    joined = scores.merge(reference, on=["fold", "run"], suffixes=("", "_ref"))
    a, b = joined[metric].to_numpy(), joined[f"{metric}_ref"].to_numpy()
    if len(joined) < 2 or np.allclose(a, b):
        return {"pairs": len(joined), "p_ttest": float("nan"), "p_wilcoxon": float("nan")}
    p_t = float(stats.ttest_rel(a, b).pvalue)
    try:
        p_w = float(stats.wilcoxon(a, b).pvalue)
    except ValueError:
        p_w = float("nan")
    return {"pairs": len(joined), "p_ttest": p_t, "p_wilcoxon": p_w}


def chance_scores(manifest: pd.DataFrame, folds, classes: list[str], runs: int = 10, seed: int = 0) -> dict:
    """Table 1's reference rows: always the most frequent training class, and uniform random guesses."""
    label = dict(zip(manifest["ID"], manifest["emotion"]))
    rng = np.random.default_rng(seed)
    rows = {"Most frequent class": [], "Random prediction": []}
    for fold in folds:
        train = pd.Series([label[i] for i in fold.train])
        true = [label[i] for i in fold.test]
        rows["Most frequent class"].append({"fold": fold.name, "run": 0, **classification_metrics(
            true, [train.value_counts().idxmax()] * len(true), classes)})
        for r in range(runs):
            rows["Random prediction"].append({"fold": fold.name, "run": r, **classification_metrics(
                true, rng.choice(classes, size=len(true)).tolist(), classes)})
    return {k: pd.DataFrame(v) for k, v in rows.items()}


def environment() -> dict:
    """Date, Python, library versions and the toolkit's git commit (``-dirty`` with local changes)."""
    import speechbrain
    import torch

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += "-dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
            "torch": torch.__version__, "speechbrain": speechbrain.__version__, "platform": platform.platform(),
            "git_commit": commit}


def fmt(mean: float, std: float) -> str:
    return f"{mean:.3f} ± {std:.3f}"


def fmt_p(p: float) -> str:
    if p is None or (isinstance(p, float) and np.isnan(p)):
        return "–"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def markdown_table(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def config_json(spec: dict, hp: dict, keys=("lr", "batch_size", "max_epochs", "dropout", "label_smoothing",
                                             "anneal_factor", "anneal_patience", "min_lr", "max_grad_norm",
                                             "class_weights", "n_runs", "seed")) -> str:
    return json.dumps({"variant": spec, **{k: hp.get(k) for k in keys if k in hp}}, sort_keys=True)


def data_section(prepared: dict) -> list[str]:
    """RESULTS.md lines on the data stage 1 prepared: the hours of every ASR corpus and split actually
    used (LibriSpeech's subsets named) and how many utterances its audio check rejected (``prepare_summary.json``)."""
    rows = []
    for corpus, info in prepared.get("asr", {}).get("corpora", {}).items():
        subsets = info.get("subsets", {})
        for split in ("train", "dev", "test"):
            if split in info:
                rows.append({"ASR corpus": corpus, "split": split, "subsets": ", ".join(subsets.get(split, [])),
                             "utterances": info[split]["utterances"], "hours": f"{info[split]['hours']:.2f}",
                             "rejected": info[split].get("rejected", 0)})
    if not rows:
        return []
    total = {split: prepared["asr"][split]["hours"] for split in ("train", "dev", "test") if split in prepared["asr"]}
    lines = ["## Data (stage 1)", "", markdown_table(pd.DataFrame(rows)), "",
             "ASR data used: " + ", ".join(f"{split} {hours:.2f} h" for split, hours in total.items()) + "; training "
             f"utterances longer than {prepared['asr'].get('max_duration', 15):g} s dropped. "]
    rejected = prepared.get("emotion_rejected")
    if rejected is not None:
        lines[-1] += (f"{rejected} emotion-corpus utterance(s) rejected by the audio check"
                      f"{' (data/emotion/rejected.csv)' if rejected else ''}.")
    return lines + [""]

