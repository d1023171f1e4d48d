"""Stage 4's steps for one corpus: its utterances, the ASR models to run, the plan, one job per model.

Stage 4 (:mod:`ser_modules.stages.dump`) takes the utterances (:func:`dump_utterances`,
:func:`eval_utterances`: the protocol's and the dialog context turns they refer to), the exported
models (:func:`dumped_models`), the plan and the disk check (:func:`plan_dumps`), then
:func:`dump_corpus` runs one :func:`dump_job` per model, the handcrafted and eGeMAPS features, and
writes ``stores_<protocol>.json`` (:func:`read_stores` reads it back with absolute paths).
"""

from __future__ import annotations

import os

import pandas as pd

from ser_modules.asr.saved_models import (
    ADAPTED,
    ASRModelRef,
    adaptation_skip_reason,
    list_asr_models,
    load_asr_model,
    upstream_entries,
)
from ser_modules.data.eval_corpora import eval_dir
from ser_modules.data.features import EGeMAPSFunctionals
from ser_modules.dump.planning import StorePlan, plan_asr_store, plan_feature_store
from ser_modules.dump.store import FeatureStore
from ser_modules.dump.writing import dump_asr_layers, dump_features
from ser_modules.utils.fileio import ManifestError, read_json, read_manifest, write_csv, write_json
from ser_modules.utils.jobs import run_jobs, worker_state


def read_stores(path: str) -> dict:
    """A ``stores_<protocol>.json`` of stage 4 with its paths (kept relative to the file's folder, so the
    experiment may move) made absolute."""
    stores, root = read_json(path), os.path.dirname(os.path.abspath(path))
    if stores.get("utterances"):
        stores["utterances"] = os.path.join(root, stores["utterances"])
    for info in [*stores.get("asr", {}).values(), stores.get("handcrafted"), stores.get("egemaps")]:
        if info:
            info["folder"] = os.path.join(root, info["folder"])
    return stores


# Stage 4: what it dumps, whether the disk has room for it, and one job per ASR model.
def dump_utterances(data_dir: str, protocol: str) -> pd.DataFrame:
    """The protocol's utterances and the context turns they refer to (``prev_same``/``prev_other``)."""
    emotion = os.path.join(data_dir, "emotion")
    return corpus_utterances(os.path.join(emotion, protocol, "manifest.csv"), os.path.join(emotion, "turns.csv"))


def corpus_utterances(manifest_path: str, turns_path: str) -> pd.DataFrame:
    """The utterances of ``manifest_path`` and the context turns of ``turns_path`` they refer to (no
    turns file: the manifest alone)."""
    manifest = read_manifest(manifest_path, ("ID", "wav", "duration"))
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


def eval_utterances(data_dir: str, name: str) -> pd.DataFrame:
    """An evaluation corpus's utterances and the dialog context turns they refer to."""
    folder = eval_dir(data_dir, name)
    return corpus_utterances(os.path.join(folder, "manifest.csv"), os.path.join(folder, "turns.csv"))


def dumped_layers(model, wanted: list[str], path: str) -> list[str]:
    """The layers of ``model`` (exported at ``path``) that conf/dump.yaml's ``layers`` asks for (``all``: every one)."""
    layers = list(model.layer_names) if "all" in wanted else [layer for layer in wanted if layer in model.layer_names]
    if not layers:
        raise ManifestError(f"{path}: none of the layers {wanted} exists; available {model.layer_names}")
    return layers


def handcrafted_augmentation(hp: dict, augmented: bool) -> tuple:
    """``(augmentation, copies)`` of the handcrafted store of conf/dump.yaml ``hp``: the configured ones for
    the training corpus (``augmented``), none for an evaluation corpus (only training reads the copies)."""
    copies = hp.get("augmented_copies", 0) if augmented else 0
    return (hp.get("augmentation") if copies else None), copies


def plan_dumps(refs: list[ASRModelRef], hp: dict, corpora: list[tuple[pd.DataFrame, bool]], out: str, seed: int,
               egemaps: EGeMAPSFunctionals | None) -> list[StorePlan]:
    """What stage 4 will write for each ``(utterances, augmented)`` of ``corpora`` (the training corpus, then
    the evaluation corpora): one :class:`StorePlan` per ASR model (each loaded on the CPU once, and run on a
    few seconds of a synthetic signal for its frame rates), then the handcrafted and eGeMAPS stores
    (``augmented``: with the configured augmented copies of the handcrafted features, which only training reads)."""
    plans = []
    for ref in refs:
        model, features, _, info = load_asr_model(ref.path, "cpu")
        layers = dumped_layers(model, hp["layers"], ref.path)
        plans += [plan_asr_store(model, features, utterances, layers, out, ref.key, info["sha1"], hp["dtype"])
                  for utterances, _ in corpora]
        del model, features  # one model in memory at a time
    for utterances, augmented in corpora:
        if hp["handcrafted"]:
            augment, copies = handcrafted_augmentation(hp, augmented)
            plans.append(plan_feature_store(utterances, out, hp["handcrafted_features"], "handcrafted", "mfcc_pitch",
                                            hp["dtype"], augment, copies, seed))
        if egemaps is not None:
            plans.append(plan_feature_store(utterances, out, egemaps, "egemaps", "egemaps", "float32"))
    return plans


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


def dumped_models(exp_dir: str, models: list[str], log) -> list[ASRModelRef]:
    """The exported ASR models that conf/dump.yaml's ``models`` asks for (``upstreams``: every described
    upstream, and the per-fold CTC-adapted one when stage 3 made it). An adapted model stage 3 did not
    export is left out with a warning (stage 5 skips the variants that read it); the pretrained one is required."""
    listed = list_asr_models(exp_dir)
    upstreams = [u["name"] for u in upstream_entries(exp_dir)]
    if "upstreams" in models and not upstreams:
        raise ManifestError(f"{os.path.join(exp_dir, 'asr', 'upstreams.json')}: no described upstream (run stage 2 "
                            "with --upstream PATH)")
    adapted = [ADAPTED] if any(r.name == ADAPTED for r in listed) else []
    wanted = [m for name in models for m in (upstreams + adapted if name == "upstreams" else [name])]
    refs = [r for r in listed if r.name in wanted]
    absent = [m for m in wanted if m not in {r.name for r in refs}]
    if "pretrained" in absent:
        raise ManifestError(f"{os.path.join(exp_dir, 'asr', 'model.pt')}: no pretrained ASR model (run stage 2)")
    if absent:  # stage 5 skips the variants that read them
        log.warning("ASR model(s) %s of conf/dump.yaml not dumped: %s", ", ".join(absent),
                    adaptation_skip_reason(exp_dir) or "not exported by stage 3 (run it)")
    if not refs and wanted:
        raise ManifestError(f"{exp_dir}: none of the ASR models {models} is exported (run stages 2-3)")
    return refs


def feature_store_entry(store: FeatureStore, out: str, layer: str) -> dict:
    """The entry of a handcrafted-feature store in ``stores_<protocol>.json`` (its folder relative to ``out``)."""
    return {"folder": os.path.relpath(store.folder, out), "layers": [layer], "dims": {layer: store.dim(layer)}}


def dump_corpus(protocol: str, utterances: pd.DataFrame, refs: list[ASRModelRef], hp: dict, out: str, seed: int,
                egemaps: EGeMAPSFunctionals | None, nj: int, state: dict, augmented: bool = True) -> dict:
    """Stage 4 for one corpus: every ASR model's layers (one job each, ``state`` as :func:`dump_job` reads
    it), the handcrafted and eGeMAPS features; writes ``utterances_<protocol>.csv`` and
    ``stores_<protocol>.json`` (paths relative to ``out``, so the experiment may move) and returns the latter."""
    csv_path = os.path.join(out, f"utterances_{protocol}.csv")
    write_csv(csv_path, utterances)
    stores = {"protocol": protocol, "utterances": os.path.relpath(csv_path, out), "asr": {}, "handcrafted": None,
              "egemaps": None}
    state = {**state, "utterances": utterances, "csv": csv_path}
    for key, info in run_jobs(dump_job, [(r.name, r.fold, r.path) for r in refs], nj, state, f"stage 4 {protocol}"):
        stores["asr"][key] = info
    stores["asr"] = {r.key: stores["asr"][r.key] for r in refs}  # in the order of the models, not of completion
    if hp["handcrafted"]:
        augment, copies = handcrafted_augmentation(hp, augmented)
        store = dump_features(utterances, out, hp["handcrafted_features"], "handcrafted", "mfcc_pitch", hp["dtype"],
                              augment=augment, copies=copies, seed=seed, nj=nj)
        stores["handcrafted"] = feature_store_entry(store, out, "mfcc_pitch")
    if egemaps is not None:  # the classical reference: openSMILE eGeMAPS functionals (one vector per utterance)
        store = dump_features(utterances, out, egemaps, "egemaps", "egemaps", "float32", nj=nj)
        stores["egemaps"] = feature_store_entry(store, out, "egemaps")
    write_json(os.path.join(out, f"stores_{protocol}.json"), stores)
    return stores
