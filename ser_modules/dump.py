"""Representation dumps: frame-level sequences of every emotion utterance, stored once, memory-mapped.

A store is a folder ``<root>/<name>/<key>/`` holding, per layer, one raw array ``<layer>.bin``
(``[total_frames, dim]``, float16 by default, readable with ``numpy.memmap``) and the mean-pooled
vector of every utterance ``pooled_<layer>.npy`` (float32 ``[utterances, dim]`` in index order, what
MP-x and Progressive net-x read), an ``index.csv`` (utterance id, frame offset and frame count per
layer) and ``meta.json``. The key is
a hash of everything the frames depend on (model weights, layers, feature configuration, the
utterances' audio); a rerun with the same inputs reuses the store, any change makes a new one.
A store is written to a temporary folder renamed into place when complete, so an interrupted dump
is never read as whole. Before writing, :func:`plan_asr_store` / :func:`plan_feature_store` estimate
a store's bytes from the utterances' durations and each layer's frame rate (measured on a few
seconds of a synthetic signal), so that stage 4 can refuse to start on a disk without room.

A dump holds nothing per utterance once it is written: frames, pooled vectors and index rows go to
their files as each utterance comes, and feature jobs are drawn from the manifest as workers take
them. Its one cache that grew with the corpus was oneDNN's: PyTorch's CPU convolutions (DS2's
front end, an upstream's feature encoder) keep up to 1024 compiled primitives, one per input shape,
and every batch of a length-sorted dump has a new padded length, so the process running the dump
kept one more primitive (up to a few MB, more for longer batches) per batch: +1.1 GB at 8x the demo
corpus. Stage 4 bounds that cache (:func:`bound_primitive_cache`) before anything runs.

Stage 4 (:mod:`ser_modules.stages.dump`) takes its steps from the end of this module: the utterances
(:func:`dump_utterances`), the models (:func:`dumped_models`), the plan and the disk check
(:func:`plan_dumps`, :func:`check_disk_room`) and one job per model (:func:`dump_job`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ser_modules.asr_models import (
    ADAPTED, ASRModelRef, adaptation_skip_reason, list_asr_models, load_asr_model, upstream_entries,
)
from ser_modules.asr_training import absolute_lengths
from ser_modules.data import LengthBucketBatchSampler, make_loader, manifest_dataset, read_utterance
from ser_modules.features import EGeMAPSFunctionals, feature_config, minimum_samples
from ser_modules.fileio import ManifestError, atomic_path, read_json, read_manifest, write_csv, write_json
from ser_modules.jobs import fault_point, run_jobs, worker_state

logger = logging.getLogger(__name__)


PRIMITIVE_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
DUMP_PRIMITIVE_CACHE = 16  # primitives kept: the batches of a length-sorted dump repeat a shape only back to back


def bound_primitive_cache(capacity: int = DUMP_PRIMITIVE_CACHE) -> None:
    """Keep at most ``capacity`` oneDNN primitives cached in this process and in the processes it
    starts afterwards (they inherit the environment), unless ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` is
    already set. oneDNN (PyTorch's CPU convolutions) caches a compiled primitive per input shape, up
    to 1024 of them; a dump meets a new padded length at nearly every batch, and each primitive
    holds memory that grows with it, so a dump with the default cache grows by up to GBs with the
    number of batches. A cache hit returns the primitive that creating it again would make, so the
    bound changes no computed value. oneDNN reads the variable once, when it first creates a
    primitive: call this before the process runs any convolution (stage 4 does, first thing)."""
    os.environ.setdefault(PRIMITIVE_CACHE_ENV, str(int(capacity)))


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


def pool_frames(frames: np.ndarray) -> np.ndarray:
    """An utterance's vector: its stored frames ``[T, D]`` (already rounded to the store's dtype) as
    float32, averaged over time -> ``[D]`` float32. The one computation of every pooled vector, so the
    vectors stage 4 writes equal bit for bit those computed from the frames."""
    return np.asarray(frames, dtype=np.float32).mean(axis=0)


def pooled_file(layer: str) -> str:
    """File name of a layer's pooled vectors inside a store."""
    return f"pooled_{layer}.npy"


class FeatureStore:
    """Read access to a finished store: ``store.get(utt_id, layer) -> np.ndarray [frames, dim]``.

    Each call reads one utterance's frames with a positioned read from the layer's raw file: nothing
    of the store stays in the process (the operating system's page cache keeps what is hot), so
    a training worker's memory does not grow with the corpus. :meth:`mean_pooled` reads the rows it
    needs from the memory-mapped ``pooled_<layer>.npy``.
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
        self._position = {utt: row for row, utt in enumerate(self.ids)}
        self._fds: dict[str, int] = {}
        self._pooled: dict[str, np.ndarray | None] = {}

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

    def pooled_path(self, layer: str) -> str:
        return os.path.join(self.folder, pooled_file(layer))

    def _pooled_matrix(self, layer: str) -> np.ndarray | None:
        """The layer's pooled vectors, memory-mapped float32 ``[utterances, dim]`` in index order, or
        None for a store written before stage 4 wrote them."""
        if layer not in self._pooled:
            path, shape = self.pooled_path(layer), (len(self.ids), self.dim(layer))
            matrix = np.load(path, mmap_mode="r") if os.path.isfile(path) else None
            if matrix is not None and (matrix.shape != shape or matrix.dtype != np.float32):
                raise ManifestError(f"{path}: {matrix.dtype} {matrix.shape}, expected float32 {shape} "
                                    "(remove the file and rerun stage 4)")
            self._pooled[layer] = matrix
        return self._pooled[layer]

    def mean_pooled(self, layer: str, ids) -> np.ndarray:
        """Utterance vectors: the mean of each utterance's frames (:func:`pool_frames`) as float32
        ``[len(ids), dim]``, read from ``pooled_<layer>.npy``; a store without that file (written
        before it existed) pools the frames here."""
        ids = list(ids)
        matrix = self._pooled_matrix(layer)
        if matrix is None:
            return np.stack([pool_frames(self.get(i, layer)) for i in ids]) if ids else \
                np.zeros((0, self.dim(layer)), np.float32)
        try:
            rows = [self._position[i] for i in ids]
        except KeyError as err:
            raise KeyError(f"{self.folder}: utterance {err.args[0]!r} is not in this store") from err
        return np.asarray(matrix[rows])  # fancy indexing copies only these rows out of the mapping

    @property
    def lacks_pooled(self) -> list[str]:
        """The layers whose ``pooled_<layer>.npy`` is missing (a store written before they existed)."""
        return [layer for layer in self.layers if not os.path.isfile(self.pooled_path(layer))]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        self._pooled = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self):  # file descriptors and mappings are per process: a copy opens its own
        state = dict(self.__dict__)
        state["_fds"], state["_pooled"] = {}, {}
        return state


def _write_npy(path: str, raw_path: str, shape: tuple[int, int]) -> None:
    """``path``: a float32 ``.npy`` of ``shape`` whose rows are the raw bytes of ``raw_path`` (streamed,
    never held in memory); the raw file is removed."""
    with open(path, "wb") as out, open(raw_path, "rb") as raw:
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                                   "fortran_order": False, "shape": shape})
        shutil.copyfileobj(raw, out, 1 << 20)
    os.remove(raw_path)


class _StoreWriter:
    """Appends utterances to a store's files: frames to ``<layer>.bin``, pooled vectors to a raw file
    per layer (``.npy`` at :meth:`close`, when the number of rows is known) and each utterance's
    row to ``index.csv``. Nothing per utterance stays in memory: a dump of any size holds the same."""

    def __init__(self, folder: str, layers: list[str], dtype: str):
        self.folder, self.layers, self.dtype = folder, layers, dtype
        self.files = {name: open(os.path.join(folder, f"{name}.bin"), "wb") for name in layers}
        self.pooled = {name: open(os.path.join(folder, f"{pooled_file(name)}.raw"), "wb") for name in layers}
        self.offsets = dict.fromkeys(layers, 0)
        self.dims: dict[str, int] = {}
        self.count = 0  # utterances written
        # index.csv as pandas wrote it from the rows (DataFrame.to_csv, index=False: csv quoting, "\n").
        self.index = open(os.path.join(folder, "index.csv"), "w", encoding="utf-8", newline="")
        self.index_rows = csv.writer(self.index, lineterminator="\n")
        self.index_rows.writerow(["ID"] + [f"{key}_{name}" for name in layers for key in ("offset", "frames")])

    def add(self, utt_id: str, arrays: dict[str, np.ndarray]) -> None:
        row = [utt_id]
        for name in self.layers:
            a = np.ascontiguousarray(arrays[name], dtype=self.dtype)
            if self.dims.setdefault(name, a.shape[1]) != a.shape[1]:
                raise ValueError(f"layer {name}: dimension {a.shape[1]} differs from {self.dims[name]}")
            self.files[name].write(a.tobytes())
            self.pooled[name].write(pool_frames(a).tobytes())  # from the rounded frames, as a reader pools them
            row += [self.offsets[name], a.shape[0]]
            self.offsets[name] += a.shape[0]
        self.index_rows.writerow(row)
        self.count += 1
        fault_point("utterance")

    def close_files(self) -> None:
        for f in [*self.files.values(), *self.pooled.values(), self.index]:
            f.close()

    def close(self, meta: dict) -> None:
        self.close_files()
        if not self.count:  # pandas wrote an empty table (no columns) as one empty line
            with open(os.path.join(self.folder, "index.csv"), "w", encoding="utf-8") as f:
                f.write("\n")
        for name in self.layers:
            path = os.path.join(self.folder, pooled_file(name))
            _write_npy(path, f"{path}.raw", (self.count, self.dims.get(name, 0)))
        meta["layers"] = {n: {"dim": self.dims.get(n, 0), "frames": self.offsets[n], "dtype": self.dtype,
                              "pooled": pooled_file(n)} for n in self.layers}
        meta["utterances"] = self.count
        write_json(os.path.join(self.folder, "meta.json"), meta)


def add_pooled(store: FeatureStore) -> FeatureStore:
    """Complete a store written before stage 4 wrote pooled vectors: pool each utterance's frames
    (:func:`pool_frames`) into ``pooled_<layer>.npy`` (atomically: a temporary name, then a rename) and
    record the files in ``meta.json``. Returns the store reopened; a complete store is returned as is."""
    missing = store.lacks_pooled
    if not missing:
        return store
    logger.info("adding the pooled vectors of %s to %s", missing, store.folder)
    for layer in missing:
        with atomic_path(store.pooled_path(layer)) as tmp:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(store), store.dim(layer)))
            for row, utt in enumerate(store.ids):
                matrix[row] = pool_frames(store.get(utt, layer))
            matrix.flush()
            del matrix  # unmapped before the rename
    meta = read_json(os.path.join(store.folder, "meta.json"))
    for layer in store.layers:
        meta["layers"][layer]["pooled"] = pooled_file(layer)
    write_json(os.path.join(store.folder, "meta.json"), meta)
    store.close()
    return FeatureStore(store.folder)


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
    returns extra metadata (throughput). A finished store is reused, completed with its pooled
    vectors if it was written before them."""
    if os.path.isfile(os.path.join(folder, "meta.json")):
        logger.info("reusing representation store %s", folder)
        return add_pooled(FeatureStore(folder))
    remove_stale_partials(os.path.dirname(folder))
    tmp = f"{folder}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    writer = _StoreWriter(tmp, layers, dtype)
    try:
        meta = {**meta, **(fill(writer) or {})}
        writer.close(meta)
    except BaseException:
        writer.close_files()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(folder):  # an unfinished leftover without meta.json
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return FeatureStore(folder)


def asr_store_folder(root: str, name: str, model_sha1: str, layers: list[str], features, utterances: pd.DataFrame,
                     dtype: str) -> str:
    """Where the store of ``layers`` of an ASR model (weights ``model_sha1``) over ``utterances`` lives:
    ``<root>/<name>/<key>``, the key a hash of everything the frames depend on."""
    key = store_key({"model": model_sha1, "layers": sorted(layers), "features": feature_config(features),
                     "utterances": utterances_key(utterances), "dtype": dtype})
    return os.path.join(root, name, key)


def feature_store_spec(utterances: pd.DataFrame, root: str, extractor, name: str, layer: str, dtype: str,
                       augment=None, copies: int = 0, seed: int = 0) -> tuple[str, list[str], dict]:
    """``(folder, layers, config)`` of the store :func:`dump_features` writes: ``layer`` and its
    augmented copies ``<layer>@1`` ..., keyed by the extractor's and the augmentation's configurations."""
    copies = copies if augment is not None else 0
    layers = [layer] + [f"{layer}@{k}" for k in range(1, copies + 1)]
    config = {"features": feature_config(extractor), "augment": feature_config(augment) if copies else {},
              "copies": copies, "seed": seed if copies else None}
    key = store_key({**config, "utterances": utterances_key(utterances), "dtype": dtype})
    return os.path.join(root, name, key), layers, config


@torch.no_grad()
def dump_asr_layers(model: torch.nn.Module, features: torch.nn.Module, utterances: pd.DataFrame, csv_path: str,
                    layers: list[str], root: str, name: str, model_sha1: str, device: str = "cpu",
                    batch_size: int = 16, dtype: str = "float16") -> FeatureStore:
    """Run ``model`` once over ``utterances`` (a manifest written at ``csv_path``) and store ``layers``.

    Returns the store; prints the throughput as x real time.
    """
    folder = asr_store_folder(root, name, model_sha1, layers, features, utterances, dtype)
    check_durations(utterances, features)
    model.eval()
    layers = list(layers)

    def fill(writer):
        dataset = manifest_dataset(csv_path)
        sampler = LengthBucketBatchSampler(utterances["duration"].astype(float).tolist(), batch_size, shuffle=False)
        loader = make_loader(dataset, sampler)
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


JOB_ROWS = 1024  # manifest rows turned into feature jobs at a time


def _feature_jobs(utterances: pd.DataFrame, layer: str, copies: int, seed: int):
    """The jobs of :func:`_extract`, one per manifest row (a dict of its cells), made as they are
    taken: a pool's feeder draws them as its pipe has room, so no list of every row is held."""
    for start in range(0, len(utterances), JOB_ROWS):
        for row in utterances.iloc[start : start + JOB_ROWS].to_dict("records"):
            yield row, layer, copies, seed


def dump_features(utterances: pd.DataFrame, root: str, extractor, name: str, layer: str, dtype: str = "float16",
                  augment: torch.nn.Module | None = None, copies: int = 0, seed: int = 0, nj: int = 1) -> FeatureStore:
    """Store features computed from each utterance's signal by ``extractor`` (``wav [S] -> [T, D]``) as
    ``layer``, plus ``copies`` augmented versions (``<layer>@1`` ...) made by ``augment`` (tempo/gain);
    training draws one per epoch. ``nj`` processes share the utterances. The store's key is built from
    the extractor's and the augmentation's explicit configurations (:func:`~ser_modules.features.feature_config`)."""
    folder, layers, config = feature_store_spec(utterances, root, extractor, name, layer, dtype, augment, copies, seed)
    copies = config["copies"]
    check_durations(utterances, extractor)

    def fill(writer):
        started, seconds = time.time(), 0.0
        if augment is not None:
            augment.train()
        jobs = _feature_jobs(utterances, layer, copies, seed)
        progress = dict(total=len(utterances), desc=f"{name} features", leave=False)
        if nj > 1 and len(utterances) >= 4 * nj:
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
        """Bytes per layer: its frames (frames x dim x dtype size) and its pooled vectors (float32)."""
        size = np.dtype(self.dtype).itemsize
        return {n: self.frames(n) * s.dim * size + NPY_HEADER_BYTES + len(self.ids) * s.dim * 4
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
        plan.pooled_to_add = {n: NPY_HEADER_BYTES + len(store) * store.dim(n) * 4 for n in store.lacks_pooled}
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
