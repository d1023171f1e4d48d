"""Data pipelines: datasets over the manifests, and length-bucketed batch sampling.

A manifest of the papers' ASR data has ~280k rows. Loader workers (``num_workers``) each receive the
dataset; so that none of them holds a copy of the manifest, :class:`ManifestArrays` keeps the columns
a loader reads as memory-mapped arrays in a cache folder beside the CSV, and a pickled dataset
carries only that folder's path (it is a few hundred bytes under the ``spawn`` and ``forkserver``
start methods). The datasets are module-level classes without closures, so they pickle.

Batches are formed from utterances of similar duration (little padding), of ``batch_size``
utterances or of at most ``max_seconds`` of padded audio (ESPnet's ``batch_bins``). The first epoch
may be sorted by duration (SortaGrad, Amodei et al. 2015); later epochs shuffle the order of the
buckets. The order of an epoch depends only on the seed and the epoch number, so a run resumed from
a checkpoint sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as np
import torch
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.dataloader import make_dataloader

from ser_modules.data.audio import load_audio
from ser_modules.data.text import CharVocabulary
from ser_modules.utils.fileio import ManifestError, file_digest, read_manifest


def segment_bounds(seg_start, seg_end) -> tuple[float | None, float | None]:
    """Manifest ``seg_start``/``seg_end`` cells (empty for whole files) as floats or None."""
    def conv(v):
        return None if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else float(v)
    return conv(seg_start), conv(seg_end)


def read_utterance(wav: str, seg_start="", seg_end="") -> torch.Tensor:
    """The 16 kHz mono signal of one manifest row."""
    start, end = segment_bounds(seg_start, seg_end)
    return load_audio(wav, start, end)


TEXT_FIELDS = ("ID", "wav", "transcript")
NUMBER_FIELDS = ("duration", "seg_start", "seg_end")


def _pack_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> (one UTF-8 byte buffer, int64 offsets [n + 1])."""
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


class ManifestArrays:
    """The columns ``ID, wav, transcript, duration, seg_start, seg_end`` of a manifest CSV as
    memory-mapped arrays, built once in ``.<csv name>.arrays-<digest>/`` beside the CSV (atomically;
    a changed CSV gets a new folder). Every process maps the same pages of the operating system's
    cache, and pickling sends only the paths, so loader workers hold no copy of the manifest.
    ``required`` columns must be in the CSV (and every duration given), else a :class:`ManifestError`
    names the file; other absent text columns read as ``""``, absent or empty numbers as NaN."""

    def __init__(self, csv_path: str, required=("ID", "wav", "duration")):
        self.csv_path = os.path.abspath(csv_path)
        self.folder = self._build()
        self._arrays: dict[str, np.ndarray] | None = None
        with open(os.path.join(self.folder, "columns.json"), encoding="utf-8") as f:
            present = json.load(f)
        missing = [c for c in required if c not in present]
        if missing:
            raise ManifestError(f"{self.csv_path}: missing column(s) {missing}; found {present}")
        missing_duration = np.flatnonzero(np.isnan(self.numbers("duration"))) if "duration" in required else []
        if len(missing_duration):
            row = int(missing_duration[0])
            raise ManifestError(f"{self.csv_path}: utterance {self.text('ID', row)!r} has no duration")

    def _build(self) -> str:
        parent, name = os.path.split(self.csv_path)
        folder = os.path.join(parent, f".{name}.arrays-{file_digest(self.csv_path)[:12]}")
        if os.path.isfile(os.path.join(folder, "columns.json")):  # written last: the arrays are complete
            return folder
        frame = read_manifest(self.csv_path, ("ID", "wav"))
        tmp = tempfile.mkdtemp(prefix=f".{name}.arrays-tmp-", dir=parent)
        try:
            for column in TEXT_FIELDS:
                values = frame[column].astype(str).tolist() if column in frame.columns else [""] * len(frame)
                data, offsets = _pack_strings(values)
                np.save(os.path.join(tmp, f"{column}.bytes.npy"), data)
                np.save(os.path.join(tmp, f"{column}.offsets.npy"), offsets)
            for column in NUMBER_FIELDS:
                values = frame[column] if column in frame.columns else [""] * len(frame)
                numbers = np.array([np.nan if v is None or v == "" else float(v) for v in values], dtype=np.float64)
                np.save(os.path.join(tmp, f"{column}.npy"), numbers)
            with open(os.path.join(tmp, "columns.json"), "w", encoding="utf-8") as f:
                json.dump(list(frame.columns), f)
            if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "columns.json")):
                shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder of an older version
            try:
                os.replace(tmp, folder)  # another process may have built it meanwhile: same content
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for old in os.listdir(parent):  # the arrays of earlier versions of this CSV
            if old.startswith(f".{name}.arrays-") and os.path.join(parent, old) != folder and "-tmp-" not in old:
                shutil.rmtree(os.path.join(parent, old), ignore_errors=True)
        return folder

    def _load(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            files = [f"{c}.bytes.npy" for c in TEXT_FIELDS] + [f"{c}.offsets.npy" for c in TEXT_FIELDS] + \
                [f"{c}.npy" for c in NUMBER_FIELDS]
            self._arrays = {f[: -len(".npy")]: np.load(os.path.join(self.folder, f), mmap_mode="r") for f in files}
        return self._arrays

    def __getstate__(self):  # paths only: a worker maps the arrays itself
        return {"csv_path": self.csv_path, "folder": self.folder, "_arrays": None}

    def __len__(self) -> int:
        return len(self._load()["ID.offsets"]) - 1

    def text(self, column: str, i: int) -> str:
        arrays = self._load()
        offsets = arrays[f"{column}.offsets"]
        return bytes(arrays[f"{column}.bytes"][offsets[i] : offsets[i + 1]]).decode("utf-8")

    def number(self, column: str, i: int) -> float:
        return float(self._load()[column][i])

    def numbers(self, column: str) -> np.ndarray:
        return np.asarray(self._load()[column])


class ManifestDataset(torch.utils.data.Dataset):
    """Utterances of a manifest as dict items: ``id``, ``sig`` (the 16 kHz mono signal, read when the
    item is taken) and, with a vocabulary, ``transcript``, ``tokens`` (character ids) and for
    attention models ``tokens_bos`` (``<sos>`` + tokens) and ``tokens_eos`` (tokens + ``<eos>``).
    SpeechBrain's ``PaddedBatch`` collates them (``batch.sig``, ``batch.tokens``, ...)."""

    def __init__(self, csv_path: str, vocab: CharVocabulary | None = None, bos_index: int | None = None,
                 eos_index: int | None = None):
        self.table = ManifestArrays(csv_path, ("ID", "wav", "duration") + (("transcript",) if vocab else ()))
        self.vocab, self.bos_index, self.eos_index = vocab, bos_index, eos_index

    def __len__(self) -> int:
        return len(self.table)

    @property
    def durations(self) -> np.ndarray:
        return self.table.numbers("duration")

    def __getitem__(self, i: int) -> dict:
        t = self.table
        start, end = t.number("seg_start", i), t.number("seg_end", i)
        item = {"id": t.text("ID", i), "sig": load_audio(t.text("wav", i), None if math.isnan(start) else start,
                                                         None if math.isnan(end) else end)}
        if self.vocab is not None:
            text = t.text("transcript", i)
            tokens = torch.LongTensor(self.vocab.encode(text))
            item.update(transcript=text, tokens=tokens)
            if self.bos_index is not None:
                item["tokens_bos"] = torch.cat([torch.LongTensor([self.bos_index]), tokens])
                item["tokens_eos"] = torch.cat([tokens, torch.LongTensor([self.eos_index])])
        return item


def manifest_dataset(csv_path: str) -> ManifestDataset:
    """A dataset of ``id`` and ``sig`` over a manifest CSV (``ID, wav, duration`` and optional segments)."""
    return ManifestDataset(csv_path)


def asr_dataset(csv_path: str, vocab: CharVocabulary, bos_index: int | None = None,
                eos_index: int | None = None) -> ManifestDataset:
    """ASR dataset with ``sig``, ``tokens`` (character ids), ``transcript`` and, for attention models,
    ``tokens_bos`` / ``tokens_eos``."""
    return ManifestDataset(csv_path, vocab, bos_index, eos_index)


def dataset_durations(dataset: ManifestDataset) -> list[float]:
    return dataset.durations.tolist()


def single_thread_worker(worker_id: int) -> None:
    """Loader workers decode and resample on one thread each: several of them share the cores."""
    torch.set_num_threads(1)


def loader_kwargs(batch_sampler, num_workers: int = 0) -> dict:
    """DataLoader keyword arguments: ``PaddedBatch`` collation of the dict items, and for
    ``num_workers`` > 0 that many decoding processes, started by ``forkserver`` (forking a process
    that holds CUDA or OpenMP threads is unsafe) and kept between epochs."""
    kwargs = {"batch_sampler": batch_sampler, "collate_fn": PaddedBatch, "num_workers": max(0, int(num_workers))}
    if num_workers > 0:
        kwargs.update(multiprocessing_context="forkserver", persistent_workers=True,
                      worker_init_fn=single_thread_worker)
    return kwargs


def make_loader(dataset, batch_sampler, num_workers: int = 0):
    """A SpeechBrain (checkpointable) data loader over ``dataset`` with :func:`loader_kwargs`."""
    return make_dataloader(dataset, **loader_kwargs(batch_sampler, num_workers))


class LengthBucketBatchSampler(torch.utils.data.Sampler):
    """Batches of utterances of similar length: ``batch_size`` utterances each, or, with
    ``max_seconds``, as many as fit into that much padded audio (utterances x longest length; at
    least one utterance), like ESPnet's ``batch_bins``.

    ``sortagrad_epochs`` first epochs: ascending duration. Other epochs (when ``shuffle``): with
    ``batch_size``, durations are jittered by up to +-``jitter`` (relative) before sorting, so buckets
    change from epoch to epoch; with ``max_seconds`` the buckets stay (their number must not change);
    either way the bucket order is shuffled. Without ``shuffle`` the order is always ascending.
    The number of batches never changes (DDP shards a fixed count).
    """

    def __init__(self, lengths, batch_size: int | None = None, shuffle: bool = True, sortagrad_epochs: int = 1,
                 seed: int = 0, jitter: float = 0.1, max_seconds: float | None = None):
        if not batch_size and not max_seconds:
            raise ValueError("LengthBucketBatchSampler needs batch_size or max_seconds")
        self.lengths = np.asarray(lengths, dtype=float)
        self.batch_size = int(batch_size or 0)
        self.max_seconds = float(max_seconds) if max_seconds else None
        self.shuffle, self.sortagrad_epochs, self.seed, self.jitter = shuffle, sortagrad_epochs, seed, jitter
        self.epoch = 1
        self._budget_batches = self._pack(np.argsort(self.lengths, kind="stable")) if self.max_seconds else None

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        """Ascending ``order`` cut into batches whose padded audio stays within ``max_seconds``."""
        batches, current = [], []
        for i in order.tolist():
            if current and (len(current) + 1) * self.lengths[i] > self.max_seconds:
                batches.append(current)
                current = []
            current.append(i)
        return batches + ([current] if current else [])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self._budget_batches is not None:
            return len(self._budget_batches)
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        sorted_epoch = not self.shuffle or self.epoch <= self.sortagrad_epochs
        if self._budget_batches is not None:
            batches = self._budget_batches
        else:
            keys = self.lengths if sorted_epoch else \
                self.lengths * rng.uniform(1 - self.jitter, 1 + self.jitter, len(self.lengths))
            order = np.argsort(keys, kind="stable")
            batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if not sorted_epoch:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [list(b) for b in batches]

    def __iter__(self):
        return iter(self.batches())


def absolute_lengths(relative: torch.Tensor, max_len: int) -> torch.Tensor:
    """SpeechBrain's relative lengths -> integer lengths."""
    return torch.round(relative * max_len).long().clamp(min=1)
