"""SER metrics over the predictions of stage 5.

UA (unweighted accuracy = mean per-class recall = balanced accuracy), WA (accuracy over
utterances) and macro F1 are computed with scikit-learn. A model's score is the mean +/- std over
all (fold, run) pairs (Lakomkin 2018, Table 1); significance against the reference model is a
paired t-test and a Wilcoxon signed-rank test over the same (fold, run) pairs; chance is the score
of a classifier drawing each class with its training frequency.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from ser_modules.utils.fileio import ManifestError

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


def kept_run(folder_name: str, runs: int | None) -> bool:
    """Whether run folder ``run<k>`` is one of the first ``runs`` (None: all): the runs of a larger
    ``n_runs`` before stay on disk but are not scored."""
    if runs is None:
        return True
    digits = folder_name[3:] if folder_name.startswith("run") else ""
    return digits.isdigit() and int(digits) < runs


def load_predictions(ser_dir: str, variant: str, runs: int | None = None) -> pd.DataFrame:
    """All finished ``predictions.csv`` of a variant (columns ID, fold, run, true, predicted, p_*), of its
    first ``runs`` runs per fold (:func:`kept_run`); work folders of unfinished runs (hidden names) are not read."""
    folder = os.path.join(ser_dir, variant)
    frames = []
    for fold in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        fdir = os.path.join(folder, fold)
        if not os.path.isdir(fdir) or fold.startswith("."):
            continue
        for run in sorted(r for r in os.listdir(fdir) if not r.startswith(".") and kept_run(r, runs)):
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


# ----------------------------------------------------------------------------------------------
# Attributes (dimensional emotion)

ATTRIBUTE_METRICS = ("CCC", "r", "RMSE")


def predicted_attributes(predictions: pd.DataFrame) -> list[str]:
    """The attributes a ``predictions.csv`` holds (its ``pred_<attribute>`` columns, in order)."""
    return [c[5:] for c in predictions.columns if c.startswith("pred_")]


def per_fold_run_attributes(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per (fold, run): ``CCC_<attribute>, r_<attribute>, RMSE_<attribute>`` of every attribute."""
    from ser_modules.ser.dimensional import regression_metrics

    rows = []
    for (fold, run), group in predictions.groupby(["fold", "run"], sort=True):
        row = {"fold": fold, "run": int(run)}
        for a in predicted_attributes(predictions):
            scores = regression_metrics(group[f"true_{a}"].astype(float), group[f"pred_{a}"].astype(float))
            row.update({f"{m}_{a}": scores[m] for m in ATTRIBUTE_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_attributes(scores: pd.DataFrame) -> dict:
    """Mean and standard deviation (ddof 1) over (fold, run) of every attribute metric column of ``scores``."""
    out = {"folds": int(scores["fold"].nunique()), "runs": int(scores["run"].nunique())}
    for column in [c for c in scores.columns if c.split("_", 1)[0] in ATTRIBUTE_METRICS]:
        out[f"{column}_mean"] = float(scores[column].mean())
        out[f"{column}_std"] = float(scores[column].std(ddof=1)) if len(scores) > 1 else 0.0
    return out


def mean_predictor_scores(manifest: pd.DataFrame, folds, attributes: list[str]) -> pd.DataFrame:
    """The chance row of the attribute table: every test utterance predicted as the training speakers' mean
    (CCC 0 by construction, r undefined, RMSE the test values' spread about that mean)."""
    from ser_modules.ser.dimensional import attribute_values

    values = attribute_values(manifest, attributes)
    rows = []
    for fold in folds:
        mean = np.mean([values[i] for i in fold.train], axis=0)
        true = np.stack([values[i] for i in fold.test])
        row = {"fold": fold.name, "run": 0}
        for j, a in enumerate(attributes):
            row.update({f"CCC_{a}": 0.0, f"r_{a}": float("nan"),
                        f"RMSE_{a}": float(np.sqrt(((true[:, j] - mean[j]) ** 2).mean()))})
        rows.append(row)
    return pd.DataFrame(rows)
