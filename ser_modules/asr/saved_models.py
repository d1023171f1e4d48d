"""Trained ASR models of an experiment folder: export, discovery and loading.

Stage 2 exports ``<exp>/asr/model.pt``; stage 3 exports ``<exp>/adapt/<variant>/<fold>/model.pt``.
In an upstream_probe experiment, stage 2 describes each pretrained upstream instead
(``<exp>/asr/upstreams.json`` and ``<exp>/asr/<name>/model.json`` pointing at its folder,
:mod:`ser_modules.upstreams`); it is listed and loaded here like a trained model.
Beside each state dict, ``model.json`` records what is needed to rebuild the module: the stage-2
hparams file (architecture, features, vocabulary) and the SVD rank of a structured model. Later
stages (representation dump, inference) find models with :func:`list_asr_models` and rebuild them
with :func:`load_asr_model`; nothing is downloaded.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import ruamel.yaml
import torch
from hyperpyyaml import load_hyperpyyaml

from ser_modules.utils.fileio import ManifestError, file_digest, read_json, save_torch, write_json


@dataclass
class ASRModelRef:
    """One exported ASR model: ``name`` (pretrained, finetuned, structured, ...) and ``fold`` (None
    for a model shared by all folds)."""

    name: str
    fold: str | None
    path: str  # model.pt

    @property
    def key(self) -> str:
        return self.name if self.fold is None else f"{self.name}/{self.fold}"


MODEL_KEYS = ("model_name", "vocab", "features", "model")


def model_blocks(resolved_yaml: str, keys=MODEL_KEYS) -> str:
    """The top-level entries ``keys`` of a reference-resolved hparams text, aliases expanded: what
    rebuilds the model without creating the training objects (checkpointer, loggers, seeds)."""
    yaml = ruamel.yaml.YAML()
    yaml.representer.ignore_aliases = lambda *args: True
    data = yaml.load(resolved_yaml)
    missing = [k for k in keys if k not in data]
    if missing:
        raise ManifestError(f"hparams lack the entries {missing}")
    out = io.StringIO()
    yaml.dump({k: data[k] for k in keys}, out)
    return out.getvalue()


def export_model(model: torch.nn.Module, out_dir: str, asr_hparams: str | None, rank: int | None = None,
                 extra: dict | None = None) -> str:
    """Save ``model``'s weights as ``out_dir/model.pt`` with ``model.json`` (atomic writes).

    ``asr_hparams`` is a file holding the model blocks (:func:`model_blocks`) of stage 2; ``model.json``
    gives its path relative to ``out_dir``, so the experiment folder may move. None for an adapted
    upstream (``extra`` then says how to rebuild it, see :func:`load_asr_model`)."""
    path = os.path.join(out_dir, "model.pt")
    save_torch({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    write_json(os.path.join(out_dir, "model.json"),
               {"asr_hparams": asr_hparams and os.path.relpath(os.path.abspath(asr_hparams), os.path.abspath(out_dir)),
                "rank": rank,
                "sha1": file_digest(path), **(extra or {})})
    return path


def upstream_entries(exp_dir: str) -> list[dict]:
    """The upstreams stage 2 of an upstream_probe experiment described (``asr/upstreams.json``), or []."""
    path = os.path.join(exp_dir, "asr", "upstreams.json")
    return read_json(path)["upstreams"] if os.path.isfile(path) else []


def asr_model_path(exp_dir: str, asr: str, fold: str | None) -> str:
    """Where the model a SER variant reads lives: an upstream's ``model.json``, the pretrained
    ``asr/model.pt`` or the fold's adapted ``adapt/<asr>/<fold>/model.pt``."""
    if asr in {u["name"] for u in upstream_entries(exp_dir)}:
        return os.path.join(exp_dir, "asr", asr, "model.json")
    if asr == "pretrained":
        return os.path.join(exp_dir, "asr", "model.pt")
    return os.path.join(exp_dir, "adapt", asr, fold, "model.pt")


def list_asr_models(exp_dir: str) -> list[ASRModelRef]:
    """The pretrained model (or the described upstreams) and every adapted (variant, fold) model
    exported under ``exp_dir``."""
    refs = []
    pre = os.path.join(exp_dir, "asr", "model.pt")
    if os.path.isfile(pre):
        refs.append(ASRModelRef("pretrained", None, pre))
    refs += [ASRModelRef(u["name"], None, asr_model_path(exp_dir, u["name"], None)) for u in upstream_entries(exp_dir)]
    adapt = os.path.join(exp_dir, "adapt")
    if os.path.isdir(adapt):
        for variant in sorted(os.listdir(adapt)):
            vdir = os.path.join(adapt, variant)
            if not os.path.isdir(vdir) or variant == "data" or variant.startswith("."):
                continue
            for fold in sorted(f for f in os.listdir(vdir) if not f.startswith(".")):  # not unfinished work
                path = os.path.join(vdir, fold, "model.pt")
                if os.path.isfile(path):
                    refs.append(ASRModelRef(variant, fold, path))
    return refs


ADAPTED = "adapted"  # the per-fold CTC-adapted upstream of upstream_probe (adapt/adapted/<fold>/model.pt)


def adapted_upstream_entry(exp_dir: str) -> dict | None:
    """The layers of the CTC-adapted upstream (stage 3 of upstream_probe) as an upstream entry named
    ``adapted`` (for :func:`ser_modules.ser.probe.expand_variants`), or None when stage 3 adapted none."""
    summary = os.path.join(exp_dir, "adapt", "summary.json")
    entry = read_json(summary).get("adapted_upstream") if os.path.isfile(summary) else None
    return {**entry, "name": ADAPTED} if entry else None


def adaptation_skip_reason(exp_dir: str) -> str | None:
    """Why stage 3 adapted no model (e.g. the emotion corpus has no transcripts), or None."""
    summary = os.path.join(exp_dir, "adapt", "summary.json")
    return read_json(summary).get("adaptation_skipped") if os.path.isfile(summary) else None


def build_from_hparams(asr_hparams: str):
    """``(model, features, vocab)`` built from a saved stage-2 ``hyperparams.yaml`` (untrained weights)."""
    if not os.path.isfile(asr_hparams):
        raise ManifestError(f"{asr_hparams}: ASR hparams not found (did stage 2 run?)")
    with open(asr_hparams, encoding="utf-8") as f:
        hp = load_hyperpyyaml(f)
    return hp["model"], hp["features"], hp["vocab"]


def upstream_source(info: dict, info_path: str) -> str:
    """The upstream folder a ``model.json`` points at; a relative source (an exported model folder,
    :mod:`ser_modules.export`) is relative to the ``model.json``'s folder."""
    source = info["upstream"]["source"]
    return source if os.path.isabs(source) else os.path.normpath(os.path.join(os.path.dirname(info_path), source))


def check_upstream_source(path: str) -> None:
    """For an upstream's ``model.json``: :class:`ManifestError` unless the folder it points at is still an
    upstream folder (it lives outside the experiment, so it may have moved). Other models: nothing."""
    if os.path.basename(path) == "model.json" and os.path.isfile(path):
        info = read_json(path)
        if info.get("upstream", {}).get("source"):
            source = upstream_source(info, path)
            from ser_modules.upstreams.formats import upstream_kind

            try:
                upstream_kind(source)
            except ManifestError as err:
                raise ManifestError(f"{path}: the upstream it was made with is gone ({err})") from err


def load_asr_model(path: str, device: str = "cpu"):
    """Rebuild an exported model: ``(model in eval mode, features, vocab, info)``."""
    from ser_modules.models.lowrank import factorize_listener

    info_path = os.path.join(os.path.dirname(path), "model.json")
    info = read_json(info_path)
    if info.get("ctc_head"):  # an upstream adapted with a CTC head (stage 3 of upstream_probe)
        from ser_modules.upstreams.ctc import load_adapted_upstream

        model, features, vocab = load_adapted_upstream(upstream_source(info, info_path), path, info["ctc_head"]["vocab"],
                                                       device, info["upstream"].get("whisper_window"))
        return model, features, vocab, info
    if info.get("upstream"):  # a pretrained upstream: rebuilt from its own folder, no vocabulary
        from ser_modules.upstreams.loading import load_upstream

        model, features = load_upstream(upstream_source(info, info_path), device, info["upstream"].get("arch"),
                                        info["upstream"].get("whisper_window"))
        return model, features, None, info
    model, features, vocab = build_from_hparams(os.path.join(os.path.dirname(path), info["asr_hparams"]))
    if info.get("rank"):
        factorize_listener(model, int(info["rank"]))
    try:
        model.load_state_dict(torch.load(path, map_location="cpu"))
    except (RuntimeError, FileNotFoundError) as err:
        raise ManifestError(f"{path}: cannot load ASR weights ({err})") from err
    return model.to(device).eval(), features.to(device), vocab, info
