"""Number and table formatting shared by the reports: ``mean ± std``, p-values, Markdown tables,
and the configuration and data sections of ``RESULTS.md``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


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
