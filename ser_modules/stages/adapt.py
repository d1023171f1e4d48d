"""Stage 3: adapt the pretrained ASR model to the emotion corpus, per fold (conf/adapt.yaml).

For every variant of ``variants`` (``finetuned``: three-stage fine-tuning; ``structured``: SVD
factorised listener, then the same stages) and every fold, the model adapts on the fold's training
speakers and is exported to ``<exp>/adapt/<variant>/<fold>/model.pt``. WER/CER of the pretrained
and adapted models on the emotion corpus (each test utterance decoded by its own fold's model,
pooled over folds) go into ``<exp>/asr_results.csv``, after every adaptation stage when
``score_every_stage``. With no variants (the Lakomkin 2018 recipe keeps its ASR frozen) only the
pretrained model is scored. The (variant, fold) jobs run in ``--nj`` parallel processes; finished
work is skipped on rerun. Transcripts are optional: a corpus without them gets one line saying so
and neither WER nor adaptation; adaptation also needs transcribed utterances in every fold's
training, validation and test speakers, else it is skipped with the reason (``summary.json``), and
stages 4-5 leave out what reads adapted models.
"""

from __future__ import annotations

import os
import time

from ser_modules.asr.adaptation import (
    adapt_job,
    adaptation_rows,
    emotion_inputs,
    fold_splits,
    publish_rows,
    skip_stage,
    untranscribed_folds,
)
from ser_modules.data.corpus import language_mismatch
from ser_modules.stages.common import stage_jobs, start_stage
from ser_modules.utils.fileio import ManifestError, read_json, run_main, write_json, write_text
from ser_modules.utils.hparams import canonical_config
from ser_modules.utils.jobs import run_jobs


def main(argv=None) -> None:
    args, log, out, hp, resolved = start_stage(__doc__, "stage3_adapt", "adapt", argv, "adapt")
    hp.setdefault("eval_batch_size", hp["batch_size"])
    pretrained = os.path.join(args.exp_dir, "asr", "model.pt")
    if not os.path.isfile(pretrained):
        raise ManifestError(f"{pretrained}: no pretrained ASR model (run stage 2 first)")
    write_text(os.path.join(out, "hyperparams.yaml"), resolved)  # inference decodes adapted models with its keys
    turns, manifest, folds = emotion_inputs(args.data_dir, args.protocol, args.folds)
    prepared = read_json(os.path.join(args.data_dir, "prepare_summary.json"))
    corpus = prepared["emotion_corpus"]
    os.makedirs(out, exist_ok=True)
    started = time.time()

    # Every fold's adaptation data (and the test turns the pretrained model is scored on).
    splits, data = fold_splits(turns, manifest, folds, hp["adapt_on"], out)
    unscored = untranscribed_folds(splits, ("test",))
    if len(unscored) == len(folds):
        return skip_stage(out, f"the emotion corpus {corpus} has no transcripts", hp["variants"], log)
    if unscored:
        log.warning("folds %s have no transcribed test utterances: WER pooled over the other %d folds",
                    ", ".join(unscored), len(folds) - len(unscored))
    if language_mismatch(prepared):
        log.warning("%s", language_mismatch(prepared))
    variants, skipped = hp["variants"], None
    gaps = untranscribed_folds(splits)
    if variants and gaps:  # an adapted model of every fold, or none: stage 5 compares them over all folds
        skipped = f"folds {', '.join(gaps)} of {corpus} have no transcribed training, validation or test utterances"
        log.warning("stage 3: adaptation (%s) skipped: %s", ", ".join(variants), skipped)
        variants = []
    folds_scored = [f for f in folds if f.name not in unscored]
    pre_info = read_json(os.path.join(args.exp_dir, "asr", "model.json"))
    # Decoding keys and the experiment's location do not change what adaptation trains.
    training_config = canonical_config(resolved, args.exp_dir, drop=("decoders", "eval_batch_size",
                                                                      "score_every_stage", "num_workers",
                                                                      "curves_every_steps"))
    state = {"hp": hp, "data": data, "device": args.device, "out": out, "pretrained": pretrained,
             "pre_sha": pre_info["sha1"], "training_config": training_config,
             "asr_hparams": os.path.join(args.exp_dir, "asr", "model_hparams.yaml")}
    jobs = [("pretrained", f.name) for f in folds_scored] + [(v, f.name) for v in variants for f in folds]
    nj, state["devices"] = stage_jobs(args)
    log.info("stage 3: %d jobs (pretrained scoring and %s x %d folds), %d in parallel", len(jobs),
             variants or "no adaptation", len(folds), min(nj, len(jobs)))
    for variant, fold, seconds in run_jobs(adapt_job, jobs, nj, state, "stage 3"):
        log.info("%s %s done (%.1f s)", variant, fold, seconds)

    rows = adaptation_rows(hp, pre_info.get("model_name", "asr"), corpus, args.folds, out, folds_scored, folds, variants)
    publish_rows(args.exp_dir, rows, corpus, args.folds, width=32)
    write_json(os.path.join(out, "summary.json"), {"rows": rows, "minutes": round((time.time() - started) / 60, 2),
                                                   "adaptation_skipped": skipped, "unscored_folds": unscored})
    log.info("stage 3 finished in %.1f min", (time.time() - started) / 60)


if __name__ == "__main__":
    run_main(main, "stage3_adapt")
