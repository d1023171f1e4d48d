"""Stage 6's training curves as PNG files, for users without TensorBoard: ``<exp>/plots/curves/``.

Read from the logs every training keeps whatever the extras: stage 2's ``asr/train_log.txt`` and stage 3's
``adapt/<variant>/<fold>/<stage>/train_log.txt`` (SpeechBrain's ``FileTrainLogger`` lines), stage 5's
``ser/<variant>/<fold>/run<k>/history.json``. One figure per training family: loss (train and valid) and
the validation metric (CER, or UA for stage 5) per epoch, one line per fold (and run).
"""

from __future__ import annotations

import glob
import json
import os
import re

from ser_modules.report import plots

_FIELD = re.compile(r"^\s*(?:(train|valid|test)\s+)?([\w.]+):\s*(\S+)\s*$")


def parse_train_log(path: str) -> list[dict]:
    """The epochs of a SpeechBrain ``train_log.txt``: ``[{"epoch": 1, "lr": ..., "train loss": ...,
    "valid loss": ..., "valid CER": ...}, ...]`` (unparsable lines skipped; a resumed run's repeated epoch:
    the last line of it)."""
    epochs: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = {}
            for part in re.split(r" - |, ", line.strip()):
                m = _FIELD.match(part)
                if m:
                    split, key, value = m.groups()
                    try:
                        row[f"{split} {key}" if split else key] = float(value)
                    except ValueError:
                        continue
            if "epoch" in row:
                epochs[int(row["epoch"])] = row
    return [epochs[k] for k in sorted(epochs)]


def _lines(runs: dict[str, list[dict]], key: str) -> dict:
    """``{label: (epochs, values)}`` of ``key`` in each run's rows."""
    out = {}
    for label, rows in runs.items():
        xs = [int(r["epoch"]) for r in rows if key in r]
        if xs:
            out[label] = (xs, [r[key] for r in rows if key in r])
    return out


def asr_figures(exp_dir: str, plot_dir: str) -> list[str]:
    """Stage 2's curves and one figure per adaptation variant of stage 3 (its stages one after another)."""
    paths = []
    log = os.path.join(exp_dir, "asr", "train_log.txt")
    if os.path.isfile(log) and (rows := parse_train_log(log)):
        paths.append(plots.plot_curves([("loss", "loss", {**_lines({"train": rows}, "train loss"),
                                                          **_lines({"valid": rows}, "valid loss")}),
                                        ("validation error rates", "%", {**_lines({"CER": rows}, "valid CER"),
                                                                         **_lines({"WER": rows}, "valid WER")})],
                                       os.path.join(plot_dir, "stage2_asr.png"), "stage 2: ASR pretraining"))
    for variant_dir in sorted(glob.glob(os.path.join(exp_dir, "adapt", "*", ""))):
        variant = os.path.basename(os.path.normpath(variant_dir))
        runs: dict[str, list[dict]] = {}
        for fold_dir in sorted(glob.glob(os.path.join(variant_dir, "*", ""))):
            rows, done = [], 0
            # las/ctc adaptation: stage1_*, stage2_*, ...; upstream_probe's CTC head: train/
            for log in sorted(glob.glob(os.path.join(fold_dir, "*", "train_log.txt"))):
                stage_rows = parse_train_log(log)
                rows += [{**r, "epoch": r["epoch"] + done} for r in stage_rows]  # the stages one after another
                done += len(stage_rows)
            if rows:
                runs[os.path.basename(os.path.normpath(fold_dir))] = rows
        if runs:
            paths.append(plots.plot_curves([("validation loss", "loss", _lines(runs, "valid loss")),
                                            ("validation CER", "%", _lines(runs, "valid CER"))],
                                           os.path.join(plot_dir, f"stage3_{variant}.png"),
                                           f"stage 3: {variant} adaptation (its stages one after another)"))
    return paths


def ser_figures(exp_dir: str, plot_dir: str) -> list[str]:
    """One figure per stage-5 variant: train and valid loss, validation UA and/or CCC (mean over attributes),
    per fold and run."""
    paths = []
    for variant_dir in sorted(glob.glob(os.path.join(exp_dir, "ser", "*", ""))):
        variant = os.path.basename(os.path.normpath(variant_dir))
        runs = {}
        for path in sorted(glob.glob(os.path.join(variant_dir, "*", "run*", "history.json"))):
            with open(path, encoding="utf-8") as f:
                rows = [r for r in json.load(f) if isinstance(r, dict) and "epoch" in r]  # the reference: no epochs
            if rows:
                run_dir = os.path.dirname(path)
                runs[f"{os.path.basename(os.path.dirname(run_dir))} {os.path.basename(run_dir)}"] = rows
        if runs:
            metrics = [(f"validation {m}", m, _lines(runs, f"valid_{m}")) for m in ("UA", "CCC")]
            paths.append(plots.plot_curves([("training loss", "loss", _lines(runs, "train_loss")),
                                            ("validation loss", "loss", _lines(runs, "valid_loss")),
                                            *[panel for panel in metrics if panel[2]]],
                                           os.path.join(plot_dir, f"stage5_{variant}.png"), f"stage 5: {variant}"))
    return paths


def curve_figures(exp_dir: str) -> list[str]:
    """Every training's curves into ``<exp>/plots/curves/``; returns the paths."""
    plot_dir = os.path.join(exp_dir, "plots", "curves")
    return asr_figures(exp_dir, plot_dir) + ser_figures(exp_dir, plot_dir)
