#!/usr/bin/env python3
"""Put several experiment folders side by side: one row per model, per experiment its UA, WA and
F1 (mean +/- std over folds x runs), the best value of each column marked (bold in Markdown, a
trailing ``*`` in CSV).

Usage: ``python utils/compare_results.py EXP_DIR [EXP_DIR ...] [--out comparison] [--metrics UA WA F1]``
writes ``comparison.md`` and ``comparison.csv`` (and prints the Markdown table); ``--metrics CCC_arousal
CCC_valence`` compares the dimensional rows (empty where a model has no value of a metric).
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ser_modules.report.formatting import fmt, markdown_table  # noqa: E402
from ser_modules.utils.fileio import ManifestError, write_csv, write_text  # noqa: E402


def experiment_name(path: str, taken: set[str]) -> str:
    """A short unique column label: ``recipe/exp`` from the path."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    name = "/".join(parts[-3:]) if len(parts) >= 3 and parts[-2] == "exp" else parts[-1]
    base, i = name, 2
    while name in taken:
        name, i = f"{base}#{i}", i + 1
    return name


def compare(exp_dirs: list[str], metrics=("UA", "WA", "F1")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(markdown_frame, csv_frame)``: rows = models, columns = (experiment, metric)."""
    tables, names = {}, set()
    for path in exp_dirs:
        results = os.path.join(path, "results.csv")
        if not os.path.isfile(results):
            raise ManifestError(f"{results}: not found (run stage 6 of that experiment)")
        name = experiment_name(path, names)
        names.add(name)
        tables[name] = pd.read_csv(results, keep_default_na=False).set_index("model")
    models = []
    for t in tables.values():
        models += [m for m in t.index if m not in models]
    md = pd.DataFrame({"model": models})
    csv = pd.DataFrame({"model": models})
    def cell(t, x, column):  # a model the experiment lacks, or a metric it has no value of (UA of a dimensional row)
        value = t.at[x, column] if x in t.index and column in t.columns else ""
        return None if value == "" else float(value)

    for name, t in tables.items():
        for m in metrics:
            means = [cell(t, x, f"{m}_mean") for x in models]
            stds = [cell(t, x, f"{m}_std") for x in models]
            valid = [v for v in means if v is not None]
            best = max(valid) if valid else None
            col = f"{name} {m}"
            md[col] = [("" if v is None else (f"**{fmt(v, s)}**" if v == best else fmt(v, s))) for v, s in zip(means, stds)]
            csv[col] = [("" if v is None else f"{v:.4f}" + ("*" if v == best else "")) for v in means]
            csv[f"{col} std"] = ["" if s is None else f"{s:.4f}" for s in stds]
    return md, csv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exp_dirs", nargs="+")
    parser.add_argument("--out", default="comparison", help="output path without extension")
    parser.add_argument("--metrics", nargs="+", default=["UA", "WA", "F1"])
    args = parser.parse_args(argv)
    try:
        md, csv = compare(args.exp_dirs, args.metrics)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = markdown_table(md)
    write_text(args.out + ".md", "# Experiments compared\n\n" + text + "\n\nBest value per column in bold.\n")
    write_csv(args.out + ".csv", csv)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
