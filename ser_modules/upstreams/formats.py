"""Which kind of upstream a path is, what its outputs depend on, and what it is called.

Two folder formats and two checkpoint files are read; nothing is ever downloaded:

- a Hugging Face ``transformers`` folder (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``) of wav2vec 2.0, HuBERT, WavLM, data2vec-audio, or Whisper (its encoder, read
  from a folder of the whole model or of the encoder alone);
- a SpeechBrain folder (``hyperparams.yaml`` + checkpoints): the file must define ``encoder`` (a
  module on ``[B, T, F]`` features, its top-level children are the layers), optionally
  ``compute_features`` (waveform -> ``[B, T, F]``) and ``normalize``; every loadable of its
  ``pretrainer`` is read from ``<folder>/<name>.ckpt`` (the ``paths`` of a hub model are ignored);
- an ``openai-whisper`` checkpoint (``base.pt``: read as transformers' Whisper encoder) or a torchaudio
  pipeline checkpoint (``wavlm_base_plus.pth``): see :mod:`ser_modules.upstreams.checkpoints`.
"""

from __future__ import annotations

import json
import os

from ser_modules.upstreams.checkpoints import (
    check_openai_whisper,
    check_torchaudio,
    checkpoint_kind,
    resolve_arch,
)
from ser_modules.utils.fileio import ManifestError, file_digest, key_digest

HF_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper")


HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def upstream_kind(path: str) -> str:
    """``"hf"`` or ``"speechbrain"`` for a model folder, ``"openai-whisper"`` or ``"torchaudio"`` for a
    checkpoint file; :class:`ManifestError` naming what is missing."""
    if os.path.isfile(path):
        return checkpoint_kind(path)
    if not os.path.isdir(path):
        raise ManifestError(f"{path}: upstream folder or checkpoint file not found")
    if os.path.isfile(os.path.join(path, "config.json")):
        if not any(os.path.isfile(os.path.join(path, w)) for w in HF_WEIGHTS):
            raise ManifestError(f"{path}: has config.json but no weights ({' or '.join(HF_WEIGHTS)})")
        model_type = read_config(path).get("model_type")
        if model_type not in HF_TYPES:
            raise ManifestError(f"{path}/config.json: model_type {model_type!r} is not a supported upstream "
                                f"({', '.join(HF_TYPES)})")
        return "hf"
    if os.path.isfile(os.path.join(path, "hyperparams.yaml")):
        return "speechbrain"
    raise ManifestError(f"{path}: not an upstream model folder: no config.json (Hugging Face transformers) "
                        "and no hyperparams.yaml (SpeechBrain)")


def upstream_arch(path: str, arch: str | None = None) -> tuple[str, dict | None]:
    """``(kind, architecture)`` of an ``--upstream`` and its ``--upstream-arch``: a torchaudio checkpoint's
    architecture resolved (:func:`resolve_arch`), None for the other kinds, for which ``arch`` is refused."""
    kind = upstream_kind(path)
    if kind == "torchaudio":
        return kind, resolve_arch(path, arch)
    if arch:
        raise ManifestError(f"{path}: --upstream-arch {arch} is for torchaudio checkpoints; this is a {kind} upstream")
    return kind, None


def check_upstream(path: str, arch: str | None = None) -> str:
    """:func:`upstream_arch`, and for a checkpoint file its keys against its architecture without loading a
    weight, so a bad ``--upstream`` stops a run before stage 1. Returns the kind."""
    kind, resolved = upstream_arch(path, arch)
    if kind == "torchaudio":
        check_torchaudio(path, resolved)
    elif kind == "openai-whisper":
        check_openai_whisper(path)
    return kind


def read_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}/config.json: not valid JSON ({err})") from err


def weight_files(path: str) -> list[str]:
    """The files an upstream's outputs depend on (configuration and weights), sorted; a checkpoint: itself."""
    if os.path.isfile(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if n.endswith((".json", ".yaml", ".safetensors", ".bin", ".ckpt")))
    return [os.path.join(path, n) for n in names]


def upstream_digest(path: str, arch: dict | None = None, whisper_window: str | None = None) -> str:
    """SHA-1 of the configuration and weight files (and a checkpoint's resolved architecture, a Whisper's
    unpadded windows): a store of its layers is keyed by it. The padded 30 s window keeps the weights'
    digest, so stores written before the window option are reused."""
    digest = file_digest(*weight_files(path))
    if whisper_window:
        return key_digest({"weights": digest, "arch": arch, "whisper_window": whisper_window})
    return key_digest({"weights": digest, "arch": arch}) if arch else digest


def upstream_name(path: str, taken: set[str]) -> str:
    """A short unique name from the folder or file name (``wavlm-base-plus``, ``wavlm_base_plus`` of
    ``wavlm_base_plus.pth``; an openai-whisper ``base.pt`` is ``whisper-base``): what variants and stores
    are called."""
    base = os.path.basename(os.path.normpath(path))
    if os.path.isfile(path):
        base = os.path.splitext(base)[0]
        if upstream_kind(path) == "openai-whisper" and "whisper" not in base.lower():
            base = f"whisper-{base}"
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in base) or "upstream"
    taken = set(taken) | {"pretrained", "upstreams", "adapted"}  # stage 2's DS2/LAS model, the templates
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name
