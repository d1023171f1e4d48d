"""Training steps of every model at demo and paper size, measured.

A step of DS2 and LAS (stage 2) and of the SER models (stage 5) is driven through the same
``Brain.fit_batch`` the recipes run, on padded batches built the way training builds them
(length-bucketed, from utterance durations drawn like IEMOCAP's). Model sizes, batch sizes and
optimisers are read from the recipes' ``conf/`` (paper) and ``conf/demo/`` (demo) files.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ser_modules.benchmark.machine import PeakMemory, synchronize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


RECIPES = os.path.join(REPO, "recipes")


SAMPLE_RATE = 16000


CHARS_PER_SECOND = 14.0  # read and conversational English: about 2.5 words of 5.5 characters per second


COLUMNS = ["model", "size", "device", "batch", "frames_per_s", "gflops", "gemm_gflops", "ratio", "peak_mb"]


def iemocap_like_durations(n: int, seed: int = 0) -> np.ndarray:
    """Utterance durations (s) shaped like IEMOCAP's turns: log-normal, median 3.4 s, 0.6-15 s."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(3.4), 0.6, n), 0.6, 15.0)


def bucketed_batches(durations: np.ndarray, batch_size: int, n_batches: int, seed: int = 0) -> list[np.ndarray]:
    """Batches of durations as training forms them (:class:`~ser_modules.data.datasets.LengthBucketBatchSampler`)."""
    from ser_modules.data.datasets import LengthBucketBatchSampler

    sampler = LengthBucketBatchSampler(durations, batch_size, shuffle=True, sortagrad_epochs=0, seed=seed)
    sampler.set_epoch(2)
    full = [b for b in sampler.batches() if len(b) == batch_size] or sampler.batches()
    return [durations[np.asarray(b)] for b in full[:n_batches]]


# ----------------------------------------------------------------------------------------------
# Cases: one model at one size, with its real training step


@dataclass
class Case:
    """One model at one size: ``step(batch)`` trains on a batch of durations; ``flops`` and
    ``frames`` count the batch's work and valid input frames."""

    model: str
    size: str
    batch: int
    step: object
    flops: object
    frames: object


def recipe_conf(recipe: str, stage: str, size: str, tmp: str) -> dict:
    from ser_modules.utils.hparams import load_stage_hparams

    runner = {"output_folder": os.path.join(tmp, f"{recipe}_{stage}_{size}"), "data_folder": tmp}
    return load_stage_hparams(os.path.join(RECIPES, recipe, "conf"), stage, size, runner)[0]


def _waveforms(durations, generator) -> list[torch.Tensor]:
    return [0.1 * torch.randn(int(d * SAMPLE_RATE), generator=generator) for d in durations]


def asr_case(recipe: str, size: str, device: str, tmp: str, quick: bool) -> tuple[Case, dict]:
    """Stage 2's training step (``CTCBrain``/``LASBrain.fit_batch``) on synthetic speech-length signals."""
    from speechbrain.dataio.batch import PaddedBatch

    hp = recipe_conf(recipe, "asr", size, tmp)
    hp["speed_perturb"] = None  # a random speed per batch would blur the FLOP count
    model, features = hp["model"].to(device), hp["features"].to(device)
    batch_size = min(hp["batch_size"], 4) if quick and size == "paper" else hp["batch_size"]
    brain = hp["brain_class"](modules={"model": model}, opt_class=hp["opt_class"], hparams=hp,
                              run_opts={"device": device, "noprogressbar": True})
    brain.on_fit_start()
    model.train()
    gen = torch.Generator().manual_seed(0)
    las = hasattr(model, "speller")

    def make(durations):
        items = []
        for i, (d, wav) in enumerate(zip(durations, _waveforms(durations, gen))):
            tokens = torch.randint(3 if las else 1, len(hp["vocab"]), (max(1, int(d * CHARS_PER_SECOND)),), generator=gen)
            item = {"id": str(i), "sig": wav, "tokens": tokens, "transcript": ""}
            if las:
                item["tokens_bos"] = torch.cat([torch.tensor([model.bos_index]), tokens])
                item["tokens_eos"] = torch.cat([tokens, torch.tensor([model.eos_index])])
            items.append(item)
        return PaddedBatch(items)

    def frames_of(durations):
        samples = torch.tensor([int(d * SAMPLE_RATE) for d in durations])
        return ((samples - features.win).div(features.hop, rounding_mode="floor") + 1).clamp(min=1)

    def flops(durations):
        frames = frames_of(durations)
        if las:
            tokens = torch.tensor([max(1, int(d * CHARS_PER_SECOND)) + 1 for d in durations])
            return model.forward_flops(frames, tokens)
        return model.forward_flops(frames)

    cache = {}

    def step(durations):
        key = tuple(durations)
        if key not in cache:  # batches are built once: the timing is the training step only
            cache[key] = make(durations)
        brain.fit_batch(cache[key])

    name = "las" if las else "ds2"
    case = Case(name, size, batch_size, step, flops, lambda d: int(frames_of(d).sum()))
    return case, {"model": model, "features": features, "hp": hp}


FRAME_RATES = {"gru": 50.0, "conv": 50.0, "blstm": 100.0, "pblstm1": 50.0, "pblstm2": 25.0}


HANDCRAFTED_RATE = 100.0


HANDCRAFTED_DIM = 27


def _frames(durations, rate: float) -> list[int]:
    return [max(1, int(d * rate)) for d in durations]


def ser_case(spec_dict: dict, hp: dict, asr_sizes: dict, size: str, device: str, quick: bool) -> Case:
    """Stage 5's training step (``SERBrain.fit_batch``) of one SER variant on stored-representation-shaped inputs."""
    from ser_modules.ser.brain import SERBrain
    from ser_modules.ser.inputs import collate
    from ser_modules.ser.variants import VariantSpec, build_model

    spec = VariantSpec.from_dict(spec_dict)
    dims = {"handcrafted": HANDCRAFTED_DIM}
    if spec.asr:
        dims["asr"] = asr_sizes[spec.layer]
    model = build_model(spec, dims, 4, hp["dropout"]).to(device)
    batch_size = int(spec.options.get("batch_size", hp["batch_size"]))
    if quick and size == "paper":
        batch_size = min(batch_size, 8)
    lr = float(spec.options.get("lr", hp["lr"]))
    brain = SERBrain(modules={"model": model}, opt_class=lambda p: torch.optim.Adam(p, lr=lr),
                     hparams={"spec": spec, "class_weights": None, "label_smoothing": hp.get("label_smoothing", 0.0),
                              "max_grad_norm": hp["max_grad_norm"], "resume_path": os.devnull + ".none",
                              "n_class_outputs": 4, "n_attribute_outputs": 0},  # 4 classes, as the model built
                     run_opts={"device": device, "noprogressbar": True})
    brain.on_fit_start()
    model.train()
    rate = next((r for k, r in FRAME_RATES.items() if spec.layer and spec.layer.startswith(k)), 50.0)
    gen = torch.Generator().manual_seed(0)

    def make(durations):
        items = []
        for i, d in enumerate(durations):
            item = {"id": str(i), "label": i % 4}
            if spec.uses_handcrafted:
                item["feats"] = torch.randn(_frames([d], HANDCRAFTED_RATE)[0], HANDCRAFTED_DIM, generator=gen)
            if spec.type in ("mp", "progressive"):
                item["asr"] = torch.randn(1, dims["asr"], generator=gen)  # stage 5 reads the pooled vector
            elif spec.asr:
                item["asr"] = torch.randn(_frames([d], rate)[0], dims["asr"], generator=gen)
            if spec.type == "iaan":  # context turns of similar length
                item["prev"] = torch.randn(_frames([d * 0.9], rate)[0], dims["asr"], generator=gen)
                item["other"] = torch.randn(_frames([d * 1.1], rate)[0], dims["asr"], generator=gen)
            items.append(item)
        return collate(items)

    def flops(durations):
        hand = _frames(durations, HANDCRAFTED_RATE)  # the models stack frames themselves (frame_stack)
        if spec.type == "baseline":
            return model.forward_flops(hand)
        if spec.type == "progressive":
            return model.forward_flops(hand, [1] * len(durations))
        if spec.type == "mp":
            return model.forward_flops([1] * len(durations))
        if spec.type == "rnn":
            return model.forward_flops(_frames(durations, rate))
        d = list(durations)
        return model.forward_flops(_frames(d, rate), _frames([x * 0.9 for x in d], rate),
                                   _frames([x * 1.1 for x in d], rate))

    def frames(durations):
        if spec.uses_handcrafted:
            return sum(_frames(durations, HANDCRAFTED_RATE))
        return len(durations) if spec.type == "mp" else sum(_frames(durations, rate))

    cache = {}

    def step(durations):
        key = tuple(durations)
        if key not in cache:
            cache[key] = make(durations)
        brain.fit_batch(cache[key])

    label = spec.type if spec.type != "iaan" else "iaan"
    return Case(f"{label} ({spec.name})", size, batch_size, step, flops, frames)


def measure(case: Case, durations: np.ndarray, device: str, gemm: float, quick: bool) -> dict:
    """Time ``case.step`` on bucketed batches; return one benchmark row.

    The batches are stepped through in passes until ``min_seconds`` have gone by; the row reports the
    median pass, since on a shared or virtual machine single passes can run 25% slow."""
    n_batches = 3 if quick else 8
    batches = bucketed_batches(durations, case.batch, n_batches + 1)
    timed = batches[1:] or batches
    min_seconds = 3.0 if quick else 8.0
    case.step(batches[0])  # warm-up: first-call allocations, lazy initialisation
    synchronize(device)
    passes = []
    with PeakMemory(device) as mem:
        started = time.perf_counter()
        while not passes or (time.perf_counter() - started < min_seconds and len(passes) < 12):
            begun = time.perf_counter()
            for batch in timed:
                case.step(batch)
                synchronize(device)
            passes.append(time.perf_counter() - begun)
    elapsed = float(np.median(passes))
    flops = 3 * sum(case.flops(b) for b in timed)
    frames = sum(case.frames(b) for b in timed)
    utts = sum(len(b) for b in timed)
    gflops = flops / elapsed / 1e9
    return {"model": case.model, "size": case.size, "device": device, "batch": case.batch,
            "frames_per_s": round(frames / elapsed, 1), "gflops": round(gflops, 2), "gemm_gflops": round(gemm, 1),
            "ratio": round(gflops / gemm, 3), "peak_mb": round(mem.mb, 1), "utts_per_s": round(utts / elapsed, 2),
            "step_ms": round(1000 * elapsed / len(timed), 1), "steps": len(passes) * len(timed),
            "passes": len(passes)}
