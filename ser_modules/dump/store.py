"""Representation stores: frame-level sequences of every emotion utterance, stored once, memory-mapped.

A store is a folder ``<root>/<name>/<key>/`` holding, per layer, one raw array ``<layer>.bin``
(``[total_frames, dim]``, float16 by default, readable with ``numpy.memmap``) and the mean-pooled
vector of every utterance ``pooled_<layer>.npy`` (float32 ``[utterances, dim]`` in index order, what
MP-x and Progressive net-x read) and the mean of its frames normalised one by one ``pooled_norm_<layer>.npy``
(what a weighted-MP sum with ``layer_norm`` reads), an ``index.csv`` (utterance id, frame offset and frame count per
layer) and ``meta.json``. The key is a hash of everything the frames depend on (model weights, layers,
feature configuration, the utterances' audio); a rerun with the same inputs reuses the store, any
change makes a new one. A store is written to a temporary folder renamed into place when complete
(:func:`write_store`), so an interrupted dump is never read as whole.

A store holds nothing per utterance in memory while it is written (:class:`StoreWriter`): frames,
pooled vectors and index rows go to their files as each utterance comes. :class:`FeatureStore` reads
one utterance at a time with positioned reads, so a reader's memory does not grow with the corpus.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil

import numpy as np
import pandas as pd
import torch

from ser_modules.models.ser import normalise_frames
from ser_modules.utils.fileio import ManifestError, atomic_path, read_json, write_json
from ser_modules.utils.jobs import fault_point

logger = logging.getLogger(__name__)


def utterances_key(frame: pd.DataFrame) -> str:
    """Hash of the utterances (ids, audio paths, segments, durations) a store covers."""
    cols = [c for c in ("ID", "wav", "seg_start", "seg_end", "duration") if c in frame.columns]
    return hashlib.sha1(frame[cols].astype(str).to_csv(index=False).encode()).hexdigest()


def store_key(parts: dict) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pool_frames(frames: np.ndarray) -> np.ndarray:
    """An utterance's vector: its stored frames ``[T, D]`` (already rounded to the store's dtype) as
    float32, averaged over time -> ``[D]`` float32. The one computation of every pooled vector, so the
    vectors stage 4 writes equal bit for bit those computed from the frames."""
    return np.asarray(frames, dtype=np.float32).mean(axis=0)


def pool_normalised_frames(frames: np.ndarray) -> np.ndarray:
    """The mean over time of an utterance's stored frames ``[T, D]``, each frame first normalised over its
    ``D`` features (:func:`~ser_modules.models.ser.normalise_frames`, what a weighted sum with ``layer_norm``
    does to every frame) -> ``[D]`` float32."""
    x = torch.from_numpy(np.asarray(frames, dtype=np.float32))
    return normalise_frames(x).mean(dim=0).numpy()


POOLINGS = {False: pool_frames, True: pool_normalised_frames}  # normalised -> the pooling of a layer's frames


def pooled_file(layer: str, normalised: bool = False) -> str:
    """File name of a layer's pooled vectors inside a store (``normalised``: of its normalised frames)."""
    return f"pooled_norm_{layer}.npy" if normalised else f"pooled_{layer}.npy"


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

    def pooled_path(self, layer: str, normalised: bool = False) -> str:
        return os.path.join(self.folder, pooled_file(layer, normalised))

    def _pooled_matrix(self, layer: str, normalised: bool) -> np.ndarray | None:
        """The layer's pooled vectors, memory-mapped float32 ``[utterances, dim]`` in index order, or
        None for a store written before stage 4 wrote them."""
        if (layer, normalised) not in self._pooled:
            path, shape = self.pooled_path(layer, normalised), (len(self.ids), self.dim(layer))
            matrix = np.load(path, mmap_mode="r") if os.path.isfile(path) else None
            if matrix is not None and (matrix.shape != shape or matrix.dtype != np.float32):
                raise ManifestError(f"{path}: {matrix.dtype} {matrix.shape}, expected float32 {shape} "
                                    "(remove the file and rerun stage 4)")
            self._pooled[layer, normalised] = matrix
        return self._pooled[layer, normalised]

    def mean_pooled(self, layer: str, ids, normalised: bool = False) -> np.ndarray:
        """Utterance vectors: the mean of each utterance's frames (:func:`pool_frames`; ``normalised``:
        of its frames normalised one by one, :func:`pool_normalised_frames`) as float32 ``[len(ids), dim]``,
        read from ``pooled_<layer>.npy`` (``pooled_norm_<layer>.npy``); a store without that file
        (written before it existed) pools the frames here."""
        ids = list(ids)
        matrix = self._pooled_matrix(layer, normalised)
        if matrix is None:
            return np.stack([POOLINGS[normalised](self.get(i, layer)) for i in ids]) if ids else \
                np.zeros((0, self.dim(layer)), np.float32)
        try:
            rows = [self._position[i] for i in ids]
        except KeyError as err:
            raise KeyError(f"{self.folder}: utterance {err.args[0]!r} is not in this store") from err
        return np.asarray(matrix[rows])  # fancy indexing copies only these rows out of the mapping

    @property
    def lacks_pooled(self) -> list[tuple[str, bool]]:
        """``(layer, normalised)`` of the pooled files that are missing (a store written before they existed)."""
        return [(layer, normalised) for layer in self.layers for normalised in POOLINGS
                if not os.path.isfile(self.pooled_path(layer, normalised))]

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


class StoreWriter:
    """Appends utterances to a store's files: frames to ``<layer>.bin``, pooled vectors to a raw file
    per layer (``.npy`` at :meth:`close`, when the number of rows is known) and each utterance's
    row to ``index.csv``. Nothing per utterance stays in memory: a dump of any size holds the same."""

    def __init__(self, folder: str, layers: list[str], dtype: str):
        self.folder, self.layers, self.dtype = folder, layers, dtype
        self.files = {name: open(os.path.join(folder, f"{name}.bin"), "wb") for name in layers}
        self.pooled = {(name, norm): open(os.path.join(folder, f"{pooled_file(name, norm)}.raw"), "wb")
                       for name in layers for norm in POOLINGS}
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
            for norm, pool in POOLINGS.items():  # from the rounded frames, as a reader pools them
                self.pooled[name, norm].write(pool(a).tobytes())
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
            for norm in POOLINGS:
                path = os.path.join(self.folder, pooled_file(name, norm))
                _write_npy(path, f"{path}.raw", (self.count, self.dims.get(name, 0)))
        meta["layers"] = {n: {"dim": self.dims.get(n, 0), "frames": self.offsets[n], "dtype": self.dtype,
                              "pooled": pooled_file(n), "pooled_norm": pooled_file(n, True)} for n in self.layers}
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
    for layer, normalised in missing:
        pool = POOLINGS[normalised]
        with atomic_path(store.pooled_path(layer, normalised)) as tmp:
            matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(store), store.dim(layer)))
            for row, utt in enumerate(store.ids):
                matrix[row] = pool(store.get(utt, layer))
            matrix.flush()
            del matrix  # unmapped before the rename
    meta = read_json(os.path.join(store.folder, "meta.json"))
    for layer in store.layers:
        meta["layers"][layer].update(pooled=pooled_file(layer), pooled_norm=pooled_file(layer, True))
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


def write_store(folder: str, layers: list[str], dtype: str, meta: dict, fill) -> FeatureStore:
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
    writer = StoreWriter(tmp, layers, dtype)
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
