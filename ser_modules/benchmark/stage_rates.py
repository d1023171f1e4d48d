"""Whole stages measured: stage 4's dump rate (x real time), stage 5's epoch with stored versus
recomputed representations, stages 4-5 on a replicated corpus (``--scaling``) and stage 1's
preparation of generated LibriSpeech trees (``--prep-scale``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import torch

from ser_modules.benchmark.machine import TreeMemoryMonitor, synchronize
from ser_modules.benchmark.steps import RECIPES, REPO, SAMPLE_RATE, iemocap_like_durations

# ----------------------------------------------------------------------------------------------
# Stage 4 dump rate and stage 5 epochs from stored vs recomputed representations


def _synthetic_corpus(folder: str, durations) -> tuple[pd.DataFrame, str]:
    """WAV files of noise-excited formant-like signals and their manifest."""
    from ser_modules.data.audio import write_audio

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
    from ser_modules.data.features import HandcraftedFeatures
    from ser_modules.dump.writing import dump_asr_layers, dump_features

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
    from ser_modules.dump.writing import dump_asr_layers
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

    from ser_modules.ser.inputs import pad_sequences

    def stored(b):
        x, n = pad_sequences([torch.from_numpy(store.get(i, "gru2")) for i in b])
        return x.to(device), n.to(device)

    frozen = FrozenASRLayer(model, "gru2")
    wav_of = dict(zip(frame["ID"], frame["wav"]))

    def recomputed(b):
        from ser_modules.data.audio import load_audio

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

    from ser_modules.utils.fileio import read_manifest, write_csv, write_json

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
    from ser_modules.asr.saved_models import export_model, model_blocks
    from ser_modules.utils.hparams import load_stage_hparams

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
# Stage 4 with pretrained upstreams: audio encoded per second and the FLOP rate, per format


UPSTREAM_BATCH = 8  # conf/dump.yaml's batch_size of upstream_probe


def base_upstreams() -> dict[str, tuple]:
    """Base-size upstreams of each batching kind, random weights from transformers' configs (the same
    computation as the trained ones; nothing downloaded): ``{name: (upstream, front end)}``."""
    import transformers
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from ser_modules.upstreams.encoders import HFUpstream, WaveformInput

    torch.manual_seed(0)
    whisper = WhisperEncoder(transformers.WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8,
                                                        encoder_ffn_dim=2048, num_mel_bins=80))  # Whisper base
    group = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config())  # wav2vec2-base: group norm
    layer = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True))
    models = {"whisper-base 30s windows": HFUpstream(whisper, "whisper", "30s"),
              "whisper-base utterance windows": HFUpstream(whisper, "whisper", "utterance"),
              "wav2vec2-base (group norm)": HFUpstream(group, "wav2vec2"),
              "wav2vec2-base layer-norm style": HFUpstream(layer, "wav2vec2")}
    return {name: (m.eval(), WaveformInput(m.win)) for name, m in models.items()}


def _batches(frame: pd.DataFrame, csv: str, batch_size: int):
    """The padded batches stage 4 makes of ``frame`` (its manifest ``csv``), with the dump's own sampler and
    loader (:func:`~ser_modules.dump.writing.dump_asr_layers`), as ``(wavs, samples)``."""
    from ser_modules.data.datasets import LengthBucketBatchSampler, absolute_lengths, make_loader, manifest_dataset

    sampler = LengthBucketBatchSampler(frame["duration"].astype(float).tolist(), batch_size, shuffle=False)
    for batch in make_loader(manifest_dataset(csv), sampler):
        wavs, rel = batch.sig
        yield wavs, absolute_lengths(rel, wavs.shape[1])


def upstream_rates(upstreams: dict[str, tuple], gemm: float, tmp: str, quick: bool, device: str = "cpu") -> list[dict]:
    """Stage 4 (:func:`~ser_modules.dump.writing.dump_asr_layers`, every layer, batches of
    :data:`UPSTREAM_BATCH`) of each upstream on 3-5 s utterances (an acted corpus's): seconds of audio
    encoded per second and the FLOP rate (FLOPs counted by ``torch.utils.flop_counter`` over the same
    batches, padding included: what the machine did) against the GEMM rate; ``batched`` says whether
    the format runs a padded batch together or one utterance at a time."""
    from torch.utils.flop_counter import FlopCounterMode

    from ser_modules.dump.writing import dump_asr_layers

    folder = os.path.join(tmp, "upstream_audio")
    os.makedirs(folder, exist_ok=True)
    durations = np.random.default_rng(2).uniform(3.0, 5.0, 16 if quick else 48).round(3)
    frame, csv = _synthetic_corpus(folder, durations)
    rows = []
    for name, (model, features) in upstreams.items():
        model, features = model.to(device).eval(), features.to(device)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:  # the dump's own batches (length-sorted buckets), counted once, not timed
            for wavs, samples in _batches(frame, csv, UPSTREAM_BATCH):
                model.forward_layers(*features(wavs.to(device), samples.to(device)), model.layer_names)
        flops_per_second = counter.get_total_flops() / float(durations.sum())
        synchronize(device)
        started = time.perf_counter()
        dump_asr_layers(model, features, frame, csv, model.layer_names, os.path.join(tmp, "upstream_stores"),
                        name.replace(" ", "_"), f"bench-{name}", device, UPSTREAM_BATCH, "float16")
        synchronize(device)
        elapsed = time.perf_counter() - started
        audio_per_s = float(durations.sum()) / elapsed
        gflops = flops_per_second * audio_per_s / 1e9
        rows.append({"what": f"stage 4 upstream {name}", "batched": bool(getattr(model, "batched", False)),
                     "audio_s_per_s": round(audio_per_s, 2), "gflop_per_audio_s": round(flops_per_second / 1e9, 2),
                     "gflops": round(gflops, 1), "ratio": round(gflops / gemm, 3)})
        print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    return rows
