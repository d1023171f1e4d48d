"""Data pipelines: SpeechBrain datasets over the manifests, and length-bucketed batch sampling.

Batches are formed from utterances of similar duration (little padding). The first epoch may be
sorted by duration (SortaGrad, Amodei et al. 2015); later epochs shuffle the order of the
buckets. The order of an epoch depends only on the seed and the epoch number, so a run resumed
from a checkpoint sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.data_pipeline import provides, takes

from ser_modules.audio import load_audio
from ser_modules.fileio import read_manifest
from ser_modules.text import CharVocabulary


def segment_bounds(seg_start, seg_end) -> tuple[float | None, float | None]:
    """Manifest ``seg_start``/``seg_end`` cells (empty for whole files) as floats or None."""
    def conv(v):
        return None if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else float(v)
    return conv(seg_start), conv(seg_end)


def read_utterance(wav: str, seg_start="", seg_end="") -> torch.Tensor:
    """The 16 kHz mono signal of one manifest row."""
    start, end = segment_bounds(seg_start, seg_end)
    return load_audio(wav, start, end)


def manifest_dataset(csv_path: str, required=("ID", "wav", "duration")) -> DynamicItemDataset:
    """A ``DynamicItemDataset`` over a manifest CSV, keyed by ``ID``, with a ``sig`` item."""
    frame = read_manifest(csv_path, required)
    data = {}
    for row in frame.to_dict("records"):
        row.setdefault("seg_start", "")
        row.setdefault("seg_end", "")
        data[row.pop("ID")] = row
    dataset = DynamicItemDataset(data)

    @takes("wav", "seg_start", "seg_end")
    @provides("sig")
    def audio_pipeline(wav, seg_start, seg_end):
        return read_utterance(wav, seg_start, seg_end)

    dataset.add_dynamic_item(audio_pipeline)
    return dataset


def asr_dataset(csv_path: str, vocab: CharVocabulary, bos_index: int | None = None,
                eos_index: int | None = None) -> DynamicItemDataset:
    """ASR dataset with ``sig``, ``tokens`` (character ids) and, for attention models,
    ``tokens_bos`` (``<sos>`` + tokens) and ``tokens_eos`` (tokens + ``<eos>``)."""
    dataset = manifest_dataset(csv_path, ("ID", "wav", "duration", "transcript"))
    keys = ["id", "sig", "tokens", "transcript"]

    @takes("transcript")
    @provides("tokens")
    def text_pipeline(transcript):
        return torch.LongTensor(vocab.encode(transcript))

    dataset.add_dynamic_item(text_pipeline)
    if bos_index is not None:
        dataset.add_dynamic_item(lambda t: torch.cat([torch.LongTensor([bos_index]), t]), takes="tokens",
                                 provides="tokens_bos")
        dataset.add_dynamic_item(lambda t: torch.cat([t, torch.LongTensor([eos_index])]), takes="tokens",
                                 provides="tokens_eos")
        keys += ["tokens_bos", "tokens_eos"]
    dataset.set_output_keys(keys)
    return dataset


def dataset_durations(dataset: DynamicItemDataset) -> list[float]:
    with dataset.output_keys_as(["duration"]):
        return [float(item["duration"]) for item in dataset]


class LengthBucketBatchSampler(torch.utils.data.Sampler):
    """Batches of ``batch_size`` utterances of similar length.

    ``sortagrad_epochs`` first epochs: ascending duration. Other epochs (when ``shuffle``): durations
    are jittered by up to +-``jitter`` (relative) before sorting, so buckets change from epoch to
    epoch, and the bucket order is shuffled. Without ``shuffle`` the order is always ascending.
    The number of batches never changes (DDP shards a fixed count).
    """

    def __init__(self, lengths, batch_size: int, shuffle: bool = True, sortagrad_epochs: int = 1, seed: int = 0,
                 jitter: float = 0.1):
        self.lengths = np.asarray(lengths, dtype=float)
        self.batch_size = int(batch_size)
        self.shuffle, self.sortagrad_epochs, self.seed, self.jitter = shuffle, sortagrad_epochs, seed, jitter
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        sorted_epoch = not self.shuffle or self.epoch <= self.sortagrad_epochs
        keys = self.lengths if sorted_epoch else self.lengths * rng.uniform(1 - self.jitter, 1 + self.jitter, len(self.lengths))
        order = np.argsort(keys, kind="stable")
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if not sorted_epoch:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        return iter(self.batches())
