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

from ser_modules.adaptation import (
    adaptation_splits, emotion_inputs, run_stage, score_pooled, score_test, scored, skip_stage, untranscribed_folds,
    write_splits,
)
from ser_modules.asr_models import export_model, load_asr_model
from ser_modules.asr_training import run_options, update_asr_results
from ser_modules.corpus import language_mismatch
from ser_modules.fileio import (
    ManifestError, StagedOutputs, file_digest, read_json, run_main, write_json, write_text,
)
from ser_modules.hparams import canonical_config, load_stage_hparams
from ser_modules.jobs import run_jobs, worker_state
from ser_modules.models.lowrank import factorize_listener
from ser_modules.stages.common import parse_stage_args, stage_jobs, stage_logging, stage_parser


def adapt_job(job: tuple) -> tuple[str, str, float]:
    """One job: score the pretrained model on a fold's test speakers, or adapt one variant on one fold
    (three stages, scored after each when ``score_every_stage``) and export it."""
    variant, fold = job
    w = worker_state()
    hp, data, methods, device = w["hp"], w["data"][fold], w["hp"]["decoders"], w["device"]
    started = time.time()
    if variant == "pretrained":
        staged = StagedOutputs(os.path.join(w["out"], "pretrained", fold),
                               {"model": w["pre_sha"], "test": file_digest(data["test"]), "decoders": methods})
        if not staged.done:  # scored aside, then renamed into place
            model, features, vocab, _ = load_asr_model(w["pretrained"], device)
            score_test(model, features, vocab, data["test"], staged.begin(), methods, hp, device)
            staged.publish()
        return variant, fold, time.time() - started
    rank = hp["structured_rank"] if variant == "structured" else None
    staged = StagedOutputs(os.path.join(w["out"], variant, fold),
                           {"model": w["pre_sha"], "config": w["training_config"], "variant": variant, "rank": rank,
                            "data": file_digest(*data.values())})
    fold_dir = staged.folder if staged.done else staged.begin()  # adapted aside, renamed into place when exported
    final = os.path.join(fold_dir, "model.pt")
    model, features, vocab, _ = load_asr_model(w["pretrained"], device)
    if rank:
        factorize_listener(model, rank)
    if hasattr(model, "set_dropout"):
        model.set_dropout(hp["dropout"])
    fold_hp = {**hp, "vocab": vocab, "features": features}
    last, valid_error = len(hp["stages"]) - 1, None
    for i, (part, tf) in enumerate(zip(hp["stages"], hp["teacher_forcing"])):
        stage_dir = os.path.join(fold_dir, f"stage{i + 1}_{part}")
        if os.path.isfile(final) and i < last and not hp["score_every_stage"]:
            continue
        # Each stage starts where the previous one ended: its validation error is the next one's start.
        valid_error = run_stage(model, fold_hp, part, tf, data, stage_dir, run_options(device), hp["brain_class"],
                                valid_error)["valid"]
        if (hp["score_every_stage"] or i == last) and not scored(stage_dir, methods):
            score_test(model, features, vocab, data["test"], stage_dir, methods, hp, device)
    if not os.path.isfile(final):
        if hasattr(model, "set_dropout"):
            model.set_dropout(0.0)
        export_model(model, fold_dir, w["asr_hparams"], rank=rank,
                     extra={"variant": variant, "fold": fold, "stages": hp["stages"]})
    if fold_dir != staged.folder:
        staged.publish()
    return variant, fold, time.time() - started


def main(argv=None) -> None:
    args = parse_stage_args(stage_parser(__doc__.split("\n\n")[0]), argv)
    log = stage_logging(args.exp_dir, "stage3_adapt")
    out = os.path.join(args.exp_dir, "adapt")
    hp, resolved = load_stage_hparams(args.conf_dir, "adapt", args.size, {"output_folder": out, "seed": args.seed},
                                      args.overrides)
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
    splits = {fold.name: adaptation_splits(turns, manifest, fold, hp["adapt_on"]) for fold in folds}
    data = {name: write_splits(frames, os.path.join(out, "data", name)) for name, frames in splits.items()}
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
                                                                      "score_every_stage", "num_workers"))
    state = {"hp": hp, "data": data, "device": args.device, "out": out, "pretrained": pretrained,
             "pre_sha": pre_info["sha1"], "training_config": training_config,
             "asr_hparams": os.path.join(args.exp_dir, "asr", "model_hparams.yaml")}
    jobs = [("pretrained", f.name) for f in folds_scored] + [(v, f.name) for v in variants for f in folds]
    nj, state["devices"] = stage_jobs(args)
    log.info("stage 3: %d jobs (pretrained scoring and %s x %d folds), %d in parallel", len(jobs),
             variants or "no adaptation", len(folds), min(nj, len(jobs)))
    for variant, fold, seconds in run_jobs(adapt_job, jobs, nj, state, "stage 3"):
        log.info("%s %s done (%.1f s)", variant, fold, seconds)

    methods, model_name = hp["decoders"], pre_info.get("model_name", "asr")
    rows = [{"model": model_name, "stage": "pretrained", "corpus": corpus, "split": f"test:{args.folds}",
             "decoder": m, **score_pooled({f.name: os.path.join(out, "pretrained", f.name) for f in folds_scored}, m),
             "checkpoint": "asr/model.pt"} for m in methods]
    for variant in variants:
        for i, part in enumerate(hp["stages"]):
            last = i == len(hp["stages"]) - 1
            if not (hp["score_every_stage"] or last):
                continue
            label = variant if last else f"{variant}:{'+'.join(hp['stages'][: i + 1])}"
            dirs = {f.name: os.path.join(out, variant, f.name, f"stage{i + 1}_{part}") for f in folds}
            rows += [{"model": model_name, "stage": label, "corpus": corpus, "split": f"test:{args.folds}",
                      "decoder": m, **score_pooled(dirs, m), "checkpoint": f"adapt/{variant}/<fold>/model.pt"}
                     for m in methods]
    update_asr_results(os.path.join(args.exp_dir, "asr_results.csv"), rows,
                       scope={"corpus": corpus, "split": f"test:{args.folds}"})
    for r in rows:
        print(f"stage 3 {r['model']} {r['stage']:<32} {r['corpus']} {r['split']} ({r['decoder']}): "
              f"WER {r['WER']:.2f}%  CER {r['CER']:.2f}%")
    write_json(os.path.join(out, "summary.json"), {"rows": rows, "minutes": round((time.time() - started) / 60, 2),
                                                   "adaptation_skipped": skipped, "unscored_folds": unscored})
    log.info("stage 3 finished in %.1f min", (time.time() - started) / 60)


if __name__ == "__main__":
    run_main(main, "stage3_adapt")
