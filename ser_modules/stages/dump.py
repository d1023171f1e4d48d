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
import shutil

import pandas as pd

from ser_modules.asr_models import (
    ADAPTED, ASRModelRef, adaptation_skip_reason, list_asr_models, load_asr_model, model_blocks, upstream_entries,
)
from ser_modules.dump import (
    StorePlan, bound_primitive_cache, dump_asr_layers, dump_features, human_bytes, plan_asr_store, plan_feature_store,
)
from ser_modules.features import EGeMAPSFunctionals
from ser_modules.fileio import ManifestError, read_manifest, run_main, write_csv, write_json, write_text
from ser_modules.hparams import load_stage_hparams
from ser_modules.jobs import run_jobs, worker_state
from ser_modules.stages.common import parse_stage_args, stage_jobs, stage_logging, stage_parser


def dump_utterances(data_dir: str, protocol: str) -> pd.DataFrame:
    """The protocol's utterances and the context turns they refer to (``prev_same``/``prev_other``)."""
    emotion = os.path.join(data_dir, "emotion")
    manifest = read_manifest(os.path.join(emotion, protocol, "manifest.csv"), ("ID", "wav", "duration"))
    turns_path = os.path.join(emotion, "turns.csv")
    if not os.path.isfile(turns_path):
        return manifest
    turns = read_manifest(turns_path)
    wanted = set(manifest["ID"])
    for col in ("prev_same", "prev_other"):
        if col in manifest.columns:
            wanted |= {i for i in manifest[col] if i}
    missing = wanted - set(turns["ID"])
    if missing:
        raise ManifestError(f"{turns_path}: context turns {sorted(missing)[:3]} are missing")
    return turns[turns["ID"].isin(wanted)].reset_index(drop=True)


def dumped_layers(model, wanted: list[str], path: str) -> list[str]:
    """The layers of ``model`` (exported at ``path``) that conf/dump.yaml's ``layers`` asks for (``all``: every one)."""
    layers = list(model.layer_names) if "all" in wanted else [layer for layer in wanted if layer in model.layer_names]
    if not layers:
        raise ManifestError(f"{path}: none of the layers {wanted} exists; available {model.layer_names}")
    return layers


def plan_dumps(refs: list[ASRModelRef], hp: dict, utterances: pd.DataFrame, out: str, seed: int,
               egemaps: EGeMAPSFunctionals | None) -> list[StorePlan]:
    """What stage 4 will write: one :class:`StorePlan` per ASR model (each loaded on the CPU in turn and
    run on a few seconds of a synthetic signal for its frame rates), then the handcrafted and eGeMAPS stores."""
    plans = []
    for ref in refs:
        model, features, _, info = load_asr_model(ref.path, "cpu")
        layers = dumped_layers(model, hp["layers"], ref.path)
        plans.append(plan_asr_store(model, features, utterances, layers, out, ref.key, info["sha1"], hp["dtype"]))
        del model, features  # one model in memory at a time
    if hp["handcrafted"]:
        plans.append(plan_feature_store(utterances, out, hp["handcrafted_features"], "handcrafted", "mfcc_pitch",
                                        hp["dtype"], hp.get("augmentation"), hp.get("augmented_copies", 0), seed))
    if egemaps is not None:
        plans.append(plan_feature_store(utterances, out, egemaps, "egemaps", "egemaps", "float32"))
    return plans


def describe_plans(plans: list[StorePlan], out: str, free: int) -> list[str]:
    """The lines stage 4 prints before dumping: the total, then bytes per store and layer."""
    total = sum(p.bytes for p in plans)
    lines = [f"stage 4 will write {human_bytes(total)} ({total:,} bytes) in {out} ({human_bytes(free)} free):"]
    for plan in plans:
        if plan.reused:
            added = sum(plan.pooled_to_add.values())
            lines.append(f"  {plan.name}: reused {plan.folder}" + (f", adds pooled vectors: {human_bytes(added)}"
                                                                   if added else ", 0 B"))
            continue
        lines.append(f"  {plan.name}: {human_bytes(plan.bytes)} (index and meta {human_bytes(plan.index_bytes())})")
        for layer, n in plan.layer_bytes().items():
            rate = plan.shapes[layer].rate
            lines.append(f"    {layer}: {human_bytes(n)} ({plan.frames(layer):,} frames x {plan.shapes[layer].dim} x "
                         f"{plan.dtype}, + pooled vectors; {f'{rate:g} frames/s' if rate else 'one per utterance'})")
    return lines


DISK_MARGIN = 1.05  # spare room: the estimate rounds frame counts, and the stage writes a few small files besides


def check_disk_room(plans: list[StorePlan], out: str, log) -> None:
    """Print and log what stage 4 will write; :class:`ManifestError` (one line: folder, bytes needed,
    bytes free) when ``out`` lacks room for it plus :data:`DISK_MARGIN`."""
    free = shutil.disk_usage(out).free
    for line in describe_plans(plans, out, free):  # logged: on the console and in logs/stage4_dump.log
        log.info("%s", line)
    needed = int(sum(p.bytes for p in plans) * DISK_MARGIN)
    if free < needed:
        raise ManifestError(f"{out}: not enough free disk space for stage 4: {needed:,} bytes needed "
                            f"({human_bytes(needed)}, the estimate + {DISK_MARGIN - 1:.0%}), {free:,} bytes free "
                            f"({human_bytes(free)})")


def dump_job(job: tuple) -> tuple[str, dict]:
    """Run one exported ASR model over the utterances and store the configured layers."""
    name, fold, path = job
    w = worker_state()
    ref = ASRModelRef(name, fold, path)
    model, features, _, info = load_asr_model(path, w["device"])
    layers = dumped_layers(model, w["hp"]["layers"], path)
    store = dump_asr_layers(model, features, w["utterances"], w["csv"], layers, w["out"], ref.key, info["sha1"],
                            w["device"], w["hp"]["batch_size"], w["hp"]["dtype"])
    return ref.key, {"folder": os.path.relpath(store.folder, w["out"]), "layers": layers, "model": name, "fold": fold,
                     "dims": {n: store.dim(n) for n in layers}}


def main(argv=None) -> None:
    bound_primitive_cache()  # before any convolution runs here or in the workers (they inherit it)
    args = parse_stage_args(stage_parser(__doc__.split("\n\n")[0]), argv)
    log = stage_logging(args.exp_dir, "stage4_dump")
    out = os.path.join(args.exp_dir, "dump")
    hp, resolved = load_stage_hparams(args.conf_dir, "dump", args.size, {"output_folder": out, "seed": args.seed},
                                      args.overrides)
    utterances = dump_utterances(args.data_dir, args.protocol)
    csv_path = os.path.join(out, f"utterances_{args.protocol}.csv")
    log.info("%d utterances to dump (protocol %s with context turns)", len(utterances), args.protocol)

    # Paths relative to dump/ (read_stores), so that the experiment may move.
    stores = {"protocol": args.protocol, "utterances": os.path.relpath(csv_path, out), "asr": {}, "handcrafted": None,
              "egemaps": None}
    listed = list_asr_models(args.exp_dir)
    upstreams = [u["name"] for u in upstream_entries(args.exp_dir)]
    if "upstreams" in hp["models"] and not upstreams:
        raise ManifestError(f"{os.path.join(args.exp_dir, 'asr', 'upstreams.json')}: no described upstream (run stage 2 "
                            "with --upstream PATH)")
    # "upstreams": every described upstream, and the per-fold CTC-adapted one when stage 3 made it.
    adapted = [ADAPTED] if any(r.name == ADAPTED for r in listed) else []
    wanted = [m for name in hp["models"] for m in (upstreams + adapted if name == "upstreams" else [name])]
    refs = [r for r in listed if r.name in wanted]
    absent = [m for m in wanted if m not in {r.name for r in refs}]
    if "pretrained" in absent:
        raise ManifestError(f"{os.path.join(args.exp_dir, 'asr', 'model.pt')}: no pretrained ASR model (run stage 2)")
    if absent:  # stage 5 skips the variants that read them
        log.warning("ASR model(s) %s of conf/dump.yaml not dumped: %s", ", ".join(absent),
                    adaptation_skip_reason(args.exp_dir) or "not exported by stage 3 (run it)")
    if not refs and wanted:
        raise ManifestError(f"{args.exp_dir}: none of the ASR models {hp['models']} is exported (run stages 2-3)")
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
        stores["handcrafted"] = {"folder": os.path.relpath(store.folder, out), "layers": ["mfcc_pitch"], "dims": {"mfcc_pitch": store.dim("mfcc_pitch")}}
    if egemaps is not None:  # the classical reference: openSMILE eGeMAPS functionals (one vector per utterance)
        store = dump_features(utterances, out, egemaps, "egemaps", "egemaps", "float32", nj=nj)
        stores["egemaps"] = {"folder": os.path.relpath(store.folder, out), "layers": ["egemaps"], "dims": {"egemaps": store.dim("egemaps")}}
    write_json(os.path.join(out, f"stores_{args.protocol}.json"), stores)
    log.info("stage 4 done: %d ASR stores%s%s", len(stores["asr"]), " + handcrafted" if stores["handcrafted"] else "",
             " + eGeMAPS" if stores["egemaps"] else "")


if __name__ == "__main__":
    run_main(main, "stage4_dump")
