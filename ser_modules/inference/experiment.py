"""What a trained experiment folder says about itself: its best SER variant and the decoding keys its
transcripts were scored with.

Read by the recognizer (:mod:`ser_modules.inference.recognizer`) and by export
(:mod:`ser_modules.inference.export`), and kept below both so that export need not import the recognizer.
"""

from __future__ import annotations

import os

import pandas as pd

from ser_modules.utils.fileio import read_json
from ser_modules.utils.hparams import stage_values

# Decoding keys when the experiment's configurations have none (what inference used before reading them).
DEFAULT_BEAM_SIZE, DEFAULT_CTC_WEIGHT = 4, 0.5


def decoding_keys(exp_dir: str, asr_path: str | None) -> dict[str, tuple]:
    """``{"beam_size": (value, source), "decode_ctc_weight": (value, source)}``: the keys the experiment
    scored the transcript model ``asr_path`` with: for an adapted model (under ``adapt/``) stage 3's
    configuration ``adapt/hyperparams.yaml`` first, then stage 2's ``asr/hyperparams.yaml``, then the
    defaults (4, 0.5). ``source`` is the file, relative to ``exp_dir``, or ``default``."""
    files = [os.path.join(exp_dir, "asr", "hyperparams.yaml")]
    adapt = os.path.join(os.path.abspath(exp_dir), "adapt") + os.sep
    if asr_path and os.path.abspath(asr_path).startswith(adapt):
        files.insert(0, os.path.join(exp_dir, "adapt", "hyperparams.yaml"))
    values = [(path, stage_values(path)) for path in files if os.path.isfile(path)]
    keys = {}
    for key, default in (("beam_size", DEFAULT_BEAM_SIZE), ("decode_ctc_weight", DEFAULT_CTC_WEIGHT)):
        found = [(config[key], path) for path, config in values if isinstance(config.get(key), (int, float))]
        value, path = found[0] if found else (default, None)
        keys[key] = (value, os.path.relpath(path, exp_dir) if path else "default")
    return keys


def best_variant(exp_dir: str) -> str:
    """The variant with the highest mean UA in ``results.csv`` (stage 6), else in stage 5's summary."""
    path = os.path.join(exp_dir, "results.csv")
    if os.path.isfile(path):
        results = pd.read_csv(path)
        if len(results):
            return str(results.sort_values("UA_mean", ascending=False)["model"].iloc[0])  # (attribute-only rows: NaN, last)
    summary = read_json(os.path.join(exp_dir, "ser", "summary.json"))
    return max((v for v in summary["variants"] if "UA" in summary["variants"][v]), key=lambda v: summary["variants"][v]["UA"])
