"""Stage 4: store the ASR layers (and the baseline's handcrafted features) of every emotion utterance.

The utterances are the protocol's plus the dialog context turns IAAN reads. Each exported ASR model
listed in ``models`` (``pretrained``, and per fold ``finetuned`` / ``structured`` after stage 3) runs
once over them (in upstream_probe, ``models: [upstreams]`` means every upstream stage 2 described and
``layers: [all]`` every layer of each, and the per-fold CTC-adapted upstream when stage 3 made it); ``<exp>/dump/stores.json`` tells stage 5 which store holds which model's layers. An
adapted model stage 3 did not make (no transcripts) is left out with a warning; the pretrained one is required.
Before any dump starts, the stage prints the bytes it will write per model and layer (a store that
exists is reused and counts 0) and stops if ``<exp>/dump`` lacks room for them.
"""

from __future__ import annotations

import os

from ser_modules.asr_models import model_blocks
from ser_modules.dump import (
    bound_primitive_cache, check_disk_room, dump_features, dump_job, dump_utterances, dumped_models, feature_store_entry,
    plan_dumps,
)
from ser_modules.features import EGeMAPSFunctionals
from ser_modules.fileio import run_main, write_csv, write_json, write_text
from ser_modules.jobs import run_jobs
from ser_modules.stages.common import stage_jobs, start_stage


def main(argv=None) -> None:
    bound_primitive_cache()  # before any convolution runs here or in the workers (they inherit it)
    args, log, out, hp, resolved = start_stage(__doc__, "stage4_dump", "dump", argv, "dump")
    utterances = dump_utterances(args.data_dir, args.protocol)
    csv_path = os.path.join(out, f"utterances_{args.protocol}.csv")
    log.info("%d utterances to dump (protocol %s with context turns)", len(utterances), args.protocol)

    # Paths relative to dump/ (read_stores), so that the experiment may move.
    stores = {"protocol": args.protocol, "utterances": os.path.relpath(csv_path, out), "asr": {}, "handcrafted": None,
              "egemaps": None}
    refs = dumped_models(args.exp_dir, hp["models"], log)
    egemaps = EGeMAPSFunctionals() if hp.get("egemaps") else None
    os.makedirs(out, exist_ok=True)
    check_disk_room(plan_dumps(refs, hp, utterances, out, args.seed, egemaps), out, log)  # before anything is written
    write_text(os.path.join(out, "hyperparams.yaml"), resolved)
    if hp["handcrafted"]:  # inference rebuilds the extractor from this block
        write_text(os.path.join(out, "handcrafted_hparams.yaml"), model_blocks(resolved, ("handcrafted_features",)))
    write_csv(csv_path, utterances)
    nj, devices = stage_jobs(args)  # the ASR models' dumps share the devices; features share the processes
    state = {"hp": hp, "utterances": utterances, "csv": csv_path, "out": out, "device": args.device,
             "devices": devices}
    for key, info in run_jobs(dump_job, [(r.name, r.fold, r.path) for r in refs], nj, state, "stage 4"):
        stores["asr"][key] = info
    stores["asr"] = {r.key: stores["asr"][r.key] for r in refs}  # in the order of the models, not of completion
    if hp["handcrafted"]:
        store = dump_features(utterances, out, hp["handcrafted_features"], "handcrafted", "mfcc_pitch", hp["dtype"],
                              augment=hp.get("augmentation"), copies=hp.get("augmented_copies", 0), seed=args.seed, nj=nj)
        stores["handcrafted"] = feature_store_entry(store, out, "mfcc_pitch")
    if egemaps is not None:  # the classical reference: openSMILE eGeMAPS functionals (one vector per utterance)
        store = dump_features(utterances, out, egemaps, "egemaps", "egemaps", "float32", nj=nj)
        stores["egemaps"] = feature_store_entry(store, out, "egemaps")
    write_json(os.path.join(out, f"stores_{args.protocol}.json"), stores)
    log.info("stage 4 done: %d ASR stores%s%s", len(stores["asr"]), " + handcrafted" if stores["handcrafted"] else "",
             " + eGeMAPS" if stores["egemaps"] else "")


if __name__ == "__main__":
    run_main(main, "stage4_dump")
