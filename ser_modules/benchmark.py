"""How fast the toolkit trains, against this machine's own limit.

    python -m ser_modules.benchmark [--device cpu|cuda] [--quick] [--scaling] --out DIR

1. The machine's GEMM rate: fp32 (and bf16 on a GPU) square matrix products.
2. A training step of every model at demo and paper size (DS2 and LAS of stage 2, the SER models of
   stage 5), driven through the same ``Brain.fit_batch`` the recipes run, on padded batches built
   the way training builds them (length-bucketed, from utterance durations drawn like IEMOCAP's).
   Each row gives frames/s, utterances/s, the achieved FLOP rate from the models' analytic counts
   (:mod:`ser_modules.models.flops`: valid frames only, training = 3 x forward), its ratio to the
   GEMM rate and the step's peak memory.
3. Stage 4's dump rate (x real time) and stage 5's time per epoch when the SER model reads stored
   representations versus recomputing the ASR layers for every batch.
4. ``--scaling``: wall time and peak memory (the process tree's RSS) of stages 4 and 5 on the demo
   emotion corpus replicated 1x, 2x, 4x and 8x.
5. ``--prep-scale [FILES ...]`` (alone): stage 1's ASR preparation, every audio file checked, on
   generated LibriSpeech trees of 10k and 100k short files: time per 10k files and peak memory.

Writes ``benchmark.csv`` (``model,size,device,batch,frames_per_s,gflops,gemm_gflops,ratio,peak_mb``
and more), ``benchmark.md`` and ``benchmark.png`` (and ``scaling.csv`` / ``scaling.png``) to ``--out``.
Model sizes, batch sizes and optimisers are read from the recipes' ``conf/`` (paper) and
``conf/demo/`` (demo) files, so the numbers describe what the recipes train. It is a measurement,
not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes")
SAMPLE_RATE = 16000
CHARS_PER_SECOND = 14.0  # read and conversational English: about 2.5 words of 5.5 characters per second
COLUMNS = ["model", "size", "device", "batch", "frames_per_s", "gflops", "gemm_gflops", "ratio", "peak_mb"]


# ----------------------------------------------------------------------------------------------
# Machine limits and measurement helpers


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_rate(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
              seconds: float = 1.0) -> float:
    """GFLOP/s of ``n x n`` matrix products (1024 on CPU, 4096 on GPU) over ``seconds``: the median
    of five windows, like the training steps' median pass."""
    n = n or (4096 if device.startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    rates = []
    for _ in range(5):
        started, iters = time.perf_counter(), 0
        while time.perf_counter() - started < seconds / 5:
            a @ b
            iters += 1
            if device.startswith("cuda") and iters % 10 == 0:
                synchronize(device)
        synchronize(device)
        rates.append(2 * n**3 * iters / (time.perf_counter() - started) / 1e9)
    return float(np.median(rates))


def gru_kernel_name(device: str) -> str:
    """What runs the GRU layers on ``device``: the grouped kernel, ``nn.GRU`` (switched off or not
    buildable) or cuDNN."""
    from ser_modules.models import grouped_gru

    if device.startswith("cuda"):
        return "cuDNN (packed sequences)"
    return "grouped CPU kernel" if grouped_gru.usable(torch.zeros(1)) else "nn.GRU"


def _proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process from /proc (empty where /proc is missing)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class PeakMemory:
    """Peak memory of a block, in MB above the memory in use when it started.

    CPU: the process's high-water RSS, reset through ``/proc/self/clear_refs`` (Linux) after
    returning freed heap to the system; GPU: ``torch.cuda.max_memory_allocated``.
    """

    def __init__(self, device: str):
        self.device, self.mb = device, float("nan")

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        self.start = _proc_status().get("VmRSS", 0)
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            self.mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            status = _proc_status()
            if "VmHWM" in status:
                self.mb = (status["VmHWM"] - self.start) / 1024
        return False


class TreeMemoryMonitor(threading.Thread):
    """Peak summed RSS (MB) of a process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mb, self._stop_event = pid, interval, 0.0, threading.Event()

    def _tree(self) -> list[int]:
        pids, queue = [], [self.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                        queue += [int(c) for c in f.read().split()]
            except OSError:
                continue
        return pids

    def run(self):
        while not self._stop_event.is_set():
            rss = sum(_proc_status(p).get("VmRSS", 0) for p in self._tree())
            self.peak_mb = max(self.peak_mb, rss / 1024)
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_mb


def iemocap_like_durations(n: int, seed: int = 0) -> np.ndarray:
    """Utterance durations (s) shaped like IEMOCAP's turns: log-normal, median 3.4 s, 0.6-15 s."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(3.4), 0.6, n), 0.6, 15.0)


def bucketed_batches(durations: np.ndarray, batch_size: int, n_batches: int, seed: int = 0) -> list[np.ndarray]:
    """Batches of durations as training forms them (:class:`~ser_modules.data.LengthBucketBatchSampler`)."""
    from ser_modules.data import LengthBucketBatchSampler

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


def _conf(recipe: str, stage: str, size: str, tmp: str) -> dict:
    from ser_modules.hparams import load_stage_hparams

    runner = {"output_folder": os.path.join(tmp, f"{recipe}_{stage}_{size}"), "data_folder": tmp}
    return load_stage_hparams(os.path.join(RECIPES, recipe, "conf"), stage, size, runner)[0]


def _waveforms(durations, generator) -> list[torch.Tensor]:
    return [0.1 * torch.randn(int(d * SAMPLE_RATE), generator=generator) for d in durations]


def asr_case(recipe: str, size: str, device: str, tmp: str, quick: bool) -> tuple[Case, dict]:
    """Stage 2's training step (``CTCBrain``/``LASBrain.fit_batch``) on synthetic speech-length signals."""
    from speechbrain.dataio.batch import PaddedBatch

    hp = _conf(recipe, "asr", size, tmp)
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
    from ser_modules.ser_training import SERBrain, VariantSpec, build_model, collate

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
                              "max_grad_norm": hp["max_grad_norm"], "resume_path": os.devnull + ".none"},
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


# ----------------------------------------------------------------------------------------------
# Stage 4 dump rate and stage 5 epochs from stored vs recomputed representations


def _synthetic_corpus(folder: str, durations) -> tuple[pd.DataFrame, str]:
    """WAV files of noise-excited formant-like signals and their manifest."""
    from ser_modules.audio import write_audio

    rng = np.random.default_rng(0)
    rows = []
    for i, d in enumerate(durations):
        n = int(d * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        wav = 0.1 * np.sin(2 * np.pi * (120 + 30 * np.sin(2 * np.pi * 0.5 * t)) * t) + 0.02 * rng.standard_normal(n)
        path = os.path.join(folder, f"utt{i:04d}.wav")
        write_audio(path, wav.astype(np.float32))
        rows.append({"ID": f"utt{i:04d}", "wav": path, "duration": round(n / SAMPLE_RATE, 4), "speaker": "s",
                     "emotion": "neu"})
    frame = pd.DataFrame(rows)
    csv = os.path.join(folder, "utterances.csv")
    frame.to_csv(csv, index=False)
    return frame, csv


def dump_rates(asr: dict[str, dict], device: str, tmp: str, quick: bool) -> list[dict]:
    """Stage 4 on synthetic signals: x real time of every ASR model's dump and of the handcrafted features."""
    from ser_modules.dump import dump_asr_layers, dump_features
    from ser_modules.features import HandcraftedFeatures

    folder = os.path.join(tmp, "dump_audio")
    os.makedirs(folder, exist_ok=True)
    frame, csv = _synthetic_corpus(folder, iemocap_like_durations(24 if quick else 96, seed=1))
    rows = []
    for (name, size), info in asr.items():
        model, features = info["model"].eval(), info["features"]
        layers = [n for n in model.layer_names if n.startswith(("gru", "pblstm"))][:3]
        store = dump_asr_layers(model, features, frame, csv, layers, os.path.join(tmp, "stores"), f"{name}_{size}",
                                f"bench-{name}-{size}", device, 16, "float16")
        rows.append({"what": f"stage 4 dump {name} ({size}, layers {', '.join(layers)})",
                     "x_real_time": store.meta["x_real_time"]})
    hand = dump_features(frame, os.path.join(tmp, "stores"), HandcraftedFeatures(), "handcrafted", "mfcc_pitch")
    rows.append({"what": "stage 4 handcrafted features (MFCC + deltas + pitch)", "x_real_time": hand.meta["x_real_time"]})
    return rows


def stored_vs_recomputed(asr: dict, ser_hp: dict, device: str, tmp: str, quick: bool) -> list[dict]:
    """Seconds per stage-5 epoch of RNN-2 on DS2 ``gru2``: from a stage-4 store vs recomputing the layer."""
    from ser_modules.dump import dump_asr_layers
    from ser_modules.models.ser import FineTuneRNN, FrozenASRLayer

    info = asr.get(("ds2", "demo"))
    if info is None:
        return []
    model, features = info["model"].eval(), info["features"]
    folder = os.path.join(tmp, "epoch_audio")
    os.makedirs(folder, exist_ok=True)
    frame, csv = _synthetic_corpus(folder, iemocap_like_durations(32 if quick else 128, seed=2))
    store = dump_asr_layers(model, features, frame, csv, ["gru2"], os.path.join(tmp, "epoch_store"), "ds2", "bench-epoch",
                            device, 16, "float16")
    batch = int(ser_hp["batch_size"])
    hidden = 32
    ids, rows = frame["ID"].tolist(), []
    order = np.argsort(frame["duration"].to_numpy())
    batches = [[ids[i] for i in order[k : k + batch]] for k in range(0, len(ids), batch)]

    def epoch(get_inputs) -> float:
        torch.manual_seed(0)
        head = FineTuneRNN(model.layer_sizes["gru2"], hidden).to(device)
        opt = torch.optim.Adam(head.parameters(), lr=1e-3)
        started = time.perf_counter()
        for b in batches:
            x, n = get_inputs(b)
            loss = head(x, n).logsumexp(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        synchronize(device)
        return time.perf_counter() - started

    from ser_modules.ser_training import pad_sequences

    def stored(b):
        x, n = pad_sequences([torch.from_numpy(store.get(i, "gru2")) for i in b])
        return x.to(device), n.to(device)

    frozen = FrozenASRLayer(model, "gru2")
    wav_of = dict(zip(frame["ID"], frame["wav"]))

    def recomputed(b):
        from ser_modules.audio import load_audio

        wavs = [load_audio(wav_of[i]) for i in b]
        lengths = torch.tensor([len(w) for w in wavs], device=device)
        feats, frames = features(torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device), lengths)
        return frozen(feats, frames)

    t_stored, t_recomputed = epoch(stored), epoch(recomputed)
    rows.append({"what": f"stage 5 epoch, RNN-2 on stored DS2 gru2 ({len(ids)} utterances)", "seconds": round(t_stored, 2)})
    rows.append({"what": f"stage 5 epoch, RNN-2 recomputing DS2 gru2 ({len(ids)} utterances)",
                 "seconds": round(t_recomputed, 2)})
    return rows


# ----------------------------------------------------------------------------------------------
# Scaling of stages 4 and 5 with corpus size


def replicate_protocol(data_dir: str, out_dir: str, protocol: str, factor: int) -> None:
    """Copy a prepared emotion corpus with every utterance repeated ``factor`` times (ids ``<id>~k``);
    each copy stays in its original's fold split, so folds keep their speakers."""
    import json

    from ser_modules.fileio import read_manifest, write_csv, write_json

    src, dst = os.path.join(data_dir, "emotion"), os.path.join(out_dir, "emotion")
    os.makedirs(os.path.join(dst, protocol), exist_ok=True)

    def copies(frame):
        parts = []
        for k in range(factor):
            part = frame.copy()
            if k:
                part["ID"] = part["ID"] + f"~{k}"
                for col in ("prev_same", "prev_other"):
                    if col in part.columns:
                        part[col] = part[col].map(lambda x, k=k: f"{x}~{k}" if x else x)
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    write_csv(os.path.join(dst, protocol, "manifest.csv"), copies(read_manifest(os.path.join(src, protocol, "manifest.csv"))))
    if os.path.isfile(os.path.join(src, "turns.csv")):
        write_csv(os.path.join(dst, "turns.csv"), copies(read_manifest(os.path.join(src, "turns.csv"))))
    for name in os.listdir(os.path.join(src, protocol)):
        if name.startswith("folds_"):
            with open(os.path.join(src, protocol, name), encoding="utf-8") as f:
                data = json.load(f)
            for fold in data["folds"]:
                for split in ("train", "valid", "test"):
                    fold[split] = [i if k == 0 else f"{i}~{k}" for i in fold[split] for k in range(factor)]
            write_json(os.path.join(dst, protocol, name), data)
    shutil.copy(os.path.join(data_dir, "prepare_summary.json"), os.path.join(out_dir, "prepare_summary.json"))


def _run_measured(cmd: list[str], log_path: str) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak summed RSS of its process tree in MB)."""
    with open(log_path, "w", encoding="utf-8") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": REPO})
        monitor = TreeMemoryMonitor(proc.pid)
        monitor.start()
        code = proc.wait()
        peak = monitor.stop()
    if code:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {code}; see {log_path}")
    return time.perf_counter() - started, peak


def scaling(out: str, factors=(1, 2, 4, 8), nj: int = 2, demo_dir: str | None = None) -> pd.DataFrame:
    """Stages 4 and 5 of ``ctc_transfer`` (demo size, an untrained DS2, two SER variants at 3 epochs)
    on the demo emotion corpus replicated ``factors`` times."""
    from ser_modules.asr_models import export_model, model_blocks
    from ser_modules.hparams import load_stage_hparams

    work = os.path.join(out, "scaling_work")
    data = os.path.join(work, "data")
    if not os.path.isfile(os.path.join(data, "prepare_summary.json")):
        demo_dir = demo_dir or os.path.join(REPO, "corpora", "demo")
        subprocess.run([sys.executable, os.path.join(REPO, "local", "prepare_data.py"), "--out", data, "--demo-dir",
                        demo_dir, "--skip-asr", "--seed", "1"], check=True, env={**os.environ, "PYTHONPATH": REPO})
    conf = os.path.join(RECIPES, "ctc_transfer", "conf")
    protocol, folds = "lakomkin2018", "loso"
    overrides = ["ser.variants=[{name: RNN-2, type: rnn, asr: pretrained, layer: gru2, hidden: 32, max_epochs: 3},"
                 " {name: baseline, type: baseline, hidden: 32, max_epochs: 3}]", "ser.n_runs=1", "dump.augmented_copies=0",
                 "dump.egemaps=False"]  # the two variants read the DS2 layer and the handcrafted features only
    rows = []
    for factor in factors:
        exp = os.path.join(work, f"x{factor}")
        shutil.rmtree(exp, ignore_errors=True)
        replicate_protocol(data, os.path.join(exp, "data"), protocol, factor)
        hp, resolved = load_stage_hparams(conf, "asr", "demo", {"output_folder": os.path.join(exp, "asr"),
                                                                 "data_folder": os.path.join(exp, "data")})
        blocks = os.path.join(exp, "asr", "model_hparams.yaml")
        with open(blocks, "w", encoding="utf-8") as f:
            f.write(model_blocks(resolved))
        export_model(hp["model"], os.path.join(exp, "asr"), blocks, extra={"model_name": "ds2"})
        common = ["--exp-dir", exp, "--data-dir", os.path.join(exp, "data"), "--conf-dir", conf, "--size", "demo",
                  "--protocol", protocol, "--folds", folds, "--device", "cpu", "--nj", str(nj), "--"] + overrides
        n_utts = len(pd.read_csv(os.path.join(exp, "data", "emotion", protocol, "manifest.csv")))
        hours = pd.read_csv(os.path.join(exp, "data", "emotion", protocol, "manifest.csv"))["duration"].sum() / 3600
        for stage, module in (("4 dump", "ser_modules.stages.dump"), ("5 SER", "ser_modules.stages.ser_train")):
            seconds, peak = _run_measured([sys.executable, "-m", module, *common],
                                          os.path.join(exp, f"stage{stage[0]}.log"))
            rows.append({"stage": stage, "factor": factor, "utterances": n_utts, "hours": round(hours, 3),
                         "seconds": round(seconds, 1), "peak_rss_mb": round(peak, 1)})
            print(f"scaling x{factor}: stage {stage}: {seconds:.1f} s, peak RSS {peak:.0f} MB", flush=True)
    return pd.DataFrame(rows)


def write_librispeech_tree(root: str, n_files: int, seed: int = 0) -> float:
    """A LibriSpeech-layout tree of ``n_files`` short FLAC utterances (0.5-1.5 s of noisy tones) in
    ``train-clean-100`` (100 utterances per chapter, 10 chapters per speaker), plus 100 each in
    ``dev-clean`` and ``test-clean``; returns its hours. Sixteen encoded files are copied around, so
    writing costs little next to what is measured."""
    import io

    import soundfile as sf

    rng = np.random.default_rng(seed)
    blobs, seconds = [], []
    for k in range(16):
        n = int(SAMPLE_RATE * (0.5 + k / 15))
        wav = 0.1 * np.sin(2 * np.pi * (150 + 20 * k) * np.arange(n) / SAMPLE_RATE) + 0.01 * rng.standard_normal(n)
        buffer = io.BytesIO()
        sf.write(buffer, wav.astype(np.float32), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        blobs.append(buffer.getvalue())
        seconds.append(n / SAMPLE_RATE)
    total = 0.0
    for subset, count in (("train-clean-100", n_files), ("dev-clean", 100), ("test-clean", 100)):
        for i in range(count):
            speaker, chapter, utt = i // 1000, (i // 100) % 10, i % 100
            folder = os.path.join(root, subset, str(speaker), str(chapter))
            if utt == 0:
                os.makedirs(folder, exist_ok=True)
                trans = open(os.path.join(folder, f"{speaker}-{chapter}.trans.txt"), "w", encoding="utf-8")
            with open(os.path.join(folder, f"{speaker}-{chapter}-{utt:04d}.flac"), "wb") as f:
                f.write(blobs[i % 16])
            trans.write(f"{speaker}-{chapter}-{utt:04d} A SHORT SENTENCE OF READ SPEECH\n")
            total += seconds[i % 16]
            if utt == 99 or i == count - 1:
                trans.close()
    return total / 3600


def prep_scale(out: str, sizes=(10_000, 100_000), nj: int = 2) -> pd.DataFrame:
    """Stage 1's ASR preparation (reading the tree, checking every audio file in ``nj`` processes,
    writing the manifests) on generated LibriSpeech trees of ``sizes`` files: wall time, time per
    10k files and the peak RSS of the process tree."""
    rows = []
    for n in sizes:
        work = os.path.join(out, f"prep_scale_{n}")
        shutil.rmtree(work, ignore_errors=True)
        started = time.perf_counter()
        hours = write_librispeech_tree(os.path.join(work, "LibriSpeech"), n)
        print(f"prep-scale: wrote {n + 200} files ({hours:.1f} h) in {time.perf_counter() - started:.0f} s", flush=True)
        cmd = [sys.executable, os.path.join(REPO, "local", "prepare_asr.py"), "--corpus", "librispeech", "--root",
               os.path.join(work, "LibriSpeech"), "--out", os.path.join(work, "asr"), "--nj", str(nj),
               "--librispeech-subsets", "train=train-clean-100;dev=dev-clean;test=test-clean"]
        seconds, peak = _run_measured(cmd, os.path.join(work, "prepare_asr.log"))
        files = n + 200
        rows.append({"files": files, "hours": round(hours, 2), "nj": nj, "seconds": round(seconds, 1),
                     "seconds_per_10k_files": round(seconds / files * 10_000, 1), "peak_rss_mb": round(peak, 1)})
        print(f"prep-scale: {files} files: {seconds:.1f} s ({rows[-1]['seconds_per_10k_files']} s per 10k files), "
              f"peak RSS {peak:.0f} MB", flush=True)
        shutil.rmtree(os.path.join(work, "LibriSpeech"), ignore_errors=True)  # gigabytes of generated audio
    frame = pd.DataFrame(rows)
    frame.to_csv(os.path.join(out, "prep_scale.csv"), index=False)
    return frame


# ----------------------------------------------------------------------------------------------
# Reports


def markdown(frame: pd.DataFrame) -> str:
    from ser_modules.scoring import markdown_table

    return markdown_table(frame)


def plot_ratios(frame: pd.DataFrame, path: str) -> str:
    from ser_modules import plots

    return plots.plot_benchmark(frame, path)


def run(out: str, device: str = "cpu", quick: bool = False, sizes=("demo", "paper"), with_scaling: bool = False,
        models: list[str] | None = None) -> pd.DataFrame:
    from ser_modules.fileio import write_csv, write_text
    from ser_modules.scoring import environment

    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="ser_benchmark_")
    started = time.perf_counter()
    try:
        gemm = gemm_rate(device, seconds=0.5 if quick else 2.0)
        extra = {"gemm_bf16_gflops": round(gemm_rate(device, torch.bfloat16), 1)} if device.startswith("cuda") else {}
        print(f"GEMM fp32: {gemm:.1f} GFLOP/s on {device} ({torch.get_num_threads()} threads)", flush=True)
        gru = gru_kernel_name(device)
        print(f"GRU layers run on: {gru}", flush=True)
        durations = iemocap_like_durations(512)
        rows, asr = [], {}
        for size in sizes:
            for recipe in ("ctc_transfer", "las_adapt"):
                case, info = asr_case(recipe, size, device, tmp, quick)
                asr[(case.model, size)] = info
                if models and case.model not in models:
                    continue
                rows.append({**measure(case, durations, device, gemm, quick), "gru_kernel": gru})
                print(_line(rows[-1]), flush=True)
            for recipe, name in (("ctc_transfer", "ds2"), ("las_adapt", "las")):
                ser_hp = _conf(recipe, "ser", size, tmp)
                seen = set()
                for v in ser_hp["variants"]:
                    if v["type"] in seen or (models and v["type"] not in models) or v["type"] == "reference":
                        continue
                    seen.add(v["type"])
                    case = ser_case(v, ser_hp, asr[(name, size)]["model"].layer_sizes, size, device, quick)
                    rows.append({**measure(case, durations, device, gemm, quick), "gru_kernel": gru})
                    print(_line(rows[-1]), flush=True)
        frame = pd.DataFrame(rows)
        frame = frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]
        write_csv(os.path.join(out, "benchmark.csv"), frame)
        stage_rows = dump_rates(asr, device, tmp, quick)
        stage_rows += stored_vs_recomputed(asr, _conf("ctc_transfer", "ser", "demo", tmp), device, tmp, quick)
        for r in stage_rows:
            print(" ".join(f"{k}={v}" for k, v in r.items()), flush=True)
        stages = pd.DataFrame(stage_rows)
        write_csv(os.path.join(out, "stages.csv"), stages)
        plot_ratios(frame, os.path.join(out, "benchmark.png"))
        env = environment()
        md = ["# Benchmark", "", f"Device {device}, {torch.get_num_threads()} threads, torch {env['torch']}, "
              f"{env['platform']}, git {env['git_commit']}, {env['date']}. GRU layers: {gru}. GEMM fp32 {gemm:.1f} GFLOP/s"
              + (f", bf16 {extra['gemm_bf16_gflops']} GFLOP/s" if extra else "") + ".", "",
              "Training steps (`ratio` = achieved FLOP rate / GEMM rate; FLOPs counted on valid frames, "
              "training = 3 x forward; `peak_mb` above the memory in use before the step):", "",
              markdown(frame), "", "Stages 4 and 5:", "", markdown(stages.astype(object).fillna("")), ""]
        if with_scaling:
            scale = scaling(out)
            write_csv(os.path.join(out, "scaling.csv"), scale)
            from ser_modules import plots

            plots.plot_scaling(scale, os.path.join(out, "scaling.png"))
            md += ["Scaling of stages 4 and 5 with the corpus replicated (peak RSS of the process tree):", "",
                   markdown(scale), ""]
        md += [f"Benchmark time {time.perf_counter() - started:.0f} s.", ""]
        write_text(os.path.join(out, "benchmark.md"), "\n".join(md))
        print(f"benchmark written to {out} in {time.perf_counter() - started:.0f} s")
        return frame
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _line(row: dict) -> str:
    return (f"{row['model']:<28} {row['size']:<5} batch {row['batch']:>3}: {row['frames_per_s']:>9.0f} frames/s "
            f"{row['gflops']:>7.2f} GFLOP/s ratio {row['ratio']:.3f} peak {row['peak_mb']:.0f} MB "
            f"({row['step_ms']:.0f} ms/step)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for benchmark.csv, benchmark.md, benchmark.png")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="fewer steps, smaller paper-size batches (< 3 min on 2 cores)")
    parser.add_argument("--scaling", action="store_true", help="also time stages 4-5 on the demo corpus x1, x2, x4, x8")
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--models", nargs="+", default=None,
                        help="only these: ds2 las baseline mp rnn progressive iaan (default all)")
    parser.add_argument("--prep-scale", type=int, nargs="*", default=None, metavar="FILES",
                        help="only stage 1's preparation of generated LibriSpeech trees of these many files "
                             "(default 10000 100000): time per 10k files and peak memory")
    parser.add_argument("--nj", type=int, default=2, help="processes of --prep-scale's audio check")
    args = parser.parse_args(argv)
    if args.prep_scale is not None:
        os.makedirs(args.out, exist_ok=True)
        print(prep_scale(args.out, args.prep_scale or (10_000, 100_000), args.nj).to_string(index=False))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    run(args.out, args.device, args.quick, args.sizes, args.scaling, args.models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
