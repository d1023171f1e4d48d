"""Stage 3 of upstream_probe: optional CTC adaptation of an upstream (conf/adapt.yaml ``ctc_head``).

Off by default (the SUPERB protocol keeps the upstream frozen): the stage says so in one line.
With ``ctc_head: True`` (the upstream analogue of Yeh et al.'s ASR fine-tuning), per fold and on
that fold's training speakers' transcripts only (test speakers never adapt), a linear CTC head
(character vocabulary, blank first) goes on the last layer of the upstream ``upstream`` (``first``:
the first described), the convolutional feature encoder stays frozen, and the transformer and head
train with CTC (:class:`ser_modules.asr_training.CTCBrain` through
:func:`ser_modules.adaptation.run_stage`: the epoch of lowest validation CER is kept, or the start
when none improves on it). Greedy-CTC WER/CER on each fold's test speakers, pooled over folds, go
into ``<exp>/asr_results.csv`` (stage ``adapted``); the model is exported to
``<exp>/adapt/adapted/<fold>/model.pt``, which stage 4 dumps as the ``adapted`` stores and stage 5
variants read with ``asr: adapted``. Finished folds are skipped on rerun (written aside, renamed into
place). A corpus without transcripts gets one line saying adaptation is skipped.
"""

from __future__ import annotations

import os
import time

from ser_modules.adaptation import (
    adaptation_splits, emotion_inputs, run_stage, score_pooled, score_test, scored, skip_stage, untranscribed_folds,
    write_splits,
)
from ser_modules.asr_models import ADAPTED, export_model, upstream_entries
from ser_modules.asr_training import CTCBrain, run_options, seed_all, update_asr_results
from ser_modules.fileio import ManifestError, StagedOutputs, file_digest, read_json, run_main, write_json
from ser_modules.hparams import canonical_config, load_stage_hparams
from ser_modules.jobs import run_jobs, worker_state
from ser_modules.stages.common import parse_stage_args, stage_jobs, stage_logging, stage_parser


def chosen_upstream(upstreams: list[dict], wanted: str, where: str) -> dict:
    if not upstreams:
        raise ManifestError(f"{where}: no described upstream to adapt (run stage 2 with --upstream PATH)")
    if wanted == "first":
        return upstreams[0]
    named = [u for u in upstreams if u["name"] == wanted]
    if not named:
        raise ManifestError(f"{where}: upstream {wanted!r} was not described; stage 2 has "
                            f"{', '.join(u['name'] for u in upstreams)}")
    return named[0]


def ctc_job(fold: str) -> tuple[str, float]:
    """Adapt the upstream on one fold, score it on the fold's test speakers and export it."""
    from ser_modules.upstream import CTCUpstream, load_upstream

    w = worker_state()
    hp, data, methods, device, up = w["hp"], w["data"][fold], w["hp"]["decoders"], w["device"], w["upstream"]
    started = time.time()
    staged = StagedOutputs(os.path.join(w["out"], ADAPTED, fold),
                           {"upstream": up["sha1"], "config": w["training_config"], "data": file_digest(*data.values())})
    if staged.done:
        return fold, 0.0
    fold_dir = staged.begin()  # adapted aside, renamed into place when exported
    vocab = hp["vocab"]
    upstream, features = load_upstream(up["source"], device, up.get("arch"))
    seed_all(hp["seed"])  # the head's initial weights
    model = CTCUpstream(upstream, len(vocab)).to(device)
    fold_hp = {**hp, "features": features, "stages": ["all"]}
    record = run_stage(model, fold_hp, "all", 1.0, data, os.path.join(fold_dir, "train"), run_options(device),
                       CTCBrain)
    if not scored(fold_dir, methods):
        score_test(model, features, vocab, data["test"], fold_dir, methods, hp, device)
    export_model(model, fold_dir, None, extra={"variant": ADAPTED, "fold": fold, "upstream": up,
                                               "ctc_head": {"vocab": vocab.symbols, "valid": record}})
    staged.publish()
    return fold, time.time() - started


def main(argv=None) -> None:
    args = parse_stage_args(stage_parser(__doc__.split("\n\n")[0]), argv)
    log = stage_logging(args.exp_dir, "stage3_adapt")
    out = os.path.join(args.exp_dir, "adapt")
    hp, resolved = load_stage_hparams(args.conf_dir, "adapt", args.size, {"output_folder": out, "seed": args.seed},
                                      args.overrides)
    if not hp["ctc_head"]:
        log.info("stage 3: no adaptation (ctc_head: False): the upstreams stay frozen, as in SUPERB")
        return
    hp.setdefault("eval_batch_size", hp["batch_size"])
    up = chosen_upstream(upstream_entries(args.exp_dir), hp["upstream"], os.path.join(args.exp_dir, "asr"))
    if up["kind"] not in ("hf", "openai-whisper"):
        raise ManifestError(f"{up['source']}: adapt.ctc_head=True needs a transformers upstream (a folder or an "
                            f"openai-whisper checkpoint); {up['name']} is a {up['kind']} upstream (choose one with "
                            "adapt.upstream=NAME)")
    turns, manifest, folds = emotion_inputs(args.data_dir, args.protocol, args.folds)
    corpus = read_json(os.path.join(args.data_dir, "prepare_summary.json"))["emotion_corpus"]
    os.makedirs(out, exist_ok=True)
    started = time.time()
    splits = {fold.name: adaptation_splits(turns, manifest, fold, hp["adapt_on"]) for fold in folds}
    data = {name: write_splits(frames, os.path.join(out, "data", name)) for name, frames in splits.items()}
    gaps = untranscribed_folds(splits)
    if len(untranscribed_folds(splits, ("test",))) == len(folds):
        return skip_stage(out, f"the emotion corpus {corpus} has no transcripts", [ADAPTED], log)
    if gaps:  # an adapted model of every fold, or none: stage 5 compares them over all folds
        return skip_stage(out, f"folds {', '.join(gaps)} of {corpus} have no transcribed training, validation or "
                          "test utterances", [ADAPTED], log)
    # Decoding keys and the experiment's location do not change what adaptation trains.
    training_config = canonical_config(resolved, args.exp_dir, drop=("decoders", "eval_batch_size", "num_workers"))
    state = {"hp": hp, "data": data, "device": args.device, "out": out, "upstream": up,
             "training_config": training_config}
    nj, state["devices"] = stage_jobs(args)
    log.info("stage 3: CTC adaptation of %s x %d folds, %d in parallel", up["name"], len(folds), min(nj, len(folds)))
    for fold, seconds in run_jobs(ctc_job, [f.name for f in folds], nj, state, "stage 3"):
        log.info("%s %s done (%.1f s)", ADAPTED, fold, seconds)

    dirs = {f.name: os.path.join(out, ADAPTED, f.name) for f in folds}
    rows = [{"model": up["name"], "stage": ADAPTED, "corpus": corpus, "split": f"test:{args.folds}", "decoder": m,
             **score_pooled(dirs, m), "checkpoint": f"adapt/{ADAPTED}/<fold>/model.pt"} for m in hp["decoders"]]
    update_asr_results(os.path.join(args.exp_dir, "asr_results.csv"), rows,
                       scope={"corpus": corpus, "split": f"test:{args.folds}"})
    for r in rows:
        print(f"stage 3 {r['model']} {r['stage']} {r['corpus']} {r['split']} ({r['decoder']}): "
              f"WER {r['WER']:.2f}%  CER {r['CER']:.2f}%")
    write_json(os.path.join(out, "summary.json"), {
        "rows": rows, "minutes": round((time.time() - started) / 60, 2), "adaptation_skipped": None,
        "adapted_upstream": {"upstream": up["name"], "layers": up["layers"], "dims": up["dims"]}})
    log.info("stage 3 finished in %.1f min", (time.time() - started) / 60)


if __name__ == "__main__":
    run_main(main, "stage3_adapt")
