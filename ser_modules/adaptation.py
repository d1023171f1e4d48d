"""Adapting a pretrained ASR model to the emotion corpus (Yeh 2020, sections 2.3-2.4).

Three-stage fine-tuning: ``encoder`` (listener trains, speller frozen), ``decoder`` (speller
trains, listener frozen), ``all``; each stage starts from the previous stage's best checkpoint
(by validation CER). The structured variant first replaces every listener FC layer by its SVD
factorisation (:mod:`ser_modules.models.lowrank`), then runs the same stages.

Adaptation runs per fold on that fold's training speakers only, so the speakers a fold tests are
never heard by the ASR model whose representations the fold's SER model uses.

Also the steps both stage 3s share (:mod:`ser_modules.stages.adapt` for ASR models,
:mod:`ser_modules.stages.upstream_adapt` for upstreams): reading the emotion corpus, scoring the test
speakers, and skipping the stage on a corpus without transcripts.
"""

from __future__ import annotations

import logging
import os

import pandas as pd
import torch
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.train_logger import FileTrainLogger

from ser_modules.asr_training import EpochCounterWithStopper, error_rates, evaluate_asr, fit_asr, load_best
from ser_modules.corpus import ASR_COLUMNS, complete_columns
from ser_modules.data import asr_dataset
from ser_modules.fileio import ManifestError, atomic_path, read_json, read_manifest, write_csv, write_json
from ser_modules.folds import Fold, load_folds
from ser_modules.models.ds2 import DeepSpeech2
from ser_modules.models.las import ListenAttendSpell
from ser_modules.text import normalize_transcript

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
                "train_logger": FileTrainLogger(os.path.join(out_dir, "train_log.txt")), "lr_decay": 1.0}
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
        with atomic_path(kept_path) as tmp:
            torch.save(start_state, tmp)
    set_trainable(model, "all")
    record = {"checkpoint": os.path.relpath(ckpt, out_dir) if ckpt else None, "part": part, "trainable_parameters": trainable, "select_on": key,
              "start": start_error, "best_epoch": best, "kept_start": kept_start, "valid": min(start_error, best)}
    write_json(done, record)
    return record
