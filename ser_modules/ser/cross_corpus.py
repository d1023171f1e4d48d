"""Stage 5 of cross-corpus evaluation: every saved (variant, fold, run) model scored on every
evaluation corpus, without training.

One job per (variant, corpus) (:func:`eval_jobs`, :func:`eval_job`) writes
``<exp>/cross/<name>/<variant>/<fold>/run<k>/predictions.csv`` through
:func:`ser_modules.ser.training.predict_saved_run`, cached by the model's digest and the stores.
"""

from __future__ import annotations

import os

from ser_modules.data.eval_corpora import eval_protocol
from ser_modules.utils.fileio import ManifestError

# ----------------------------------------------------------------------------------------------
# Stage 5: every saved model on every evaluation corpus, no training


def eval_stores(exp_dir: str, names: list[str]) -> dict[str, str]:
    """``{name: dump/stores_eval-<name>.json}``; a corpus stage 4 did not dump is an error naming it."""
    paths = {}
    for name in names:
        path = os.path.join(exp_dir, "dump", f"stores_{eval_protocol(name)}.json")
        if not os.path.isfile(path):
            raise ManifestError(f"{path}: evaluation corpus {name} has no representation stores (run stage 4)")
        paths[name] = path
    return paths


def eval_jobs(variants: list[dict], names: list[str]) -> list[tuple]:
    """One ``(variant, corpus)`` job per variant and evaluation corpus: it scores the variant's every
    (fold, run) model (seconds each: one job, or one cluster job, per variant and corpus)."""
    return [(v, n) for n in names for v in variants]


def open_eval_inputs(state: dict) -> None:
    """Worker set-up: open each evaluation corpus's stores once per process."""
    from ser_modules.ser.inputs import SERInputs

    state["eval_inputs"] = {n: SERInputs(path) for n, path in state["eval_stores"].items()}


def eval_job(job: tuple) -> tuple:
    """Score every saved (fold, run) model of one variant on one evaluation corpus; returns ``(corpus,
    variant, models scored, of which finished before)``."""
    from ser_modules.ser.training import predict_saved_run
    from ser_modules.ser.variants import VariantSpec, variant_runs
    from ser_modules.utils.jobs import worker_state

    from ser_modules.ser.dimensional import has_attributes
    from ser_modules.ser.variants import variant_attributes

    spec_dict, name = job
    w = worker_state()
    spec = VariantSpec.from_dict(spec_dict)
    before, n_runs = 0, variant_runs(spec, w["n_runs"])
    if not spec.predicts_classes and not has_attributes(
            w["eval_manifests"][name], variant_attributes(spec, (w.get("hp") or {}).get("attributes"))):
        return name, spec.name, 0, 0  # attributes only, and the corpus carries none of them: nothing to score
    for fold in w["folds"]:
        for run in range(n_runs):
            run_dir = os.path.join(w["out"], spec.name, fold.name, f"run{run}")
            out = os.path.join(w["cross"], name, spec.name, fold.name, f"run{run}")
            frame = predict_saved_run(spec, fold.name, run, run_dir, w["eval_manifests"][name], w["classes"],
                                      w["eval_inputs"][name], out, w["device"])
            before += bool(frame.attrs.get("finished_before", False))
    return name, spec.name, len(w["folds"]) * n_runs, before


def log_eval_jobs(results, log) -> None:
    """Consume :func:`eval_job` results (the jobs run as they are read), logging how many models were
    scored before."""
    done = list(results)
    models, before = sum(r[2] for r in done), sum(r[3] for r in done)
    log.info("stage 5: %d model x corpus scorings on evaluation corpora (%d finished before, not repeated)", models,
             before)
