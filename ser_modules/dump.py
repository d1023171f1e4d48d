"""Representation dumps: frame-level sequences of every emotion utterance, stored once, memory-mapped.

A store is a folder ``<root>/<name>/<key>/`` holding, per layer, one raw array ``<layer>.bin``
(``[total_frames, dim]``, float16 by default, readable with ``numpy.memmap``), an ``index.csv``
(utterance id, frame offset and frame count per layer) and ``meta.json``. The key is
a hash of everything the frames depend on (model weights, layers, feature configuration, the
utterances' audio); a rerun with the same inputs reuses the store, any change makes a new one.
A store is written to a temporary folder renamed into place when complete, so an interrupted dump
is never read as whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import zlib

import numpy as np
import pandas as pd
import speechbrain as sb
import torch
from tqdm import tqdm

from ser_modules.asr_training import absolute_lengths
from ser_modules.data import LengthBucketBatchSampler, manifest_dataset, read_utterance
from ser_modules.features import feature_config, minimum_samples
from ser_modules.fileio import ManifestError, read_json, write_csv, write_json
from ser_modules.jobs import fault_point

logger = logging.getLogger(__name__)


def utterances_key(frame: pd.DataFrame) -> str:
    """Hash of the utterances (ids, audio paths, segments, durations) a store covers."""
    cols = [c for c in ("ID", "wav", "seg_start", "seg_end", "duration") if c in frame.columns]
    return hashlib.sha1(frame[cols].astype(str).to_csv(index=False).encode()).hexdigest()


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


def check_durations(utterances: pd.DataFrame, features, sample_rate: int = 16000) -> None:
    """Raise :class:`ManifestError` naming the first utterance shorter than one analysis window of ``features``."""
    shortest = minimum_samples(features) / sample_rate
    short = utterances[utterances["duration"].astype(float) < shortest]
    if len(short):
        row = short.iloc[0]
        raise ManifestError(f"{row['wav']}: utterance {row['ID']} lasts {float(row['duration']) * 1000:.1f} ms, shorter "
                            f"than the model's minimum of {shortest * 1000:.1f} ms ({len(short)} such utterance(s))")


def store_key(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureStore:
    """Read access to a finished store: ``store.get(utt_id, layer) -> np.ndarray [frames, dim]``.

    Each call reads one utterance's frames with a positioned read from the layer's raw file: nothing
    of the store stays in the process (the operating system's page cache keeps what is hot), so
    a training worker's memory does not grow with the corpus.
    """

    def __init__(self, folder: str):
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta_path):
            raise ManifestError(f"{folder}: not a finished representation store (no meta.json)")
        self.folder = folder
        self.meta = read_json(meta_path)
        index = pd.read_csv(os.path.join(folder, "index.csv"), keep_default_na=False, dtype={"ID": str})
        self.layers = list(self.meta["layers"])
        self.ids = index["ID"].tolist()
        self._rows = {layer: dict(zip(self.ids, zip(index[f"offset_{layer}"].tolist(), index[f"frames_{layer}"].tolist())))
                      for layer in self.layers}
        self._fds: dict[str, int] = {}

    def _layer_info(self, layer: str) -> dict:
        if layer not in self._rows:
            raise KeyError(f"{self.folder}: no layer {layer!r}; stored: {self.layers}")
        return self.meta["layers"][layer]

    def dim(self, layer: str) -> int:
        return int(self._layer_info(layer)["dim"])

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._rows[self.layers[0]] if self.layers else False

    def __len__(self) -> int:
        return len(self.ids)

    def frames(self, utt_id: str, layer: str) -> int:
        """Number of stored frames of ``utt_id`` in ``layer``."""
        return int(self._row(utt_id, layer)[1])

    def _row(self, utt_id: str, layer: str) -> tuple[int, int]:
        self._layer_info(layer)
        try:
            return self._rows[layer][utt_id]
        except KeyError as err:
            raise KeyError(f"{self.folder}: utterance {utt_id!r} is not in this store") from err

    def get(self, utt_id: str, layer: str) -> np.ndarray:
        """The frames of one utterance as float32 ``[frames, dim]``."""
        start, n = self._row(utt_id, layer)
        info = self.meta["layers"][layer]
        dtype = np.dtype(info["dtype"])
        row_bytes = int(info["dim"]) * dtype.itemsize
        if layer not in self._fds:
            self._fds[layer] = os.open(os.path.join(self.folder, f"{layer}.bin"), os.O_RDONLY)
        data = os.pread(self._fds[layer], n * row_bytes, start * row_bytes)
        if len(data) != n * row_bytes:
            raise ManifestError(f"{self.folder}/{layer}.bin: truncated (utterance {utt_id!r} needs "
                                f"{n * row_bytes} bytes at offset {start * row_bytes})")
        return np.frombuffer(data, dtype=dtype).reshape(n, int(info["dim"])).astype(np.float32)

    def mean_pooled(self, layer: str, ids) -> np.ndarray:
        """Utterance vectors: the mean of each utterance's frames, ``[len(ids), dim]``."""
        return np.stack([self.get(i, layer).mean(axis=0) for i in ids])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self):  # file descriptors are per process: a copy opens its own
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state


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
        fault_point("utterance")

    def close(self, meta: dict) -> None:
        for f in self.files.values():
            f.close()
        write_csv(os.path.join(self.folder, "index.csv"), pd.DataFrame(self.rows))
        meta["layers"] = {n: {"dim": self.dims.get(n, 0), "frames": self.offsets[n], "dtype": self.dtype} for n in self.layers}
        meta["utterances"] = len(self.rows)
        write_json(os.path.join(self.folder, "meta.json"), meta)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(root: str) -> None:
    """Remove the ``*.partial-<pid>`` folders in ``root`` left by killed dumps (their process is gone)."""
    for name in os.listdir(root) if os.path.isdir(root) else []:
        stem, sep, pid = name.rpartition(".partial-")
        if sep and pid.isdigit() and not _alive(int(pid)):
            logger.info("removing %s, left by an interrupted dump", os.path.join(root, name))
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _write_store(folder: str, layers: list[str], dtype: str, meta: dict, fill) -> FeatureStore:
    """Create ``folder`` atomically: ``fill(writer)`` adds every utterance into a temporary folder and
    returns extra metadata (throughput)."""
    if os.path.isfile(os.path.join(folder, "meta.json")):
        logger.info("reusing representation store %s", folder)
        return FeatureStore(folder)
    remove_stale_partials(os.path.dirname(folder))
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
    key = store_key({"model": model_sha1, "layers": sorted(layers), "features": feature_config(features),
                     "utterances": utterances_key(utterances), "dtype": dtype})
    folder = os.path.join(root, name, key)
    check_durations(utterances, features)
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

    meta = {"name": name, "model_sha1": model_sha1, "features": feature_config(features), "device": device}
    return _write_store(folder, layers, dtype, meta, fill)


_WORKER_EXTRACT: dict = {}


def _init_extract_worker(extractor, augment) -> None:
    torch.set_num_threads(1)
    _WORKER_EXTRACT.update(extractor=extractor, augment=augment)


def _extract(job: tuple) -> tuple[str, float, dict]:
    """Features of one utterance: the clean layer and the augmented copies (seeded by the utterance id,
    so a store does not depend on the order of its utterances)."""
    row, layer, copies, seed = job
    extractor, augment = _WORKER_EXTRACT["extractor"], _WORKER_EXTRACT["augment"]
    wav = read_utterance(row["wav"], row.get("seg_start", ""), row.get("seg_end", ""))
    arrays = {layer: extractor(wav).numpy()}
    for k in range(1, copies + 1):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(row["ID"].encode()) * 101 + k)
        arrays[f"{layer}@{k}"] = extractor(augment(wav, gen)).numpy()
    return row["ID"], wav.shape[0] / 16000, arrays


def dump_features(utterances: pd.DataFrame, root: str, extractor, name: str, layer: str, dtype: str = "float16",
                  augment: torch.nn.Module | None = None, copies: int = 0, seed: int = 0, nj: int = 1) -> FeatureStore:
    """Store features computed from each utterance's signal by ``extractor`` (``wav [S] -> [T, D]``) as
    ``layer``, plus ``copies`` augmented versions (``<layer>@1`` ...) made by ``augment`` (tempo/gain);
    training draws one per epoch. ``nj`` processes share the utterances. The store's key is built from
    the extractor's and the augmentation's explicit configurations (:func:`~ser_modules.features.feature_config`)."""
    copies = copies if augment is not None else 0
    layers = [layer] + [f"{layer}@{k}" for k in range(1, copies + 1)]
    config = {"features": feature_config(extractor), "augment": feature_config(augment) if copies else {},
              "copies": copies, "seed": seed if copies else None}
    key = store_key({**config, "utterances": utterances_key(utterances), "dtype": dtype})
    folder = os.path.join(root, name, key)
    check_durations(utterances, extractor)

    def fill(writer):
        started, seconds = time.time(), 0.0
        if augment is not None:
            augment.train()
        jobs = [(row, layer, copies, seed) for row in utterances.to_dict("records")]
        progress = dict(total=len(jobs), desc=f"{name} features", leave=False)
        if nj > 1 and len(jobs) >= 4 * nj:
            with mp.get_context("spawn").Pool(nj, initializer=_init_extract_worker, initargs=(extractor, augment)) as pool:
                for utt, secs, arrays in tqdm(pool.imap(_extract, jobs, chunksize=8), **progress):
                    writer.add(utt, arrays)
                    seconds += secs
        else:
            _WORKER_EXTRACT.update(extractor=extractor, augment=augment)
            for job in tqdm(jobs, **progress):
                utt, secs, arrays = _extract(job)
                writer.add(utt, arrays)
                seconds += secs
        elapsed = time.time() - started
        rtf = seconds / max(elapsed, 1e-9)
        print(f"stage 4 dump {name}: {len(utterances)} utterances (+{copies} augmented copies), "
              f"{seconds / 3600:.2f} h of audio in {elapsed:.1f} s = {rtf:.0f}x real time")
        return {"x_real_time": round(rtf, 1), "audio_hours": round(seconds / 3600, 4), "augmented_copies": copies}

    return _write_store(folder, layers, dtype, {"name": name, **config}, fill)
