"""Representation dumps: frame-level sequences of every emotion utterance, stored once, memory-mapped.

A store is a folder ``<root>/<name>/<key>/`` holding, per layer, one raw array ``<layer>.bin``
(``[total_frames, dim]``, float16 by default) that ``numpy.memmap`` opens without reading it, an
``index.csv`` (utterance id, frame offset and frame count per layer) and ``meta.json``. The key is
a hash of everything the frames depend on (model weights, layers, feature configuration, the
utterances' audio); a rerun with the same inputs reuses the store, any change makes a new one.
A store is written to a temporary folder renamed into place when complete, so an interrupted dump
is never read as whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

import numpy as np
import pandas as pd
import speechbrain as sb
import torch
from tqdm import tqdm

from ser_modules.asr_training import absolute_lengths
from ser_modules.data import LengthBucketBatchSampler, manifest_dataset, read_utterance
from ser_modules.fileio import ManifestError, read_json, write_csv, write_json

logger = logging.getLogger(__name__)


def utterances_key(frame: pd.DataFrame) -> str:
    """Hash of the utterances (ids, audio paths, segments, durations) a store covers."""
    cols = [c for c in ("ID", "wav", "seg_start", "seg_end", "duration") if c in frame.columns]
    return hashlib.sha1(frame[cols].astype(str).to_csv(index=False).encode()).hexdigest()


def store_key(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureStore:
    """Read access to a finished store: ``store.get(utt_id, layer) -> np.ndarray [frames, dim]``."""

    def __init__(self, folder: str):
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta_path):
            raise ManifestError(f"{folder}: not a finished representation store (no meta.json)")
        self.folder = folder
        self.meta = read_json(meta_path)
        index = pd.read_csv(os.path.join(folder, "index.csv"), keep_default_na=False, dtype={"ID": str})
        self.index = index.set_index("ID")
        self.layers = list(self.meta["layers"])
        self._arrays = {}

    def array(self, layer: str) -> np.memmap:
        if layer not in self.layers:
            raise KeyError(f"{self.folder}: no layer {layer!r}; stored: {self.layers}")
        if layer not in self._arrays:
            info = self.meta["layers"][layer]
            self._arrays[layer] = np.memmap(os.path.join(self.folder, f"{layer}.bin"), dtype=info["dtype"], mode="r",
                                            shape=(info["frames"], info["dim"]))
        return self._arrays[layer]

    def dim(self, layer: str) -> int:
        return int(self.meta["layers"][layer]["dim"])

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self.index.index

    def get(self, utt_id: str, layer: str) -> np.ndarray:
        try:
            row = self.index.loc[utt_id]
        except KeyError as err:
            raise KeyError(f"{self.folder}: utterance {utt_id!r} is not in this store") from err
        start, n = int(row[f"offset_{layer}"]), int(row[f"frames_{layer}"])
        return np.asarray(self.array(layer)[start : start + n], dtype=np.float32)

    def mean_pooled(self, layer: str, ids) -> np.ndarray:
        """Utterance vectors: the mean of each utterance's frames, ``[len(ids), dim]``."""
        return np.stack([self.get(i, layer).mean(axis=0) for i in ids])


class _StoreWriter:
    def __init__(self, folder: str, layers: list[str], dtype: str):
        self.folder, self.layers, self.dtype = folder, layers, dtype
        self.files = {name: open(os.path.join(folder, f"{name}.bin"), "wb") for name in layers}
        self.offsets = dict.fromkeys(layers, 0)
        self.dims: dict[str, int] = {}
        self.rows: list[dict] = []

    def add(self, utt_id: str, arrays: dict[str, np.ndarray]) -> None:
        row = {"ID": utt_id}
        for name in self.layers:
            a = np.ascontiguousarray(arrays[name], dtype=self.dtype)
            if self.dims.setdefault(name, a.shape[1]) != a.shape[1]:
                raise ValueError(f"layer {name}: dimension {a.shape[1]} differs from {self.dims[name]}")
            self.files[name].write(a.tobytes())
            row[f"offset_{name}"], row[f"frames_{name}"] = self.offsets[name], a.shape[0]
            self.offsets[name] += a.shape[0]
        self.rows.append(row)

    def close(self, meta: dict) -> None:
        for f in self.files.values():
            f.close()
        write_csv(os.path.join(self.folder, "index.csv"), pd.DataFrame(self.rows))
        meta["layers"] = {n: {"dim": self.dims.get(n, 0), "frames": self.offsets[n], "dtype": self.dtype} for n in self.layers}
        meta["utterances"] = len(self.rows)
        write_json(os.path.join(self.folder, "meta.json"), meta)


def _write_store(folder: str, layers: list[str], dtype: str, meta: dict, fill) -> FeatureStore:
    """Create ``folder`` atomically: ``fill(writer)`` adds every utterance into a temporary folder and
    returns extra metadata (throughput)."""
    if os.path.isfile(os.path.join(folder, "meta.json")):
        logger.info("reusing representation store %s", folder)
        return FeatureStore(folder)
    tmp = f"{folder}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    writer = _StoreWriter(tmp, layers, dtype)
    try:
        meta = {**meta, **(fill(writer) or {})}
        writer.close(meta)
    except BaseException:
        for f in writer.files.values():
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(folder):  # an unfinished leftover without meta.json
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return FeatureStore(folder)


@torch.no_grad()
def dump_asr_layers(model: torch.nn.Module, features: torch.nn.Module, utterances: pd.DataFrame, csv_path: str,
                    layers: list[str], root: str, name: str, model_sha1: str, device: str = "cpu",
                    batch_size: int = 16, dtype: str = "float16") -> FeatureStore:
    """Run ``model`` once over ``utterances`` (a manifest written at ``csv_path``) and store ``layers``.

    Returns the store; prints the throughput as x real time.
    """
    key = store_key({"model": model_sha1, "layers": sorted(layers), "features": repr(features),
                     "utterances": utterances_key(utterances), "dtype": dtype})
    folder = os.path.join(root, name, key)
    model.eval()
    layers = list(layers)

    def fill(writer):
        dataset = manifest_dataset(csv_path)
        dataset.set_output_keys(["id", "sig"])
        sampler = LengthBucketBatchSampler(utterances["duration"].astype(float).tolist(), batch_size, shuffle=False)
        loader = sb.dataio.dataloader.make_dataloader(dataset, batch_sampler=sampler)
        started, seconds = time.time(), 0.0
        for batch in tqdm(loader, desc=f"dumping {name} {layers}", leave=False):
            wavs, rel = batch.sig
            wavs = wavs.to(device)
            samples = absolute_lengths(rel.to(device), wavs.shape[1])
            seconds += float(samples.sum()) / 16000
            feats, frames = features(wavs, samples)
            out = model.forward_layers(feats, frames, layers)
            for i, utt in enumerate(batch.id):
                writer.add(utt, {n: out[n][0][i, : int(out[n][1][i])].float().cpu().numpy() for n in layers})
        elapsed = time.time() - started
        rtf = seconds / max(elapsed, 1e-9)
        print(f"stage 4 dump {name}: {len(utterances)} utterances, {seconds / 3600:.2f} h of audio in "
              f"{elapsed:.1f} s = {rtf:.0f}x real time")
        return {"x_real_time": round(rtf, 1), "audio_hours": round(seconds / 3600, 4)}

    meta = {"name": name, "model_sha1": model_sha1, "features": repr(features), "device": device}
    return _write_store(folder, layers, dtype, meta, fill)


def dump_handcrafted(utterances: pd.DataFrame, root: str, extractor: torch.nn.Module, dtype: str = "float16",
                     name: str = "handcrafted", augment: torch.nn.Module | None = None, copies: int = 0,
                     seed: int = 0) -> FeatureStore:
    """Store the baseline features (:class:`ser_modules.features.HandcraftedFeatures`) as layer
    ``mfcc_pitch``, plus ``copies`` augmented versions (``mfcc_pitch@1`` ...) made by ``augment``
    (tempo/gain) with a generator seeded per utterance and copy; training draws one per epoch."""
    copies = copies if augment is not None else 0
    layers = ["mfcc_pitch"] + [f"mfcc_pitch@{k}" for k in range(1, copies + 1)]
    key = store_key({"features": repr(extractor), "utterances": utterances_key(utterances), "dtype": dtype,
                     "augment": repr(augment), "copies": copies, "seed": seed})
    folder = os.path.join(root, name, key)

    def fill(writer):
        started, seconds = time.time(), 0.0
        if augment is not None:
            augment.train()
        for n, row in enumerate(tqdm(utterances.to_dict("records"), desc="handcrafted features", leave=False)):
            wav = read_utterance(row["wav"], row.get("seg_start", ""), row.get("seg_end", ""))
            seconds += wav.shape[0] / 16000
            arrays = {"mfcc_pitch": extractor(wav).numpy()}
            for k in range(1, copies + 1):
                gen = torch.Generator().manual_seed(seed * 1_000_003 + n * 101 + k)
                arrays[f"mfcc_pitch@{k}"] = extractor(augment(wav, gen)).numpy()
            writer.add(row["ID"], arrays)
        elapsed = time.time() - started
        rtf = seconds / max(elapsed, 1e-9)
        print(f"stage 4 dump {name}: {len(utterances)} utterances (+{copies} augmented copies), "
              f"{seconds / 3600:.2f} h of audio in {elapsed:.1f} s = {rtf:.0f}x real time")
        return {"x_real_time": round(rtf, 1), "audio_hours": round(seconds / 3600, 4), "augmented_copies": copies}

    return _write_store(folder, layers, dtype, {"name": name, "features": repr(extractor)}, fill)
