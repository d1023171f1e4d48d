"""Stage 6's dimensional-emotion report: the attribute rows of ``results.csv`` (CCC, Pearson r and RMSE per
attribute, mean ± std over folds × runs, p-values against the attribute reference) and the *Dimensional
emotion* table of ``RESULTS.md`` (:mod:`ser_modules.report.results` puts it beside the class tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ser_modules.report.formatting import fmt, fmt_p, markdown_table
from ser_modules.ser.metrics import mean_predictor_scores, paired_tests, summarize_attributes
from ser_modules.ser.variants import VariantSpec


def attribute_summary(name: str, attribute_scores: dict[str, pd.DataFrame], reference: str | None) -> dict:
    """The attribute columns of variant ``name``'s result row: each metric's mean and std over (fold, run)
    (``attribute_scores``: per variant, :func:`~ser_modules.ser.metrics.per_fold_run_attributes`) and the
    paired t-test's p of each CCC against ``reference``'s (NaN for the reference itself or without one)."""
    scores = attribute_scores[name]
    row = {k: round(x, 4) for k, x in summarize_attributes(scores).items() if k not in ("folds", "runs")}
    ref = attribute_scores.get(reference or "")
    for metric in [c for c in scores.columns if c.startswith("CCC_")]:
        test = paired_tests(scores, ref, metric) if ref is not None and metric in ref and name != reference else {}
        row[f"p_ttest_{metric}"] = test.get("p_ttest", np.nan)
    return row


def resolve_attribute_reference(name: str | None, reference: str, variants: list[dict]) -> str | None:
    """The row the attribute p-values compare against: ``name`` (conf/score.yaml ``attribute_reference``)
    when it is a variant with attributes, else the categorical reference when it predicts attributes, else
    the first variant with attributes of the reference's type, else the first variant with attributes
    (None without any: a configuration whose variants were overridden has no attribute table)."""
    specs = [VariantSpec.from_dict(v) for v in variants]
    names = [s.name for s in specs if s.predicts_attributes]
    if name in names:
        return name
    if reference in names:
        return reference
    ref_type = next((s.type for s in specs if s.name == reference), None)
    same = [s.name for s in specs if s.predicts_attributes and s.type == ref_type]
    return (same or names or [None])[0]


def table_attributes(results: pd.DataFrame) -> list[str]:
    """The attributes scored in ``results`` (its ``CCC_<attribute>_mean`` columns, in order)."""
    return [c[4:-5] for c in results.columns if c.startswith("CCC_") and c.endswith("_mean")] if len(results) else []


def attribute_table(results: pd.DataFrame, chance: pd.DataFrame | None) -> pd.DataFrame:
    """Dimensional emotion: per variant with attributes, CCC of each attribute (mean ± std over folds × runs,
    the best in bold) with the t-test's p against the attribute reference, then Pearson r and RMSE of each
    (means, attributes in the header's order); first the mean predictor (the training speakers' mean)."""
    attributes = table_attributes(results)
    rows_in = results[results[[f"CCC_{a}_mean" for a in attributes]].notna().any(axis=1)] if attributes else results
    if not len(rows_in):
        return pd.DataFrame()
    order = " / ".join(attributes)

    def cells(stats: dict, best: dict | None) -> dict:
        out = {}
        for a in attributes:
            mean, std = stats.get(f"CCC_{a}_mean", np.nan), stats.get(f"CCC_{a}_std", np.nan)
            text = fmt(mean, std) if not pd.isna(mean) else "–"
            out[f"CCC {a}"] = f"**{text}**" if best and not pd.isna(mean) and np.isclose(mean, best[a]) else text
            out[f"p {a}"] = fmt_p(stats.get(f"p_ttest_CCC_{a}", np.nan)) if best else ""
        out[f"r ({order})"] = " / ".join("–" if pd.isna(stats.get(f"r_{a}_mean", np.nan)) else f"{stats[f'r_{a}_mean']:.3f}"
                                         for a in attributes)
        out[f"RMSE ({order})"] = " / ".join("–" if pd.isna(stats.get(f"RMSE_{a}_mean", np.nan)) else
                                            f"{stats[f'RMSE_{a}_mean']:.3f}" for a in attributes)
        return out

    rows = []
    if chance is not None and len(chance):
        s = summarize_attributes(chance)
        rows.append({"Model": "Mean predictor", **cells(s, None), "folds × runs": f"{s['folds']} × {s['runs']}"})
    best = {a: rows_in[f"CCC_{a}_mean"].max() for a in attributes}
    for _, r in rows_in.iterrows():
        model = r["model"] if r.get("complete", True) else f"**{r['model']} (incomplete)**"
        rows.append({"Model": model, **cells(r.to_dict(), best), "folds × runs": f"{r['folds']} × {r['runs']}"})
    return pd.DataFrame(rows)


def attribute_section(results: pd.DataFrame, manifest: pd.DataFrame, folds, reference: str | None) -> list[str]:
    """The ``## Dimensional emotion`` lines of RESULTS.md (none without a row of attributes)."""
    attributes = table_attributes(results)
    if not attributes or not results[[f"CCC_{a}_mean" for a in attributes]].notna().any().any():
        return []
    chance = mean_predictor_scores(manifest, folds, attributes)
    return ["## Dimensional emotion", "",
            f"Concordance correlation coefficient (CCC) of predicted and true {', '.join(attributes)} (mean ± std "
            f"over folds × runs; p: paired t-test of the CCC against **{reference}** over the same "
            "(fold, run) pairs), Pearson r and RMSE in the attribute's scale beside it. The mean predictor "
            "answers every test utterance with the training speakers' mean (CCC 0). Scatter plots: "
            "plots/attributes_<variant>.png.", "", markdown_table(attribute_table(results, chance)), ""]
