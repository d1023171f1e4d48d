"""Loading a trained SER variant for inference (:mod:`ser_modules.infer`): its fold models, the ASR or
upstream model each one reads, and the baseline's feature extractor, from an experiment folder (stage 5's
``ser/<variant>/<fold>/run<N>/``) or from an exported folder (:mod:`ser_modules.export`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from hyperpyyaml import load_hyperpyyaml

from ser_modules.asr.saved_models import asr_model_path, check_upstream_source
from ser_modules.inference.experiment import best_variant
from ser_modules.ser.dimensional import TargetScaler, saved_task
from ser_modules.ser.finetune import attach_upstream_blocks
from ser_modules.ser.variants import VariantSpec, restore_model
from ser_modules.utils.fileio import ManifestError, read_json
from ser_modules.utils.jobs import resolve_device


@dataclass
class FoldModel:
    """One fold's trained SER model and the ASR model whose layer it reads; for a variant that predicts
    attributes, their names and the training fold's scaler that returns them to the original scale."""

    fold: str
    ser: torch.nn.Module
    asr_path: str | None
    attributes: list[str] = field(default_factory=list)
    scaler: TargetScaler | None = None


class TrainedVariant(NamedTuple):
    """A loaded variant, in the order :class:`~ser_modules.inference.recognizer.EmotionRecognizer` takes it: the folder it
    came from, the variant's name, its fold models, spec and classes, the baseline's feature extractor
    (None unless the variant reads handcrafted features) and the device the models are on."""

    root: str
    variant: str
    folds: list[FoldModel]
    spec: VariantSpec
    classes: list[str]
    handcrafted: torch.nn.Module | None
    device: str


def is_export(folder: str) -> bool:
    """Whether ``folder`` is an exported model (its manifest or its SpeechBrain interface is there)."""
    from ser_modules.inference.export import INTERFACE_FILE, MANIFEST  # only an export needs the export module

    # An export's manifest deleted still counts: loading it is refused, not done unchecked as an experiment.
    return os.path.isfile(os.path.join(folder, MANIFEST)) or os.path.isfile(os.path.join(folder, INTERFACE_FILE))


def load_experiment(exp_dir: str, variant: str | None = None, fold: str | None = None, run: int = 0,
                    device: str = "auto") -> TrainedVariant:
    """The variant ``variant`` (default: the best) of the experiment ``exp_dir``, one fold's model or all
    folds'; ``device`` ``auto`` is CUDA when available, else the CPU."""
    device = resolve_device(device)
    variant, vdir = _variant_folder(exp_dir, variant)
    models, spec, classes = [], None, None
    for name in [fold] if fold else _fold_folders(vdir):
        spec, classes, model, info = _trained_run(os.path.join(vdir, name, f"run{run}"), name, run, exp_dir)
        models.append(fold_model(exp_dir, spec, name, model, device, info))
    return _trained_variant(exp_dir, variant, models, spec, classes, device)


def _variant_folder(exp_dir: str, variant: str | None) -> tuple[str, str]:
    """``(variant, its folder)`` of the experiment's trained SER variant (default: the best one)."""
    ser_dir = os.path.join(exp_dir, "ser")
    if not os.path.isdir(ser_dir):
        raise ManifestError(f"{exp_dir}: no trained SER models (ser/); run stages 1-5 first")
    if variant is None:
        variant = best_variant(exp_dir)
    vdir = os.path.join(ser_dir, variant)
    if not os.path.isdir(vdir):
        raise ManifestError(f"{exp_dir}: no SER variant {variant!r}; trained: {sorted(os.listdir(ser_dir))}")
    return variant, vdir


def _fold_folders(vdir: str) -> list[str]:
    """The fold names a variant was trained on (its visible subfolders, sorted)."""
    return sorted(f for f in os.listdir(vdir) if os.path.isdir(os.path.join(vdir, f)) and not f.startswith("."))


def _trained_run(run_dir: str, fold: str, run: int, exp_dir: str) -> tuple[VariantSpec, list[str], torch.nn.Module, dict]:
    """``(spec, classes, model with its weights, model.json)`` of one fold's run of the experiment ``exp_dir`` as
    stage 5 saved it (a fine-tuned top's blocks rebuilt from the upstream the experiment read)."""
    info_path = os.path.join(run_dir, "model.json")
    if not os.path.isfile(info_path):
        raise ManifestError(f"{run_dir}: no trained model (model.json); is fold {fold!r} run {run} trained?")
    info = read_json(info_path)
    spec = VariantSpec.from_dict(info["variant"])
    model = restore_model(spec, info, os.path.join(run_dir, "model.pt"),
                          asr_model_path(exp_dir, spec.asr, fold) if spec.finetuned else None)
    return spec, info["classes"], model, info


def load_export(folder: str, fold: str | None = None, device: str = "auto",
                ser_models: torch.nn.ModuleDict | None = None, export_id: str | None = None,
                run: int | None = None) -> TrainedVariant:
    """An exported model folder, every file checked against its ``manifest.json`` first: the fold models
    its ``hyperparams.yaml`` wires (or ``fold``'s), with their weights, and the ASR front end they read.
    ``ser_models``: those models already loaded (SpeechBrain's pretrainer did, in ``foreign_class``) from
    the hyperparams of ``export_id``; ``run`` other than the exported one is refused."""
    from ser_modules.inference.export import export_hparams, verify_export  # only an export needs the export module

    device = resolve_device(device)
    verify_export(folder)
    hparams = export_hparams(folder)
    _check_export(folder, hparams, export_id, run, fold)
    spec = VariantSpec.from_dict(hparams["spec"])
    models = [fold_model(folder, spec, name, _exported_model(folder, hparams, spec, name, ser_models), device,
                         read_json(os.path.join(folder, "ser", hparams["variant"], name, f"run{hparams['run']}",
                                                "model.json")))
              for name in ([fold] if fold else hparams["folds"])]
    return _trained_variant(folder, hparams["variant"], models, spec, hparams["classes"], device)


def _check_export(folder: str, hparams: dict, export_id: str | None, run: int | None, fold: str | None) -> None:
    """:class:`ManifestError` unless the export is the one loaded, of run ``run`` and has fold ``fold``."""
    if export_id is not None and export_id != hparams["export_id"]:
        raise ManifestError(f"{folder}: its hyperparams.yaml is not the one loaded (export {export_id}); "
                            "SpeechBrain reuses a savedir's files: give each exported model its own savedir")
    if run not in (None, hparams["run"]):
        raise ManifestError(f"{folder}: an export of run {hparams['run']}, not of run {run}")
    if fold is not None and fold not in hparams["folds"]:
        raise ManifestError(f"{folder}: no fold {fold!r}; exported: {hparams['folds']}")


def _exported_model(folder: str, hparams: dict, spec: VariantSpec, fold: str,
                    ser_models: torch.nn.ModuleDict | None) -> torch.nn.Module:
    """One fold's SER model of an export: from ``ser_models`` when given, else the one its hyperparams
    wire, with its weights loaded from the folder."""
    from ser_modules.inference.hub_interface import fold_key, module_key  # only an export needs the export module

    if ser_models is not None:  # weights loaded by the pretrainer; a fine-tuned top's blocks attached over them
        model = ser_models[module_key(fold)]
        if spec.finetuned and model.blocks is None:
            attach_upstream_blocks(model, asr_model_path(folder, spec.asr, fold))
        return model
    model = hparams["ser_models"][module_key(fold)]
    if spec.finetuned:  # the blocks from the export's upstream (copied or referenced), its weights over them
        attach_upstream_blocks(model, asr_model_path(folder, spec.asr, fold))
    weights = hparams["pretrainer"].files[fold_key(fold)]
    model.load_state_dict(torch.load(os.path.join(folder, weights), map_location="cpu"))
    return model


def _trained_variant(root: str, variant: str, models: list[FoldModel], spec: VariantSpec, classes: list[str],
                     device: str) -> TrainedVariant:
    """The loaded variant, with the baseline's feature extractor when it reads handcrafted features."""
    handcrafted = load_handcrafted(root) if spec.uses_handcrafted else None
    return TrainedVariant(root, variant, models, spec, classes, handcrafted, device)


def fold_model(exp_dir: str, spec: VariantSpec, fold: str, model: torch.nn.Module, device: str,
               info: dict | None = None) -> FoldModel:
    """``model`` on ``device`` for inference, with the ASR model it reads (an upstream, the pretrained ASR
    or the fold's adapted one) and the attributes and their scaler of its ``model.json`` ``info``; a moved
    or deleted upstream folder is one line here, not at the first file."""
    asr_path = None
    if spec.asr:
        asr_path = asr_model_path(exp_dir, spec.asr, fold)
        check_upstream_source(asr_path)
    attributes, scaler = saved_task(info or {})
    return FoldModel(fold, model.to(device).eval(), asr_path, attributes, scaler)


def load_handcrafted(exp_dir: str) -> torch.nn.Module:
    """The baseline's feature extractor exactly as stage 4 configured it."""
    path = os.path.join(exp_dir, "dump", "handcrafted_hparams.yaml")
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: missing (stage 4 writes it with the handcrafted features)")
    with open(path, encoding="utf-8") as f:
        return load_hyperpyyaml(f)["handcrafted_features"]
