"""Stage 4: store the ASR layers (and the baseline's handcrafted features) of every emotion utterance.

The utterances are the protocol's plus the dialog context turns IAAN reads. Each exported ASR model
listed in ``models`` (``pretrained``, and per fold ``finetuned`` / ``structured`` after stage 3) runs
once over them (in upstream_probe, ``models: [upstreams]`` means every upstream stage 2 described and
``layers: [all]`` every layer of each, and the per-fold CTC-adapted upstream when stage 3 made it); ``<exp>/dump/stores.json`` tells stage 5 which store holds which model's layers. An
adapted model stage 3 did not make (no transcripts) is left out with a warning; the pretrained one is required.
Each evaluation corpus stage 1 prepared (``--eval-corpus``) is dumped the same way, by every model (each
fold's adapted one included), into ``stores_eval-<name>.json``, without the augmented copies training reads.
Before any dump starts, the stage prints the bytes it will write per model and layer (a store that
exists is reused and counts 0) and stops if ``<exp>/dump`` lacks room for them.
"""

from __future__ import annotations

import os

from ser_modules.asr.saved_models import model_blocks
from ser_modules.data.eval_corpora import eval_protocol, listed_eval_corpora
from ser_modules.data.features import EGeMAPSFunctionals
from ser_modules.dump.corpus_dump import dump_corpus, dump_utterances, dumped_models, eval_utterances, plan_dumps
from ser_modules.dump.planning import check_disk_room
from ser_modules.dump.writing import bound_primitive_cache
from ser_modules.stages.common import stage_jobs, start_stage
from ser_modules.utils.fileio import run_main, write_text


def main(argv=None) -> None:
    bound_primitive_cache()  # before any convolution runs here or in the workers (they inherit it)
    args, log, out, hp, resolved = start_stage(__doc__, "stage4_dump", "dump", argv, "dump")
    # The training corpus, then each evaluation corpus of stage 1 (same front end, no augmented copies).
    corpora = {args.protocol: dump_utterances(args.data_dir, args.protocol)}
    for corpus in listed_eval_corpora(args.data_dir):
        corpora[eval_protocol(corpus["name"])] = eval_utterances(args.data_dir, corpus["name"])
    for protocol, utterances in corpora.items():
        log.info("%d utterances to dump (protocol %s with context turns)", len(utterances), protocol)

    refs = dumped_models(args.exp_dir, hp["models"], log)
    egemaps = EGeMAPSFunctionals() if hp.get("egemaps") else None
    os.makedirs(out, exist_ok=True)
    plans = plan_dumps(refs, hp, [(u, protocol == args.protocol) for protocol, u in corpora.items()], out, args.seed,
                       egemaps)
    check_disk_room(plans, out, log)  # before anything is written
    write_text(os.path.join(out, "hyperparams.yaml"), resolved)
    if hp["handcrafted"]:  # inference rebuilds the extractor from this block
        write_text(os.path.join(out, "handcrafted_hparams.yaml"), model_blocks(resolved, ("handcrafted_features",)))
    nj, devices = stage_jobs(args)  # the ASR models' dumps share the devices; features share the processes
    state = {"hp": hp, "out": out, "device": args.device, "devices": devices}
    for protocol, utterances in corpora.items():
        stores = dump_corpus(protocol, utterances, refs, hp, out, args.seed, egemaps, nj, state,
                             augmented=protocol == args.protocol)
        log.info("stage 4 %s: %d ASR stores%s%s", protocol, len(stores["asr"]),
                 " + handcrafted" if stores["handcrafted"] else "", " + eGeMAPS" if stores["egemaps"] else "")
    log.info("stage 4 done")


if __name__ == "__main__":
    run_main(main, "stage4_dump")
