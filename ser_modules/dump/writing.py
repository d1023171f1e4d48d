"""Filling representation stores (:mod:`ser_modules.dump.store`): an ASR model's layers
(:func:`dump_asr_layers`) or a feature extractor's output with augmented copies (:func:`dump_features`).

Feature jobs are drawn from the manifest as workers take them, so no list of every utterance is held.
The one cache that grew with the corpus was oneDNN's: PyTorch's CPU convolutions (DS2's front end, an
upstream's feature encoder) keep up to 1024 compiled primitives, one per input shape, and every batch
of a length-sorted dump has a new padded length, so the process running the dump kept one more
primitive (up to a few MB, more for longer batches) per batch: +1.1 GB at 8x the demo corpus. Stage 4
bounds that cache (:func:`bound_primitive_cache`) before anything runs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import zlib

import pandas as pd
import torch
from tqdm import tqdm

from ser_modules.data.datasets import (
    LengthBucketBatchSampler,
    absolute_lengths,
    make_loader,
    manifest_dataset,
    read_utterance,
)
from ser_modules.data.features import feature_config, minimum_samples
from ser_modules.dump.store import FeatureStore, write_store, store_key, utterances_key
from ser_modules.utils.fileio import ManifestError

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


def check_durations(utterances: pd.DataFrame, features, sample_rate: int = 16000) -> None:
    """Raise :class:`ManifestError` naming the first utterance shorter than one analysis window of ``features``."""
    shortest = minimum_samples(features) / sample_rate
    short = utterances[utterances["duration"].astype(float) < shortest]
    if len(short):
        row = short.iloc[0]
        raise ManifestError(f"{row['wav']}: utterance {row['ID']} lasts {float(row['duration']) * 1000:.1f} ms, shorter "
                            f"than the model's minimum of {shortest * 1000:.1f} ms ({len(short)} such utterance(s))")


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
    return write_store(folder, layers, dtype, meta, fill)


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
    the extractor's and the augmentation's explicit configurations (:func:`~ser_modules.data.features.feature_config`)."""
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

    return write_store(folder, layers, dtype, {"name": name, **config}, fill)
