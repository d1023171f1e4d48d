"""Stage 6 of cross-corpus evaluation: the table beside the within-corpus one.

For each evaluation corpus and variant: UA, WA and macro F1 as mean ± std over (fold, run) and of the
fold ensemble (class probabilities averaged over every fold model and run), the drop from the
within-corpus UA, notes (language, missing classes, no dialog context) and a confusion matrix. UA and
F1 are taken over the classes the corpus has (:func:`eval_metrics`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from ser_modules.data.eval_corpora import eval_manifest
from ser_modules.ser.metrics import kept_run
from ser_modules.utils.fileio import ManifestError

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Stage 6: the cross-corpus table


def eval_metrics(true, predicted) -> dict[str, float]:
    """UA, WA and macro F1 over the classes present in ``true`` (an evaluation corpus may lack some
    training classes; predicting one of those counts as an error)."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    true, predicted = np.asarray(true), np.asarray(predicted)
    present = sorted(set(true))
    return {"UA": float(np.mean(recall_score(true, predicted, labels=present, average=None, zero_division=0))),
            "WA": float(accuracy_score(true, predicted)),
            "F1": float(f1_score(true, predicted, labels=present, average="macro", zero_division=0))}


def fold_ensemble(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One prediction per utterance from the class probabilities averaged over every (fold, run) model:
    ``ID, true, predicted, p_<class>...``."""
    cols = [f"p_{c}" for c in classes]
    mean = predictions.groupby("ID", sort=True).agg({"true": "first", **{c: "mean" for c in cols}}).reset_index()
    mean["predicted"] = [classes[i] for i in mean[cols].to_numpy().argmax(axis=1)]
    return mean[["ID", "true", "predicted", *cols]]


def score_eval_corpus(predictions: pd.DataFrame, classes: list[str]) -> dict:
    """Mean ± std over (fold, run) of each metric and the fold ensemble's metrics."""
    per_run = pd.DataFrame([{"fold": f, "run": r, **eval_metrics(g["true"], g["predicted"])}
                            for (f, r), g in predictions.groupby(["fold", "run"], sort=True)])
    ensemble = fold_ensemble(predictions, classes)
    out = {"models": len(per_run)}
    for m in ("UA", "WA", "F1"):
        out[f"{m}_mean"] = float(per_run[m].mean())
        out[f"{m}_std"] = float(per_run[m].std(ddof=1)) if len(per_run) > 1 else 0.0
    out.update({f"ensemble_{k}": v for k, v in eval_metrics(ensemble["true"], ensemble["predicted"]).items()})
    return out


def load_eval_predictions(exp_dir: str, name: str, variant: str, manifest: pd.DataFrame,
                          runs: int | None = None) -> tuple[pd.DataFrame, list]:
    """The predictions stage 5 wrote of a variant's saved models (its first ``runs`` per fold) on evaluation
    corpus ``name``, and the ones that are stale (the saved model or the corpus's utterances and labels changed since they were
    written): ``(frame, [stale file, ...])``; an empty frame when there are none."""
    from ser_modules.ser.training import labels_digest
    from ser_modules.utils.fileio import file_digest, read_optional_json

    folder = os.path.join(exp_dir, "cross", name, variant)
    current = labels_digest(manifest["ID"].astype(str).tolist(), manifest["emotion"].astype(str).tolist())
    frames, stale = [], []
    for fold in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        for run in sorted(os.listdir(os.path.join(folder, fold))) if not fold.startswith(".") else []:
            path = os.path.join(folder, fold, run, "predictions.csv")
            if run.startswith(".") or not kept_run(run, runs) or not os.path.isfile(path):
                continue
            inputs = read_optional_json(os.path.join(folder, fold, run, "inputs.json"))
            model = os.path.join(exp_dir, "ser", variant, fold, run, "model.pt")
            if inputs.get("utterances") != current or not os.path.isfile(model) or inputs.get("model") != file_digest(model):
                stale.append(path)
            frames.append(pd.read_csv(path, keep_default_na=False, dtype={"ID": str, "fold": str}))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), stale


def cross_corpus_rows(exp_dir: str, corpora: list[dict], results: pd.DataFrame, classes: list[str], data_dir: str,
                      planned: dict[str, int] | int, allow_incomplete: bool = False, log=logger,
                      runs: dict[str, int] | None = None) -> pd.DataFrame:
    """``cross_corpus.csv``: one row per (evaluation corpus, variant) with the within-corpus UA, the
    evaluation corpus's metrics and the drop of UA (within minus mean over fold models), of each variant's
    first ``runs`` runs per fold. Predictions of fewer than ``planned`` (fold, run) models (per variant name,
    or one number for all), or stale ones, are refused (:class:`ManifestError`: rerun stage 5), or with
    ``allow_incomplete`` scored from what is there and flagged (``complete`` False)."""
    from ser_modules.ser.dimensional import has_attributes
    from ser_modules.ser.metrics import per_fold_run_attributes

    rows = []
    for corpus in corpora:
        manifest = eval_manifest(data_dir, corpus["name"])
        for _, r in results.iterrows():
            has_classes = not pd.isna(r["UA_mean"])
            attributes = [c[4:-5] for c in r.index if c.startswith("CCC_") and c.endswith("_mean") and not pd.isna(r[c])]
            attributes = attributes if attributes and has_attributes(manifest, attributes) else []
            if not has_classes and not attributes:
                continue  # attributes only, and this corpus carries none of them
            preds, stale = load_eval_predictions(exp_dir, corpus["name"], r["model"], manifest,
                                                 (runs or {}).get(r["model"]))
            models = preds.groupby(["fold", "run"]).ngroups if len(preds) else 0
            wanted = planned.get(r["model"], 0) if isinstance(planned, dict) else planned
            if stale or models < wanted:
                problem = (f"{os.path.join(exp_dir, 'cross', corpus['name'], r['model'])}: "
                           + (f"{len(stale)} stale prediction file(s) (the saved model or the corpus changed since), "
                              f"e.g. {stale[0]}" if stale else f"predictions of {models} of the {wanted} fold models"))
                if not allow_incomplete:
                    raise ManifestError(f"{problem}: rerun stage 5 (it scores what is missing or stale), or score it "
                                        "marked as incomplete with score.allow_incomplete=True")
                log.warning("%s: scored and marked as incomplete (score.allow_incomplete)", problem)
            if not models:
                continue
            row = {"corpus": corpus["name"], "model": r["model"], "type": r["type"],
                   "within_UA_mean": r["UA_mean"], "within_UA_std": r["UA_std"]}
            if has_classes:
                s = score_eval_corpus(preds, classes)
                row.update({**{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()},
                            "UA_drop": round(float(r["UA_mean"]) - s["UA_mean"], 4)})
            per_model = per_fold_run_attributes(preds) if attributes else None
            for a in [a for a in attributes if f"pred_{a}" in preds.columns]:
                ccc = per_model[f"CCC_{a}"].tolist()
                row.update({f"within_CCC_{a}_mean": r[f"CCC_{a}_mean"], f"CCC_{a}_mean": round(float(np.mean(ccc)), 4),
                            f"CCC_{a}_std": round(float(np.std(ccc, ddof=1)) if len(ccc) > 1 else 0.0, 4),
                            f"CCC_{a}_drop": round(float(r[f"CCC_{a}_mean"]) - float(np.mean(ccc)), 4)})
            rows.append({**row, "complete": not stale and models >= wanted})
    return pd.DataFrame(rows)


def cross_corpus_table(rows: pd.DataFrame, corpora: list[dict]) -> pd.DataFrame:
    """The RESULTS.md table: a row per variant, within-corpus UA, then per evaluation corpus UA, WA, F1
    (mean ± std over fold models), the fold ensemble's UA and the drop from within-corpus UA; for variants
    with attributes, where the corpus carries them, the CCC of each (mean ± std) and its drop."""
    from ser_modules.report.formatting import fmt

    table = []
    for model, group in rows.groupby("model", sort=False):
        first = group.iloc[0]
        name = model if group["complete"].all() else f"**{model} (incomplete)**"
        line = {"Model": name, "within-corpus UA": "–" if pd.isna(first["within_UA_mean"]) else
                fmt(first["within_UA_mean"], first["within_UA_std"])}
        for corpus in corpora:
            r = group[group["corpus"] == corpus["name"]]
            if not len(r):
                continue
            r = r.iloc[0]
            name = corpus["name"]
            if not pd.isna(r.get("UA_mean", np.nan)):
                line.update({f"{name} UA": fmt(r["UA_mean"], r["UA_std"]), f"{name} WA": fmt(r["WA_mean"], r["WA_std"]),
                             f"{name} F1": fmt(r["F1_mean"], r["F1_std"]),
                             f"{name} ensemble UA": f"{r['ensemble_UA']:.3f}", f"{name} UA drop": f"{r['UA_drop']:+.3f}"})
            for column in [c for c in r.index if c.startswith("CCC_") and c.endswith("_mean") and not pd.isna(r[c])]:
                a = column[4:-5]
                line.update({f"{name} CCC {a}": fmt(r[column], r[f"CCC_{a}_std"]),
                             f"{name} CCC {a} drop": f"{r[f'CCC_{a}_drop']:+.3f}"})
        table.append(line)
    return pd.DataFrame(table).fillna("")


def language_name(codes: str) -> str:
    from ser_modules.data.corpus import LANGUAGE_NAMES

    return ", ".join(LANGUAGE_NAMES.get(x, x) for x in codes.split(","))


def corpus_notes(corpora: list[dict], prepared: dict, variants: list[dict]) -> list[str]:
    """What a reader of the table needs to know of each evaluation corpus: size, dropped labels, missing
    classes, language mismatch, no dialog context for IAAN."""
    train_language, asr_language = prepared.get("emotion_language", ""), prepared.get("asr_language", "")
    has_iaan = any(v.get("type") == "iaan" for v in variants)
    notes = []
    for c in corpora:
        dropped = sum(c["dropped"].values())
        line = (f"**{c['name']}** ({c['kind']}, {c['root']}): {c['utterances']} utterances of {c['speakers']} speakers, "
                f"classes {', '.join(f'{k} {v}' for k, v in c['classes'].items())}")
        line += f"; {dropped} dropped (by label: {c['dropped']})" if dropped else ""
        if c["missing_classes"]:
            line += (f"; no utterance of training class(es) {', '.join(c['missing_classes'])}: UA and F1 are over the "
                     "other classes (a prediction of a missing class counts as an error)")
        language = c.get("language", "")
        others = [(what, code) for what, code in (("the training corpus", train_language), ("the ASR", asr_language))
                  if code and language and code != language]  # an unknown language is no mismatch
        if others:
            line += (f"; its speech is {language_name(language)} while "
                     + " and ".join(f"{what} is {language_name(code)}" for what, code in others)
                     + ": the scores mix the corpus shift with a language mismatch")
        if has_iaan and not c.get("dialog_context"):
            line += "; no dialog context, so IAAN reads zero context turns"
        notes.append(f"- {line}.")
    return notes


def cross_corpus_figures(exp_dir: str, corpora: list[dict], rows: pd.DataFrame, classes: list[str],
                         plot_dir: str, runs: dict[str, int] | None = None) -> list[str]:
    """Per evaluation corpus, the row-normalised confusion matrix of the fold ensemble of the variant
    best within the corpus (``plots/cross_confusion_<corpus>.png``)."""
    from ser_modules.report import plots
    from ser_modules.ser.metrics import load_predictions, normalized_confusion

    paths, listed = [], {f"cross_confusion_{c['name']}.png" for c in corpora}
    for name in os.listdir(plot_dir) if os.path.isdir(plot_dir) else []:  # corpora no longer evaluated
        if name.startswith("cross_confusion_") and name not in listed:
            os.remove(os.path.join(plot_dir, name))
    for corpus in corpora:
        group = rows[(rows["corpus"] == corpus["name"]) & rows["within_UA_mean"].notna()] if len(rows) else rows
        if not len(group):
            continue
        best = group.sort_values("within_UA_mean", ascending=False).iloc[0]["model"]
        ensemble = fold_ensemble(load_predictions(os.path.join(exp_dir, "cross", corpus["name"]), best,
                                                  (runs or {}).get(best)), classes)
        matrix = normalized_confusion(ensemble["true"], ensemble["predicted"], classes)
        paths.append(plots.plot_confusion(matrix, classes, f"{best} on {corpus['name']} (fold ensemble)",
                                          os.path.join(plot_dir, f"cross_confusion_{corpus['name']}.png")))
    return paths


def cross_corpus_section(rows: pd.DataFrame, corpora: list[dict], prepared: dict, variants: list[dict],
                         training_corpus: str) -> list[str]:
    """The ``## Cross-corpus evaluation`` lines of RESULTS.md."""
    if not len(rows):
        return []
    from ser_modules.report.formatting import markdown_table

    return ["## Cross-corpus evaluation", "",
            f"The fold models trained on {training_corpus} scored, without training, on other corpora: UA, WA and macro "
            "F1 as mean ± std over the fold models (folds × runs), the UA of the fold ensemble (class probabilities "
            "averaged over every fold model), and the drop of mean UA from within-corpus UA. Per-utterance "
            "predictions in `cross/<corpus>/<variant>/<fold>/run<k>/predictions.csv`, every row in `cross_corpus.csv`.",
            "", *corpus_notes(corpora, prepared, variants), "", markdown_table(cross_corpus_table(rows, corpora)), ""]
