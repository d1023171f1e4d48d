"""Stage 5: train every SER variant of conf/ser.yaml on every fold, ``n_runs`` times.

Each (variant, fold, run) writes ``<exp>/ser/<variant>/<fold>/run<k>/predictions.csv`` (utterance,
true and predicted label, class probabilities) and ``history.json``; a finished one is skipped on
rerun and an interrupted one resumes from its checkpoint. ``--nj N`` trains N jobs in parallel
processes (:mod:`ser_modules.jobs`: one thread each on a CPU), shared over ``--ngpu`` GPUs with
``--device cuda``; ``--launcher slurm`` submits one Slurm job per training instead (submitit).
Per-variant metrics over folds x runs go to ``<exp>/ser/<variant>/metrics.json``.
"""

from __future__ import annotations

import os
import time

import pandas as pd

from ser_modules.asr_models import adapted_upstream_entry, adaptation_skip_reason, upstream_entries
from ser_modules.fileio import ManifestError, read_json, read_manifest, run_main, write_json
from ser_modules.folds import check_speaker_independence, load_folds
from ser_modules.hparams import load_stage_hparams
from ser_modules.jobs import run_jobs, submit_jobs, worker_state
from ser_modules.probe import expand_variants
from ser_modules.scoring import classification_metrics
from ser_modules.ser_training import SERInputs, VariantSpec, train_fold_run
from ser_modules.stages.common import parse_stage_args, stage_jobs, stage_logging, stage_parser


COST_RANK = {"progressive": 0, "baseline": 1, "iaan": 2, "weighted": 3, "rnn": 3, "mp": 4, "reference": 5}


def skip_reason(spec: VariantSpec, has_context: bool, asr_stores: dict, folds, exp_dir: str) -> str | None:
    """Why a variant cannot train here (IAAN without dialog context, no stage-4 store of its ASR
    model for some fold), or None."""
    if spec.type == "iaan" and not has_context:
        return "IAAN needs dialog context and this corpus has no dialog structure"
    stored = set(asr_stores)
    missing = [f.name for f in folds if spec.asr and not {spec.asr, f"{spec.asr}/{f.name}"} & stored]
    if not missing:
        return None
    where = "" if len(missing) == len(folds) else f" for folds {', '.join(missing)}"
    why = adaptation_skip_reason(exp_dir) if spec.asr != "pretrained" else None
    return f"stage 4 stored no layers of ASR model {spec.asr!r}{where}" + (f" (no adaptation: {why})" if why else "")


def _open_stores(state: dict) -> None:
    state["inputs"] = SERInputs(state["stores"])


def _run_job(job: tuple) -> tuple:
    spec_dict, fold_index, run = job
    w = worker_state()
    device = w["device"]
    spec = VariantSpec.from_dict(spec_dict)
    fold = w["folds"][fold_index]
    out = os.path.join(w["out"], spec.name, fold.name, f"run{run}")
    started = time.time()
    frame = train_fold_run(spec, fold, run, w["manifest"], w["classes"], w["inputs"], w["hp"], out, device)
    return spec.name, fold.name, run, len(frame), time.time() - started, frame.attrs.get("finished_before", False)


def main(argv=None) -> None:
    parser = stage_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--launcher", default="pool", choices=["pool", "slurm", "submitit-local"],
                        help="pool: --nj worker processes here; slurm: one Slurm job per training (submitit); "
                             "submitit-local: the same jobs as local processes")
    parser.add_argument("--slurm-partition", default=None)
    parser.add_argument("--slurm-time", type=int, default=240, help="minutes per job")
    parser.add_argument("--slurm-gres", default=None, help="e.g. gpu:1")
    args = parse_stage_args(parser, argv)
    log = stage_logging(args.exp_dir, "stage5_ser")
    out = os.path.join(args.exp_dir, "ser")
    hp, resolved = load_stage_hparams(args.conf_dir, "ser", args.size, {"output_folder": out, "seed": args.seed},
                                      args.overrides)
    emotion = os.path.join(args.data_dir, "emotion", args.protocol)
    manifest = read_manifest(os.path.join(emotion, "manifest.csv"), ("ID", "speaker", "emotion"))
    folds = load_folds(os.path.join(emotion, f"folds_{args.folds}.json"))
    check_speaker_independence(manifest, folds)
    empty = [f.name for f in folds if not f.train or not f.valid]
    if empty:
        raise ManifestError(f"{os.path.join(emotion, f'folds_{args.folds}.json')}: no training or no validation "
                            f"utterances in fold(s) {', '.join(empty)} (too small a corpus for them: try other --folds "
                            "or --k)")
    stores = os.path.join(args.exp_dir, "dump", f"stores_{args.protocol}.json")
    if not os.path.isfile(stores):
        raise ManifestError(f"{stores}: no representation stores for protocol {args.protocol} (run stage 4)")
    classes = sorted(manifest["emotion"].unique())
    has_context = "prev_same" in manifest.columns and (manifest["prev_same"] != "").any()
    variants, skipped = [], {}
    adapted = adapted_upstream_entry(args.exp_dir)
    for v in expand_variants(hp["variants"], upstream_entries(args.exp_dir), adapted):  # upstream templates: per layer
        spec = VariantSpec.from_dict(v)
        reason = skip_reason(spec, has_context, read_json(stores)["asr"], folds, args.exp_dir)
        if reason:
            log.warning("variant %s skipped: %s", spec.name, reason)
            skipped[spec.name] = reason
            continue
        variants.append(v)
    if not variants:
        log.warning("stage 5: no variant of conf/ser.yaml can train on this experiment")
    # Longest jobs first: the last ones to finish are then the short ones, and the workers end together.
    ordered = sorted(variants, key=lambda v: COST_RANK.get(v["type"], len(COST_RANK)))
    jobs = [(v, f, r) for v in ordered for f in range(len(folds)) for r in range(hp["n_runs"])]
    state = {"stores": stores, "folds": folds, "manifest": manifest, "classes": classes, "hp": hp, "out": out,
             "device": args.device}
    os.makedirs(out, exist_ok=True)
    if args.launcher == "pool":
        nj, devices = stage_jobs(args)
        nj, state["devices"] = min(nj, len(jobs)), devices
        log.info("stage 5: %d variants x %d folds x %d runs = %d trainings, classes %s, %d job(s) in parallel on %s",
                 len(variants), len(folds), hp["n_runs"], len(jobs), classes, nj, ", ".join(devices))
        results = run_jobs(_run_job, jobs, nj, state, "SER", setup=_open_stores)
    else:  # one cluster job per training; the submitting process writes the shared outputs
        log.info("stage 5: %d trainings as %s jobs (partition %s, %d min, gres %s), classes %s", len(jobs),
                 args.launcher, args.slurm_partition or "default", args.slurm_time, args.slurm_gres or "none", classes)
        results = submit_jobs(_run_job, jobs, {**state, "device_request": args.device_request},
                              os.path.join(args.exp_dir, "logs", "stage5_jobs"), args.launcher, _open_stores,
                              args.slurm_partition, args.slurm_time, args.slurm_gres, "ser-stage5")
    started, finished_before = time.time(), 0
    for name, fold, run, n, secs, before in results:
        log.info("%s %s run%d: %d test utterances (%s)", name, fold, run, n, "finished before" if before else
                 f"{secs:.1f} s")
        finished_before += before
    if finished_before:
        log.info("stage 5: %d of %d trainings already finished (same inputs), not repeated", finished_before, len(jobs))

    summary = {}
    for v in variants:
        spec = VariantSpec.from_dict(v)
        frames = [pd.read_csv(os.path.join(out, spec.name, f.name, f"run{r}", "predictions.csv"), keep_default_na=False)
                  for f in folds for r in range(hp["n_runs"])]
        per_run = [classification_metrics(fr["true"], fr["predicted"], classes) for fr in frames]
        mean = {k: float(pd.Series([m[k] for m in per_run]).mean()) for k in ("UA", "WA", "F1")}
        write_json(os.path.join(out, spec.name, "metrics.json"),
                   {"variant": v, "classes": classes, "folds": len(folds), "runs": hp["n_runs"], "mean": mean,
                    "per_fold_run": [{"fold": f.name, "run": r, **m} for (f, r), m in
                                     zip([(f, r) for f in folds for r in range(hp["n_runs"])], per_run)]})
        summary[spec.name] = mean
        print(f"stage 5 {spec.name:<28} UA {mean['UA']:.3f}  WA {mean['WA']:.3f}  F1 {mean['F1']:.3f} "
              f"({len(folds)} folds x {hp['n_runs']} runs)")
    write_json(os.path.join(out, "summary.json"), {"protocol": args.protocol, "folds": args.folds, "classes": classes,
                                                   "variants": summary, "skipped": skipped,
                                                   "minutes": round((time.time() - started) / 60, 2)})
    log.info("stage 5 finished in %.1f min", (time.time() - started) / 60)


if __name__ == "__main__":
    run_main(main, "stage5_ser")
