"""Stage 5: train every SER variant of conf/ser.yaml on every fold, ``n_runs`` times.

Each (variant, fold, run) writes ``<exp>/ser/<variant>/<fold>/run<k>/predictions.csv`` (utterance,
true and predicted label, class probabilities) and ``history.json``; a finished one is skipped on
rerun and an interrupted one resumes from its checkpoint. ``--nj N`` trains N jobs in parallel
processes (:mod:`ser_modules.utils.jobs`: one thread each on a CPU), shared over ``--ngpu`` GPUs with
``--device cuda``; ``--launcher slurm`` submits one Slurm job per training instead (submitit).
Per-variant metrics over folds x runs go to ``<exp>/ser/<variant>/metrics.json``. Then every saved
model is scored, without training, on each evaluation corpus of stage 1 (``--eval-corpus``):
``<exp>/cross/<corpus>/<variant>/<fold>/run<k>/predictions.csv``, cached per model and corpus.
"""

from __future__ import annotations

import os
import time

from ser_modules.data.eval_corpora import eval_manifest, listed_eval_corpora
from ser_modules.data.folds import load_folds
from ser_modules.ser.cross_corpus import eval_job, eval_jobs, eval_stores, log_eval_jobs, open_eval_inputs
from ser_modules.ser.jobs import (
    check_training_folds,
    log_trainings,
    open_stores,
    train_job,
    trainable_variants,
    training_jobs,
    variant_metrics,
)
from ser_modules.ser.variants import planned_pairs
from ser_modules.stages.common import stage_jobs, stage_parser, start_stage
from ser_modules.utils.fileio import ManifestError, read_json, read_manifest, run_main, write_json
from ser_modules.utils.jobs import run_jobs, submit_jobs


def ser_parser():
    parser = stage_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--launcher", default="pool", choices=["pool", "slurm", "submitit-local"],
                        help="pool: --nj worker processes here; slurm: one Slurm job per training (submitit); "
                             "submitit-local: the same jobs as local processes")
    parser.add_argument("--slurm-partition", default=None)
    parser.add_argument("--slurm-time", type=int, default=240, help="minutes per job")
    parser.add_argument("--slurm-gres", default=None, help="e.g. gpu:1")
    return parser


def main(argv=None) -> None:
    args, log, out, hp, _ = start_stage(ser_parser(), "stage5_ser", "ser", argv, "ser")
    emotion = os.path.join(args.data_dir, "emotion", args.protocol)
    manifest = read_manifest(os.path.join(emotion, "manifest.csv"), ("ID", "speaker", "emotion"))
    folds_path = os.path.join(emotion, f"folds_{args.folds}.json")
    folds = load_folds(folds_path)
    check_training_folds(manifest, folds, folds_path)
    stores = os.path.join(args.exp_dir, "dump", f"stores_{args.protocol}.json")
    if not os.path.isfile(stores):
        raise ManifestError(f"{stores}: no representation stores for protocol {args.protocol} (run stage 4)")
    classes = sorted(manifest["emotion"].unique())
    variants, skipped = trainable_variants(hp["variants"], args.exp_dir, manifest, read_json(stores)["asr"], folds, log,
                                           hp.get("attributes"))
    jobs = training_jobs(variants, len(folds), hp["n_runs"])
    state = {"stores": stores, "folds": folds, "manifest": manifest, "classes": classes, "hp": hp, "out": out,
             "device": args.device}
    os.makedirs(out, exist_ok=True)
    nj, devices = stage_jobs(args) if args.launcher == "pool" else (0, [])

    def launch(fn, jobs, state, setup, desc, name):
        """``--nj`` processes here, or one cluster job each (the submitting process writes the shared outputs)."""
        if args.launcher == "pool":
            return run_jobs(fn, jobs, nj, {**state, "devices": devices}, desc, setup=setup)
        return submit_jobs(fn, jobs, {**state, "device_request": args.device_request},
                           os.path.join(args.exp_dir, "logs", "stage5_jobs"), args.launcher, setup,
                           args.slurm_partition, args.slurm_time, args.slurm_gres, name)

    if args.launcher == "pool":
        log.info("stage 5: %d variants x %d folds x %d runs (or a variant's own n_runs) = %d trainings, classes %s, "
                 "%d job(s) in parallel on %s", len(variants), len(folds), hp["n_runs"], len(jobs), classes,
                 min(nj, len(jobs)), ", ".join(devices))
    else:
        log.info("stage 5: %d trainings as %s jobs (partition %s, %d min, gres %s), classes %s", len(jobs),
                 args.launcher, args.slurm_partition or "default", args.slurm_time, args.slurm_gres or "none", classes)
    results = launch(train_job, jobs, state, open_stores, "SER", "ser-stage5")
    started = time.time()
    log_trainings(results, len(jobs), log)  # the jobs run as their results are read
    summary = variant_metrics(out, variants, folds, hp["n_runs"], classes)
    write_json(os.path.join(out, "summary.json"), {"protocol": args.protocol, "folds": args.folds, "classes": classes,
                                                   "variants": summary, "skipped": skipped,
                                                   "minutes": round((time.time() - started) / 60, 2)})
    corpora = [c["name"] for c in listed_eval_corpora(args.data_dir)]
    if corpora:  # the saved models on every evaluation corpus: no training, cached per model and corpus
        jobs = eval_jobs(variants, corpora)
        state = {**state, "cross": os.path.join(args.exp_dir, "cross"), "eval_stores": eval_stores(args.exp_dir, corpora),
                 "eval_manifests": {n: eval_manifest(args.data_dir, n) for n in corpora}, "n_runs": hp["n_runs"]}
        log.info("stage 5: scoring %d saved models on evaluation corpora %s (%d jobs)",
                 sum(planned_pairs(variants, len(folds), hp["n_runs"]).values()) * len(corpora), ", ".join(corpora),
                 len(jobs))
        # as the trainings: the pool here, or cluster jobs (never on a GPU-less login node)
        results = launch(eval_job, jobs, state, open_eval_inputs, "cross-corpus", "ser-stage5-cross")
        log_eval_jobs(results, log)
    log.info("stage 5 finished in %.1f min", (time.time() - started) / 60)


if __name__ == "__main__":
    run_main(main, "stage5_ser")
