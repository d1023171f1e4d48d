"""Adapting a pretrained ASR model to the emotion corpus (Yeh 2020, sections 2.3-2.4).

Three-stage fine-tuning: ``encoder`` (listener trains, speller frozen), ``decoder`` (speller
trains, listener frozen), ``all``; each stage starts from the previous stage's best checkpoint
(by validation CER). The structured variant first replaces every listener FC layer by its SVD
factorisation (:mod:`ser_modules.models.lowrank`), then runs the same stages.

Adaptation runs per fold on that fold's training speakers only, so the speakers a fold tests are
never heard by the ASR model whose representations the fold's SER model uses.

Also the steps of both stage 3s (:mod:`ser_modules.stages.adapt` for ASR models,
:mod:`ser_modules.stages.upstream_adapt` for upstreams): reading the emotion corpus and writing each
fold's adaptation data, one job per (variant, fold) (:func:`adapt_job`) or per fold (:func:`ctc_job`),
scoring the test speakers and pooling their WER over folds, and skipping the stage on a corpus
without transcripts.
"""

from __future__ import annotations

import logging
import os
import time

import pandas as pd
import torch
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.train_logger import FileTrainLogger

from ser_modules.asr.brains import CTCBrain, EpochCounterWithStopper
from ser_modules.asr.evaluation import error_rates, evaluate_asr, update_asr_results
from ser_modules.asr.saved_models import ADAPTED, export_model, load_asr_model
from ser_modules.asr.training import fit_asr, load_best, run_options
from ser_modules.data.corpus import ASR_COLUMNS, complete_columns
from ser_modules.data.datasets import asr_dataset
from ser_modules.data.folds import Fold, load_folds
from ser_modules.data.text import normalize_transcript
from ser_modules.models.ds2 import DeepSpeech2
from ser_modules.models.las import ListenAttendSpell
from ser_modules.models.lowrank import factorize_listener
from ser_modules.utils.curves import curves_dir
from ser_modules.utils.fileio import (
    ManifestError,
    StagedOutputs,
    file_digest,
    read_json,
    read_manifest,
    save_torch,
    write_csv,
    write_json,
)
from ser_modules.utils.jobs import worker_state
from ser_modules.utils.seeding import seed_all

logger = logging.getLogger(__name__)
PARTS = ("encoder", "decoder", "all")


def model_parts(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The encoder (acoustic model) and decoder parameters of an ASR model; for an upstream with a
    CTC head also ``frozen``, its convolutional feature encoder, which no part trains."""
    if isinstance(model, ListenAttendSpell):
        encoder = list(model.listener.parameters())
        if model.ctc_output is not None:
            encoder += list(model.ctc_output.parameters())
        decoder = [p for m in (model.embedding, model.speller, model.output) for p in m.parameters()]
    elif isinstance(model, DeepSpeech2):
        decoder = list(model.out_bn.parameters()) + list(model.out.parameters())
        ids = {id(p) for p in decoder}
        encoder = [p for p in model.parameters() if id(p) not in ids]
    elif getattr(model, "is_ctc", False) and hasattr(model, "feature_encoder"):  # a CTCUpstream
        frozen = list(model.feature_encoder().parameters())
        decoder = list(model.head.parameters())
        ids = {id(p) for p in frozen + decoder}
        encoder = [p for p in model.parameters() if id(p) not in ids]
        return {"encoder": encoder, "decoder": decoder, "frozen": frozen}
    else:
        raise TypeError(f"cannot adapt a {type(model).__name__}")
    return {"encoder": encoder, "decoder": decoder}


def set_trainable(model: torch.nn.Module, part: str, ctc: bool = True) -> int:
    """Make only ``part`` (encoder, decoder or all) trainable; return the trainable parameter count.

    ``ctc=False`` also freezes a LAS model's CTC head: without a CTC loss it gets no gradient, and
    DDP refuses parameters that never receive one."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}: one of {PARTS}")
    parts = model_parts(model)
    for p in model.parameters():
        p.requires_grad = part == "all"
    if part != "all":
        for p in parts[part]:
            p.requires_grad = True
    for p in parts.get("frozen", []):
        p.requires_grad = False
    if not ctc and getattr(model, "ctc_output", None) is not None:
        for p in model.ctc_output.parameters():
            p.requires_grad = False
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def emotion_inputs(data_dir: str, protocol: str, scheme: str):
    """(utterances with transcripts, protocol manifest, folds) of the prepared emotion corpus."""
    emotion = os.path.join(data_dir, "emotion")
    manifest = read_manifest(os.path.join(emotion, protocol, "manifest.csv"), ("ID", "wav", "speaker", "emotion"))
    turns_path = os.path.join(emotion, "turns.csv")
    turns = read_manifest(turns_path) if os.path.isfile(turns_path) else manifest
    folds = load_folds(os.path.join(emotion, protocol, f"folds_{scheme}.json"))
    return turns, manifest, folds


def adaptation_splits(turns: pd.DataFrame, manifest: pd.DataFrame, fold: Fold, adapt_on: str = "train") -> dict:
    """ASR manifests for adapting on one fold.

    ``turns`` holds every utterance with a transcript (IEMOCAP's turns.csv, or the protocol manifest);
    training uses the turns of the fold's training speakers (``adapt_on="train"``) or of every
    non-test speaker (``"non_test"``), minus the fold's validation utterances; validation uses the
    validation utterances (or the validation speakers' turns); test uses the test speakers' turns.
    """
    if adapt_on not in ("train", "non_test"):
        raise ValueError(f"adapt_on must be train or non_test, got {adapt_on!r}")
    speaker_of = dict(zip(manifest["ID"], manifest["speaker"]))
    test_spk = {speaker_of[i] for i in fold.test}
    train_spk = {speaker_of[i] for i in fold.train}
    valid_ids = set(fold.valid)
    frame = turns.copy()
    frame["transcript"] = frame["transcript"].map(normalize_transcript)
    frame = frame[frame["transcript"] != ""]
    keep_spk = train_spk if adapt_on == "train" else set(frame["speaker"]) - test_spk
    train = frame[frame["speaker"].isin(keep_spk - set(fold.valid_speakers)) & ~frame["ID"].isin(valid_ids)]
    valid = frame[frame["ID"].isin(valid_ids) | frame["speaker"].isin(fold.valid_speakers)]
    test = frame[frame["speaker"].isin(test_spk)]
    if set(train["speaker"]) & test_spk:
        raise ManifestError(f"fold {fold.name}: a test speaker would adapt the ASR model")
    return {name: complete_columns(df, ASR_COLUMNS)[ASR_COLUMNS] for name, df in
            (("train", train), ("valid", valid), ("test", test))}


def untranscribed_folds(splits: dict[str, dict[str, pd.DataFrame]], names=("train", "valid", "test")) -> list[str]:
    """The folds of ``{fold: adaptation_splits(...)}`` with no transcribed utterance in a split of ``names``."""
    return [fold for fold, frames in splits.items() if any(frames[n].empty for n in names)]


def write_splits(splits: dict[str, pd.DataFrame], folder: str) -> dict[str, str]:
    paths = {}
    for name, frame in splits.items():
        paths[name] = os.path.join(folder, f"{name}.csv")
        write_csv(paths[name], frame)
    return paths


def fold_splits(turns: pd.DataFrame, manifest: pd.DataFrame, folds: list[Fold], adapt_on: str, out: str):
    """``(splits, paths)``: every fold's adaptation data (:func:`adaptation_splits`, with the test turns
    the models are scored on), written in ``out/data/<fold>/``."""
    splits = {fold.name: adaptation_splits(turns, manifest, fold, adapt_on) for fold in folds}
    return splits, {name: write_splits(frames, os.path.join(out, "data", name)) for name, frames in splits.items()}


def score_test(model, features, vocab, test_csv: str, folder: str, methods: list[str], hp: dict, device: str) -> None:
    """Decode ``test_csv`` with each of ``methods`` into ``folder`` (``hyp_test_<method>.csv``)."""
    model.eval()
    evaluate_asr(model, features, asr_dataset(test_csv, vocab), vocab, device, folder, "test", methods,
                 hp["eval_batch_size"], hp.get("beam_size", 10), hp.get("decode_ctc_weight", 0.5))


def scored(folder: str, methods: list[str]) -> bool:
    """Whether :func:`score_test` has written the test hypotheses of every one of ``methods`` in ``folder``."""
    return all(os.path.isfile(os.path.join(folder, f"hyp_test_{m}.csv")) for m in methods)


def score_pooled(folder_of_fold: dict[str, str], method: str) -> dict:
    """WER/CER over all folds' test hypotheses (``hyp_test_<method>.csv`` in each fold folder)."""
    frames = [pd.read_csv(os.path.join(f, f"hyp_test_{method}.csv"), keep_default_na=False, dtype=str)
              for f in folder_of_fold.values()]
    pooled = pd.concat(frames, ignore_index=True)
    return error_rates(pooled["ID"].tolist(), pooled["reference"].tolist(), pooled["hypothesis"].tolist())


def pooled_rows(model: str, stage: str, corpus: str, scheme: str, folder_of_fold: dict[str, str], methods: list[str],
                checkpoint: str) -> list[dict]:
    """Rows of ``asr_results.csv``: WER/CER of one model and stage pooled over the folds, one per decoder."""
    return [{"model": model, "stage": stage, "corpus": corpus, "split": f"test:{scheme}", "decoder": m,
             **score_pooled(folder_of_fold, m), "checkpoint": checkpoint} for m in methods]


def adaptation_rows(hp: dict, model: str, corpus: str, scheme: str, out: str, scored_folds: list[Fold],
                    folds: list[Fold], variants: list[str]) -> list[dict]:
    """The ``asr_results.csv`` rows of stage 3 (ASR models): the pretrained model on the ``scored_folds``,
    then each adapted variant after its last stage (and after every stage when ``score_every_stage``)."""
    pretrained = {f.name: os.path.join(out, "pretrained", f.name) for f in scored_folds}
    rows = pooled_rows(model, "pretrained", corpus, scheme, pretrained, hp["decoders"], "asr/model.pt")
    for variant in variants:
        for i, part in enumerate(hp["stages"]):
            last = i == len(hp["stages"]) - 1
            if not (hp["score_every_stage"] or last):
                continue
            label = variant if last else f"{variant}:{'+'.join(hp['stages'][: i + 1])}"
            dirs = {f.name: os.path.join(out, variant, f.name, f"stage{i + 1}_{part}") for f in folds}
            rows += pooled_rows(model, label, corpus, scheme, dirs, hp["decoders"], f"adapt/{variant}/<fold>/model.pt")
    return rows


def publish_rows(exp_dir: str, rows: list[dict], corpus: str, scheme: str, width: int = 0) -> None:
    """Replace stage 3's rows of ``<exp>/asr_results.csv`` (this corpus and fold scheme) by ``rows`` and
    print them (the stage name padded to ``width``)."""
    update_asr_results(os.path.join(exp_dir, "asr_results.csv"), rows,
                       scope={"corpus": corpus, "split": f"test:{scheme}"})
    for r in rows:
        print(f"stage 3 {r['model']} {r['stage'].ljust(width)} {r['corpus']} {r['split']} ({r['decoder']}): "
              f"WER {r['WER']:.2f}%  CER {r['CER']:.2f}%")


def skip_stage(out: str, reason: str, variants: list[str], log) -> None:
    """Stage 3 without transcripts: one line with the reason, and a summary that tells stages 4-6."""
    line = f"stage 3 skipped: {reason}, so no WER is scored on it" + (
        f" and no ASR model is adapted ({', '.join(variants)})" if variants else "")
    log.info("%s", line)
    print(line)
    write_json(os.path.join(out, "summary.json"), {"rows": [], "minutes": 0.0, "skipped": reason,
                                                   "adaptation_skipped": reason if variants else None})


def per_stage(hp: dict, key: str, part: str, default=None):
    """The entry of ``hp[key]`` for the adaptation stage ``part``: ``hp[key]`` is one value for every
    stage or a list with one value per entry of ``stages`` (absent or null: ``default``)."""
    value = hp.get(key)
    if value is None:
        return default
    if not isinstance(value, (list, tuple)):
        return value
    if len(value) != len(hp["stages"]):
        raise ManifestError(f"{key} has {len(value)} entries for {len(hp['stages'])} stages {hp['stages']}")
    return value[list(hp["stages"]).index(part)]


def stage_lr(hp: dict, part: str) -> float:
    """The learning rate of one adaptation stage: ``lr`` times the stage's entry of
    ``stage_lr_scale`` (one factor per entry of ``stages``; absent: 1)."""
    return float(hp["lr"]) * float(per_stage(hp, "stage_lr_scale", part, 1.0))


def stage_epochs(hp: dict, part: str) -> int:
    """The epoch limit of one adaptation stage: ``epochs_per_stage``, one number or one per stage."""
    return int(per_stage(hp, "epochs_per_stage", part))


def run_stage(model, hp: dict, part: str, teacher_forcing: float, data: dict[str, str], out_dir: str,
              run_opts: dict, brain_class, start_error: float | None = None) -> dict:
    """One adaptation stage in ``out_dir`` (resumable); leaves the model at its best state by the
    validation error rate ``hp["select_on"]`` (CER or WER) and returns the stage's record (``done.json``).

    The model the stage starts from is a candidate too: when no epoch lowers the validation error
    below ``start_error`` (scored here when not given), the stage keeps the starting weights, so an
    adaptation stage never makes the model worse on the fold's validation speakers."""
    key = hp.get("select_on", "CER")
    done = os.path.join(out_dir, "done.json")
    kept_path = os.path.join(out_dir, "start_model.pt")
    checkpointer = Checkpointer(os.path.join(out_dir, "save"), {"model": model})
    ctc_weight = float(hp.get("ctc_weight", 0.0))
    if ctc_weight > 0 and getattr(model, "ctc_output", None) is None:
        raise ManifestError(f"{out_dir}: ctc_weight {ctc_weight} needs a CTC head, and the pretrained model has none "
                            "(pretrain with asr.ctc_head=True or set adapt.ctc_weight=0)")
    trainable = set_trainable(model, part, ctc=ctc_weight > 0)
    if os.path.isfile(done):
        record = read_json(done)
        if record.get("kept_start"):
            model.load_state_dict(torch.load(kept_path, map_location="cpu"))
        else:
            load_best(checkpointer)
        set_trainable(model, "all")
        return record
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start_json = os.path.join(out_dir, "start.json")
    if start_error is None and os.path.isfile(start_json):  # resumed: the start was scored before
        start_error = read_json(start_json)[key]
    counter = EpochCounterWithStopper(stage_epochs(hp, part), hp["patience"], 0, "min")
    checkpointer.add_recoverable("counter", counter)
    stage_hp = {**hp, "model": model, "checkpointer": checkpointer, "epoch_counter": counter,
                "lr": stage_lr(hp, part),  # the Brain sets each epoch's lr from it
                "teacher_forcing": teacher_forcing, "train_csv": data["train"], "valid_csv": data["valid"],
                "train_logger": FileTrainLogger(os.path.join(out_dir, "train_log.txt")), "lr_decay": 1.0,
                # the fold's curves folder (set by the job), one run per adaptation stage
                "curves_dir": os.path.join(hp["curves_dir"], os.path.basename(out_dir)) if hp.get("curves_dir") else None}
    logger.info("adaptation stage %s: %d trainable parameters, teacher forcing %.2f, %s", part, trainable,
                teacher_forcing, out_dir)
    brain = fit_asr(stage_hp, run_opts, brain_class, start_json=start_json if start_error is None else None)
    if start_error is None:
        start_error = brain.start_stats[key]
    ckpt = load_best(checkpointer, key)
    best = checkpointer.find_checkpoint(min_key=key).meta[key]
    kept_start = start_error <= best
    if kept_start:
        logger.info("adaptation stage %s did not lower the validation %s (%.2f at the start, best epoch %.2f): "
                    "keeping the starting model", part, key, start_error, best)
        model.load_state_dict(start_state)
        save_torch(start_state, kept_path)
    set_trainable(model, "all")
    record = {"checkpoint": os.path.relpath(ckpt, out_dir) if ckpt else None, "part": part, "trainable_parameters": trainable, "select_on": key,
              "start": start_error, "best_epoch": best, "kept_start": kept_start, "valid": min(start_error, best)}
    write_json(done, record)
    return record


# Stage 3's jobs, run by worker processes (ser_modules.utils.jobs.run_jobs).
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
    fold_hp = {**hp, "vocab": vocab, "features": features,
               "curves_dir": curves_dir(os.path.dirname(w["out"]), "stage3", variant, fold)}
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
    from ser_modules.upstreams.ctc import CTCUpstream
    from ser_modules.upstreams.loading import load_upstream

    w = worker_state()
    hp, data, methods, device, up = w["hp"], w["data"][fold], w["hp"]["decoders"], w["device"], w["upstream"]
    started = time.time()
    staged = StagedOutputs(os.path.join(w["out"], ADAPTED, fold),
                           {"upstream": up["sha1"], "config": w["training_config"], "data": file_digest(*data.values())})
    if staged.done:
        return fold, 0.0
    fold_dir = staged.begin()  # adapted aside, renamed into place when exported
    vocab = hp["vocab"]
    upstream, features = load_upstream(up["source"], device, up.get("arch"), up.get("whisper_window"))
    seed_all(hp["seed"])  # the head's initial weights
    model = CTCUpstream(upstream, len(vocab)).to(device)
    fold_hp = {**hp, "features": features, "stages": ["all"],
               "curves_dir": curves_dir(os.path.dirname(w["out"]), "stage3", ADAPTED, fold)}
    record = run_stage(model, fold_hp, "all", 1.0, data, os.path.join(fold_dir, "train"), run_options(device),
                       CTCBrain)
    if not scored(fold_dir, methods):
        score_test(model, features, vocab, data["test"], fold_dir, methods, hp, device)
    export_model(model, fold_dir, None, extra={"variant": ADAPTED, "fold": fold, "upstream": up,
                                               "ctc_head": {"vocab": vocab.symbols, "valid": record}})
    staged.publish()
    return fold, time.time() - started
