"""What a dump will write, estimated before anything is written.

Each layer's frame rate and width are measured on a few seconds of a synthetic signal
(:func:`probe_asr_layers`, :func:`probe_extractor`); with the utterances' durations they give a
store's bytes (:class:`StorePlan`), so that stage 4 can print what it will write and refuse to start on
a disk without room (:func:`check_disk_room`). A store that exists is reused and counts 0 (or the
pooled vectors an old store gains).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ser_modules.dump.store import POOLINGS, FeatureStore
from ser_modules.dump.writing import asr_store_folder, feature_store_spec
from ser_modules.utils.fileio import ManifestError

# ----------------------------------------------------------------------------------------------
# What a dump will write, estimated before anything is written

PROBE_SECONDS = (2.0, 4.0)  # frames = offset + rate * seconds is fitted through these two lengths


NPY_HEADER_BYTES = 128  # a 2-d float32 .npy header (numpy pads it to 64-byte blocks)


META_BYTES = 2048  # meta.json: the configuration and per-layer facts (a few hundred bytes to 2 KB)


def human_bytes(n: float) -> str:
    """``3.57 GB``: decimal units, as ``df -H`` prints them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000


def probe_signal(seconds: float, sample_rate: int = 16000) -> torch.Tensor:
    """A synthetic utterance ``[S]``: seeded noise at speech level (frame counts do not depend on content)."""
    gen = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(int(round(seconds * sample_rate)), generator=gen)


@dataclass
class LayerShape:
    """A layer's size per utterance: ``round(offset + rate * seconds)`` frames (at least 1) of ``dim`` values."""

    rate: float  # frames per second
    offset: float  # frames at 0 s: analysis windows and the edges of the subsampling
    dim: int

    def frames(self, seconds) -> np.ndarray:
        """Estimated frames ``[N]`` (int64) of utterances lasting ``seconds [N]``."""
        return np.maximum(1, np.rint(self.offset + self.rate * np.asarray(seconds, dtype=float))).astype(np.int64)


def fit_layer_shapes(measure) -> dict[str, LayerShape]:
    """``measure(seconds) -> {layer: (frames, dim)}`` run at both :data:`PROBE_SECONDS` -> a
    :class:`LayerShape` per layer."""
    short, long = PROBE_SECONDS
    at_short, at_long = measure(short), measure(long)
    shapes = {}
    for name, (frames, dim) in at_short.items():
        rate = (at_long[name][0] - frames) / (long - short)
        shapes[name] = LayerShape(rate, frames - rate * short, int(dim))
    return shapes


@torch.no_grad()
def probe_asr_layers(model: torch.nn.Module, features: torch.nn.Module, layers: list[str],
                     device: str = "cpu") -> dict[str, LayerShape]:
    """Frame rate and width of each of ``layers``, from the model run once on each probe length of a
    synthetic signal: DS2's convolutions halve the spectrogram's 100 frames/s, the LAS pyramid
    quarters them, an upstream has its own rate. Cheap: no pass over the corpus."""
    model.eval()

    def measure(seconds):
        wav = probe_signal(seconds).unsqueeze(0).to(device)
        feats, frames = features(wav, torch.tensor([wav.shape[1]], device=device))
        out = model.forward_layers(feats, frames, list(layers))
        return {n: (int(out[n][1][0]), int(out[n][0].shape[-1])) for n in layers}

    return fit_layer_shapes(measure)


@torch.no_grad()
def probe_extractor(extractor, layer: str) -> dict[str, LayerShape]:
    """Frame rate and width of a feature extractor (``wav [S] -> [T, D]``) stored as ``layer``."""
    return fit_layer_shapes(lambda seconds: {layer: tuple(extractor(probe_signal(seconds)).shape)})


def _text_chars(values: np.ndarray) -> int:
    """Characters of integers written in decimal (index.csv's columns)."""
    return sum(map(len, map(str, np.asarray(values).tolist())))


@dataclass
class StorePlan:
    """What writing one store takes. ``shapes``: the layers to write (empty for an existing store,
    which is reused); ``pooled_to_add``: bytes of the pooled files an existing store written before
    them gains when it is reused."""

    name: str
    folder: str
    dtype: str
    ids: list[str]
    seconds: np.ndarray  # [utterances] durations
    shapes: dict[str, LayerShape] = field(default_factory=dict)
    reused: bool = False
    pooled_to_add: dict[str, int] = field(default_factory=dict)

    def frames(self, layer: str) -> int:
        return int(self.shapes[layer].frames(self.seconds).sum())

    def layer_bytes(self) -> dict[str, int]:
        """Bytes per layer: its frames (frames x dim x dtype size) and its two pooled files (float32)."""
        size = np.dtype(self.dtype).itemsize
        return {n: self.frames(n) * s.dim * size + len(POOLINGS) * (NPY_HEADER_BYTES + len(self.ids) * s.dim * 4)
                for n, s in self.shapes.items()}

    def index_bytes(self) -> int:
        """``index.csv`` (id, then offset and frame count per layer, as text) and ``meta.json``."""
        if not self.shapes:
            return 0
        chars = len("ID") + sum(len(f",offset_{n},frames_{n}") for n in self.shapes) + 1
        chars += sum(len(i) + 1 for i in self.ids)
        for shape in self.shapes.values():
            frames = shape.frames(self.seconds)
            chars += _text_chars(np.cumsum(frames) - frames) + _text_chars(frames) + 2 * len(frames)
        return META_BYTES + chars

    @property
    def bytes(self) -> int:
        return sum(self.layer_bytes().values()) + self.index_bytes() + sum(self.pooled_to_add.values())


def _plan_store(name: str, folder: str, dtype: str, utterances: pd.DataFrame, probe) -> StorePlan:
    """A :class:`StorePlan` for ``folder``: ``probe() -> {layer: LayerShape}`` runs only when the store
    does not exist yet."""
    plan = StorePlan(name, folder, dtype, utterances["ID"].astype(str).tolist(),
                     utterances["duration"].astype(float).to_numpy())
    if os.path.isfile(os.path.join(folder, "meta.json")):
        store = FeatureStore(folder)
        plan.reused = True
        plan.pooled_to_add = {store.pooled_path(n, norm): NPY_HEADER_BYTES + len(store) * store.dim(n) * 4
                              for n, norm in store.lacks_pooled}
        store.close()
    else:
        plan.shapes = probe()
    return plan


def plan_asr_store(model: torch.nn.Module, features: torch.nn.Module, utterances: pd.DataFrame, layers: list[str],
                   root: str, name: str, model_sha1: str, dtype: str = "float16", device: str = "cpu") -> StorePlan:
    """What :func:`dump_asr_layers` with these arguments will write (nothing when its store exists)."""
    folder = asr_store_folder(root, name, model_sha1, layers, features, utterances, dtype)
    return _plan_store(name, folder, dtype, utterances, lambda: probe_asr_layers(model, features, layers, device))


def plan_feature_store(utterances: pd.DataFrame, root: str, extractor, name: str, layer: str, dtype: str = "float16",
                       augment=None, copies: int = 0, seed: int = 0) -> StorePlan:
    """What :func:`dump_features` with these arguments will write (nothing when its store exists). An
    augmented copy counts as many frames as the clean layer (tempo 0.85-1.15 averages 1.008x the length)."""
    folder, layers, _ = feature_store_spec(utterances, root, extractor, name, layer, dtype, augment, copies, seed)

    def probe():
        clean = probe_extractor(extractor, layer)[layer]
        return {n: clean for n in layers}

    return _plan_store(name, folder, dtype, utterances, probe)


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
