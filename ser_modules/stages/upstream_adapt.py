"""Stage 3 of upstream_probe: optional CTC adaptation of an upstream (conf/adapt.yaml ``ctc_head``).

Off by default (the SUPERB protocol keeps the upstream frozen): the stage says so in one line.
With ``ctc_head: True`` (the upstream analogue of Yeh et al.'s ASR fine-tuning), per fold and on
that fold's training speakers' transcripts only (test speakers never adapt), a linear CTC head
(character vocabulary, blank first) goes on the last layer of the upstream ``upstream`` (``first``:
the first described), the convolutional feature encoder stays frozen, and the transformer and head
train with CTC (:class:`ser_modules.asr.brains.CTCBrain` through
:func:`ser_modules.asr.adaptation.run_stage`: the epoch of lowest validation CER is kept, or the start
when none improves on it). Greedy-CTC WER/CER on each fold's test speakers, pooled over folds, go
into ``<exp>/asr_results.csv`` (stage ``adapted``); the model is exported to
``<exp>/adapt/adapted/<fold>/model.pt``, which stage 4 dumps as the ``adapted`` stores and stage 5
variants read with ``asr: adapted``. Finished folds are skipped on rerun (written aside, renamed into
place). A corpus without transcripts gets one line saying adaptation is skipped.
"""

from __future__ import annotations

import os
import time

from ser_modules.asr.adaptation import (
    chosen_upstream,
    ctc_job,
    emotion_inputs,
    fold_splits,
    pooled_rows,
    publish_rows,
    skip_stage,
    untranscribed_folds,
)
from ser_modules.asr.saved_models import ADAPTED, upstream_entries
from ser_modules.stages.common import stage_jobs, start_stage
from ser_modules.utils.fileio import ManifestError, read_json, run_main, write_json
from ser_modules.utils.hparams import canonical_config
from ser_modules.utils.jobs import run_jobs


def main(argv=None) -> None:
    args, log, out, hp, resolved = start_stage(__doc__, "stage3_adapt", "adapt", argv, "adapt")
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
    splits, data = fold_splits(turns, manifest, folds, hp["adapt_on"], out)
    gaps = untranscribed_folds(splits)
    if len(untranscribed_folds(splits, ("test",))) == len(folds):
        return skip_stage(out, f"the emotion corpus {corpus} has no transcripts", [ADAPTED], log)
    if gaps:  # an adapted model of every fold, or none: stage 5 compares them over all folds
        return skip_stage(out, f"folds {', '.join(gaps)} of {corpus} have no transcribed training, validation or "
                          "test utterances", [ADAPTED], log)
    # Decoding keys and the experiment's location do not change what adaptation trains.
    training_config = canonical_config(resolved, args.exp_dir, drop=("decoders", "eval_batch_size", "num_workers",
                                                                                    "curves_every_steps"))
    state = {"hp": hp, "data": data, "device": args.device, "out": out, "upstream": up,
             "training_config": training_config}
    nj, state["devices"] = stage_jobs(args)
    log.info("stage 3: CTC adaptation of %s x %d folds, %d in parallel", up["name"], len(folds), min(nj, len(folds)))
    for fold, seconds in run_jobs(ctc_job, [f.name for f in folds], nj, state, "stage 3"):
        log.info("%s %s done (%.1f s)", ADAPTED, fold, seconds)

    dirs = {f.name: os.path.join(out, ADAPTED, f.name) for f in folds}
    rows = pooled_rows(up["name"], ADAPTED, corpus, args.folds, dirs, hp["decoders"], f"adapt/{ADAPTED}/<fold>/model.pt")
    publish_rows(args.exp_dir, rows, corpus, args.folds)
    write_json(os.path.join(out, "summary.json"), {
        "rows": rows, "minutes": round((time.time() - started) / 60, 2), "adaptation_skipped": None,
        "adapted_upstream": {"upstream": up["name"], "layers": up["layers"], "dims": up["dims"]}})
    log.info("stage 3 finished in %.1f min", (time.time() - started) / 60)


if __name__ == "__main__":
    run_main(main, "stage3_adapt")
