"""Stage 5's trainings: which SER variants can train on an experiment, one job per (variant, fold,
run) with the function a worker runs for it (:func:`train_job`, through :func:`ser_modules.utils.jobs.run_jobs`
or :func:`ser_modules.utils.jobs.submit_jobs`), and the per-variant metrics over folds x runs."""

from __future__ import annotations

import os
import time

import pandas as pd

from ser_modules.asr.saved_models import adaptation_skip_reason, adapted_upstream_entry, upstream_entries
from ser_modules.data.folds import check_speaker_independence
from ser_modules.ser.inputs import SERInputs
from ser_modules.ser.dimensional import concordance_correlation, has_attributes
from ser_modules.ser.metrics import classification_metrics, predicted_attributes
from ser_modules.ser.probe import expand_variants
from ser_modules.ser.training import train_fold_run
from ser_modules.ser.variants import VariantSpec, variant_attributes, variant_runs
from ser_modules.utils.curves import curves_dir
from ser_modules.utils.fileio import ManifestError, write_json
from ser_modules.utils.jobs import worker_state

COST_RANK = {"progressive": 0, "baseline": 1, "iaan": 2, "weighted": 3, "rnn": 3, "mp": 4, "reference": 5}


def check_training_folds(manifest: pd.DataFrame, folds, path: str) -> None:
    """Refuse folds that share speakers, or that lack training or validation utterances (``path``: their file)."""
    check_speaker_independence(manifest, folds)
    empty = [f.name for f in folds if not f.train or not f.valid]
    if empty:
        raise ManifestError(f"{path}: no training or no validation "
                            f"utterances in fold(s) {', '.join(empty)} (too small a corpus for them: try other --folds "
                            "or --k)")


def skip_reason(spec: VariantSpec, has_context: bool, asr_stores: dict, folds, exp_dir: str,
                manifest: pd.DataFrame | None = None, attributes=None) -> str | None:
    """Why a variant cannot train here (IAAN without dialog context, attributes the corpus does not carry,
    no stage-4 store of its ASR model for some fold), or None."""
    if spec.type == "iaan" and not has_context:
        return "IAAN needs dialog context and this corpus has no dialog structure"
    if spec.finetuned:  # Whisper in 30 s windows: its blocks attended to padding frames stage 4 did not store
        entry = next((u for u in upstream_entries(exp_dir) if u["name"] == spec.asr), {})
        if entry.get("whisper_window") == "30s":
            return (f"fine-tuning the top blocks of {spec.asr} needs whisper_window: utterance (its layers were "
                    "stored from 30 s windows)")
    wanted = variant_attributes(spec, attributes)
    if wanted and manifest is not None and not has_attributes(manifest, wanted):
        return f"task {spec.task} needs {', '.join(wanted)} for every utterance and this corpus does not carry them"
    stored = set(asr_stores)
    missing = [f.name for f in folds if spec.asr and not {spec.asr, f"{spec.asr}/{f.name}"} & stored]
    if not missing:
        return None
    where = "" if len(missing) == len(folds) else f" for folds {', '.join(missing)}"
    why = adaptation_skip_reason(exp_dir) if spec.asr != "pretrained" else None
    return f"stage 4 stored no layers of ASR model {spec.asr!r}{where}" + (f" (no adaptation: {why})" if why else "")


def trainable_variants(variants: list[dict], exp_dir: str, manifest: pd.DataFrame, asr_stores: dict, folds,
                       log, attributes=None) -> tuple[list[dict], dict[str, str]]:
    """``(variants that can train, {skipped variant: reason})`` of conf/ser.yaml's ``variants``, upstream
    templates expanded (one variant per layer); each skipped one is logged."""
    has_context = "prev_same" in manifest.columns and (manifest["prev_same"] != "").any()
    trainable, skipped = [], {}
    for v in expand_variants(variants, upstream_entries(exp_dir), adapted_upstream_entry(exp_dir)):
        spec = VariantSpec.from_dict(v)
        reason = skip_reason(spec, has_context, asr_stores, folds, exp_dir, manifest, attributes)
        if reason:
            log.warning("variant %s skipped: %s", spec.name, reason)
            skipped[spec.name] = reason
            continue
        trainable.append(v)
    if not trainable:
        log.warning("stage 5: no variant of conf/ser.yaml can train on this experiment")
    return trainable, skipped


def training_jobs(variants: list[dict], n_folds: int, n_runs: int) -> list[tuple]:
    """The ``(variant, fold index, run)`` jobs (``n_runs`` per fold, or a variant's own, :func:`variant_runs`),
    longest first: the last ones to finish are then the short ones, and the workers end together."""
    ordered = sorted(variants, key=lambda v: COST_RANK.get(v["type"], len(COST_RANK)))
    return [(v, f, r) for v in ordered for f in range(n_folds) for r in range(variant_runs(v, n_runs))]


def open_stores(state: dict) -> None:
    """Worker set-up: open the stage-4 stores once per worker process."""
    state["inputs"] = SERInputs(state["stores"])


def train_job(job: tuple) -> tuple:
    """Train one (variant, fold, run); returns ``(variant, fold, run, test utterances, seconds, finished before)``."""
    spec_dict, fold_index, run = job
    w = worker_state()
    device = w["device"]
    spec = VariantSpec.from_dict(spec_dict)
    fold = w["folds"][fold_index]
    out = os.path.join(w["out"], spec.name, fold.name, f"run{run}")
    started = time.time()
    board = curves_dir(os.path.dirname(w["out"]), "stage5", spec.name, fold.name, f"run{run}")
    frame = train_fold_run(spec, fold, run, w["manifest"], w["classes"], w["inputs"], w["hp"], out, device, board)
    return spec.name, fold.name, run, len(frame), time.time() - started, frame.attrs.get("finished_before", False)


def log_trainings(results, n_jobs: int, log) -> None:
    """Log each training as its result comes (``results``: what :func:`train_job` returns), then how
    many were finished before."""
    finished_before = 0
    for name, fold, run, n, secs, before in results:
        log.info("%s %s run%d: %d test utterances (%s)", name, fold, run, n, "finished before" if before else
                 f"{secs:.1f} s")
        finished_before += before
    if finished_before:
        log.info("stage 5: %d of %d trainings already finished (same inputs), not repeated", finished_before, n_jobs)


def run_metrics(frame: pd.DataFrame, classes: list[str], spec: VariantSpec) -> dict[str, float]:
    """UA, WA, F1 (classes) and ``CCC_<attribute>`` (attributes) of one run's predictions."""
    scores = classification_metrics(frame["true"], frame["predicted"], classes) if spec.predicts_classes else {}
    for attribute in predicted_attributes(frame):
        scores[f"CCC_{attribute}"] = concordance_correlation(frame[f"true_{attribute}"], frame[f"pred_{attribute}"])
    return scores


def variant_metrics(out: str, variants: list[dict], folds, n_runs: int, classes: list[str]) -> dict[str, dict]:
    """Write each variant's ``metrics.json`` (per fold and run, and the mean) and print its mean;
    returns ``{variant: mean UA, WA, F1 and/or CCC per attribute}``."""
    summary, config_runs = {}, n_runs
    for v in variants:
        spec = VariantSpec.from_dict(v)
        n_runs = variant_runs(v, config_runs)
        frames = [pd.read_csv(os.path.join(out, spec.name, f.name, f"run{r}", "predictions.csv"), keep_default_na=False)
                  for f in folds for r in range(n_runs)]
        per_run = [run_metrics(fr, classes, spec) for fr in frames]
        mean = {k: float(pd.Series([m[k] for m in per_run]).mean()) for k in per_run[0]}
        write_json(os.path.join(out, spec.name, "metrics.json"),
                   {"variant": v, "classes": classes, "folds": len(folds), "runs": n_runs, "mean": mean,
                    "per_fold_run": [{"fold": f.name, "run": r, **m} for (f, r), m in
                                     zip([(f, r) for f in folds for r in range(n_runs)], per_run)]})
        summary[spec.name] = mean
        print(f"stage 5 {spec.name:<28} " + "  ".join(f"{k} {x:.3f}" for k, x in mean.items())
              + f" ({len(folds)} folds x {n_runs} runs)")
    return summary
