"""Streaming inference (:mod:`ser_modules.infer`): windows read one at a time and run in batches of at
most ``batch_size``, each ASR model run once per window for both the SER layer and the transcript,
peak memory independent of the recording's length, and the experiment's own decoding keys.

The trained experiments are conftest.py's tiny ``ctc_exp`` (DeepSpeech2; MP-2, baseline-8,
Progressive-1) and ``las_exp`` (LAS with per-fold adapted models; IAAN variants)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from ser_modules.asr.decoding import Transcriber
from ser_modules.data.text import CharVocabulary
from ser_modules.infer import main as infer_main
from ser_modules.inference.recognizer import EmotionRecognizer
from ser_modules.utils.jobs import resolve_device

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 16000


def emotion_wavs(exp, protocol: str) -> list[str]:
    manifest = pd.read_csv(exp / "data" / "emotion" / protocol / "manifest.csv", keep_default_na=False)
    return manifest["wav"].tolist()


def long_recording(path, sources: list[str], seconds: float) -> str:
    """A file of ``seconds`` of emotion turns back to back (``sources`` repeated as needed)."""
    parts, total, i = [], 0, 0
    while total < seconds * SR:
        parts.append(sf.read(sources[i % len(sources)], dtype="float32")[0])
        total, i = total + len(parts[-1]), i + 1
    sf.write(str(path), np.concatenate(parts)[: int(seconds * SR)], SR)
    return str(path)


def longest(paths: list[str]) -> float:
    return max(sf.info(p).duration for p in paths)


def old_way(rec: EmotionRecognizer, paths: list[str]) -> dict[str, dict]:
    """What inference gave before streaming, for files whose windows fit one batch: every window of
    every file loaded at once, one batch through the SER models (``predict_signals``: each ASR model's
    ``forward_layers``) and, separately, through the transcript decoder (``transcribe``: the ASR model's
    own forward), then each file's probabilities averaged over its windows weighted by duration."""
    windows = {p: rec.windows(p) for p in paths}
    wavs = [w for p in paths for w in windows[p]]
    contexts = [rec.dialog_context(p)[0] for p in paths for _ in windows[p]]
    probs, texts = rec.predict_signals(wavs, contexts), rec.transcribe(wavs)
    out, k = {}, 0
    for p in paths:
        n = len(windows[p])
        lengths = np.array([len(w) for w in windows[p]], dtype=float)
        out[p] = {"p": (probs[k : k + n] * lengths[:, None]).sum(0) / lengths.sum(), "windows": n,
                  "transcript": " ".join(t for t in texts[k : k + n] if t), "duration": round(lengths.sum() / SR, 3)}
        k += n
    return out


def probabilities(rows: list[dict], classes: list[str]) -> np.ndarray:
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])


CASES = [  # (experiment, variant, fold, decoder): DS2 ensembles and one fold, LAS with per-fold adapted models
    ("ctc", "MP-2", None, "greedy"),
    ("ctc", "Progressive-1", "session1", "beam"),
    ("ctc", "baseline-8", None, "beam"),  # SER reads no ASR layer; the transcript model runs alone
    ("las", "IAAN-structured-pblstm2", None, "joint"),  # two adapted listeners; the transcript from session1's
]


PROTOCOL = {"ctc": "lakomkin2018", "las": "standard"}


def experiment(request, which: str):
    """``(folder, protocol)`` of the tiny trained experiment ``ctc`` or ``las`` (trained once per module,
    only when a test asks for it)."""
    return request.getfixturevalue(f"{which}_exp")[0], PROTOCOL[which]


@pytest.mark.parametrize("which,variant,fold,decoder", CASES, ids=[c[1] for c in CASES])
def test_streaming_rows_equal_the_old_single_batch(request, tmp_path, which, variant, fold, decoder):
    exp, protocol = experiment(request, which)
    rec = EmotionRecognizer.from_experiment(str(exp), variant, fold=fold, decoder=decoder, device="cpu")
    wavs = emotion_wavs(exp, protocol)
    short = wavs[:5]
    rec.max_seconds = longest(short)  # every short turn is one window
    long = long_recording(tmp_path / "long.wav", wavs[5:8], 3.5 * rec.max_seconds)  # 4 windows
    files = short[:2] + [long] + short[2:]
    reference = old_way(rec, files)
    assert reference[long]["windows"] == 4
    n_windows = sum(r["windows"] for r in reference.values())
    # Before: one batch (the files' windows fit it). Now the same batch, then batches of 3 and of 1
    # window, where the long file's windows span several batches. Other batches round differently in
    # the last float bits, as they did before when other files shared a batch: at 3e-8 with
    # DeepSpeech2's float32 stores, at up to 1e-4 through the float16 rounding of the LAS stores.
    for batch_size in (n_windows, 3, 1):
        rows = rec.predict_files(files, batch_size=batch_size)
        assert [r["file"] for r in rows] == files and all(r["status"] == "ok" for r in rows)
        want = np.array([reference[f]["p"] for f in files])
        atol = 1e-6 if batch_size == n_windows or rec.store_dtype() == torch.float32 else 1e-4
        np.testing.assert_allclose(probabilities(rows, rec.classes), want, atol=atol, rtol=0, err_msg=str(batch_size))
        assert [r["transcript"] for r in rows] == [reference[f]["transcript"] for f in files], batch_size
        assert [r["windows"] for r in rows] == [reference[f]["windows"] for f in files]
        assert [r["duration"] for r in rows] == [reference[f]["duration"] for f in files]
        assert [r["emotion"] for r in rows] == [rec.classes[int(reference[f]["p"].argmax())] for f in files]
    if decoder != "greedy" and rec.transcriber() is not None:
        assert any(reference[f]["transcript"] for f in files)  # the comparison includes real transcripts


def test_a_long_file_in_several_batches_equals_one_batch(ctc_exp, tmp_path):
    exp, protocol = ctc_exp[0], PROTOCOL["ctc"]
    rec = EmotionRecognizer.from_experiment(str(exp), "MP-2", device="cpu", decoder="beam")
    rec.max_seconds = 2.0
    long = long_recording(tmp_path / "long.wav", emotion_wavs(exp, protocol)[:6], 13.0)  # 7 windows
    whole = rec.predict_files([long], batch_size=7)[0]
    assert whole["windows"] == 7 and whole["status"] == "ok"
    for batch_size in (1, 2, 3, 6):
        part = rec.predict_files([long], batch_size=batch_size)[0]
        for c in rec.classes:
            assert part[f"p_{c}"] == pytest.approx(whole[f"p_{c}"], abs=1e-6), batch_size
        assert part["transcript"] == whole["transcript"] and part["duration"] == whole["duration"]


def test_a_window_that_cannot_be_heard_fails_its_file_only(ctc_exp, tmp_path):
    exp, protocol = ctc_exp[0], PROTOCOL["ctc"]
    rec = EmotionRecognizer.from_experiment(str(exp), "MP-2", device="cpu", max_seconds=1.0)
    good = emotion_wavs(exp, protocol)[0]
    data, _ = sf.read(good, dtype="float32")
    again = shutil.copy(good, tmp_path / "again.wav")
    bad = tmp_path / "silent_tail.wav"  # 1 s of speech, then 1.5 s of digital silence: the last window fails
    sf.write(str(bad), np.concatenate([data[:SR], np.zeros(3 * SR // 2, dtype=np.float32)]), SR)
    rows = rec.predict_files([good, str(bad), str(again)], batch_size=2)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert "every sample is zero" in rows[1]["error"] and str(bad) in rows[1]["error"]
    assert rows[0]["transcript"] == rows[2]["transcript"]
    assert rows[0]["p_" + rec.classes[0]] == pytest.approx(rows[2]["p_" + rec.classes[0]], abs=1e-6)


def count_rows(module: torch.nn.Module) -> list[int]:
    """The batch rows that go through ``module`` (a forward pre-hook), summed over calls."""
    seen = [0]
    module.register_forward_pre_hook(lambda _m, args: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    return seen


def first_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The module every forward of the ASR model starts with (DS2's first convolution, the LAS listener's BLSTM)."""
    return model.listener.blstm if hasattr(model, "listener") else model.conv1


@pytest.mark.parametrize("which,variant,fold,decoder", CASES, ids=[c[1] for c in CASES])
def test_each_asr_model_runs_once_per_window(request, tmp_path, which, variant, fold, decoder):
    exp, protocol = experiment(request, which)
    rec = EmotionRecognizer.from_experiment(str(exp), variant, fold=fold, decoder=decoder, device="cpu")
    paths = {f.asr_path for f in rec.folds if f.asr_path} | {rec.transcript_asr}
    counters = {p: count_rows(first_layer(rec._asr_model(p)[0])) for p in paths}
    if which == "las" and fold is None:  # adapted per fold: two models, the transcript from the first fold's
        assert len(paths) == 2 and rec.transcript_asr == rec.folds[0].asr_path
    wavs = emotion_wavs(exp, protocol)
    rec.max_seconds = longest(wavs[:3])
    long = long_recording(tmp_path / "long.wav", wavs[3:6], 2.5 * rec.max_seconds)  # 3 windows
    rows = rec.predict_files(wavs[:3] + [long], batch_size=2)
    assert [r["windows"] for r in rows] == [1, 1, 1, 3] and all(r["status"] == "ok" for r in rows)
    assert {p: c[0] for p, c in counters.items()} == {p: 6 for p in paths}  # 6 windows, each model once per window


def ctc_upstream(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "utils"))
    from make_tiny_upstream import make_tiny_upstream
    from ser_modules.upstreams.ctc import CTCUpstream
    from ser_modules.upstreams.loading import load_upstream

    upstream, _ = load_upstream(make_tiny_upstream("wavlm", str(tmp_path / "wavlm-tiny")))
    torch.manual_seed(0)
    return CTCUpstream(upstream, 29).eval()


def test_layers_and_decoder_input_come_from_one_forward_equal_to_the_separate_ones(tmp_path):
    from ser_modules.models.ds2 import DeepSpeech2
    from ser_modules.models.las import ListenAttendSpell

    torch.manual_seed(0)
    ds2 = DeepSpeech2(n_freq=41, conv_channels=2, conv1_kernel=(11, 5), conv2_kernel=(5, 5), rnn_layers=2,
                      rnn_hidden=8).eval()
    las = ListenAttendSpell(n_input=12, listener_hidden=6, fc_size=8, speller_hidden=8, attention_dim=4,
                            embedding_dim=4, ctc_head=True).eval()
    lengths = torch.tensor([50, 37, 21])
    for model, feats, layers in ((ds2, torch.randn(3, 50, 41), ["gru1"]), (ds2, torch.randn(3, 50, 41), ["conv", "gru2"]),
                                 (las, torch.randn(3, 50, 12), ["pblstm1"]), (las, torch.randn(3, 50, 12), ["blstm"])):
        vocab = CharVocabulary(["<blank>"] if model is ds2 else ["<pad>", "<sos>", "<eos>"])
        transcriber = Transcriber(model, vocab, beam_size=2)
        with torch.no_grad():
            got, (out, out_lengths) = transcriber.encode_with_layers(feats, lengths, layers)
            want = model.forward_layers(feats, lengths, layers)
            want_out, want_lengths = transcriber.encode(feats, lengths)
        assert list(got) == layers
        for name in layers:
            assert torch.equal(got[name][0], want[name][0]) and torch.equal(got[name][1], want[name][1])
        assert torch.equal(out, want_out) and torch.equal(out_lengths, want_lengths)
        for method in transcriber.methods:  # decoding that input is decoding the features
            assert transcriber.decode(out, out_lengths, method) == transcriber(feats, lengths, method)
    # A CTC-adapted upstream: its layers and its CTC logits from one pass of hidden states.
    model = ctc_upstream(tmp_path)
    wavs, samples = torch.randn(2, 9000), torch.tensor([9000, 6400])
    wavs[1, 6400:] = 0
    calls = []
    hidden_states = model.upstream.hidden_states
    model.upstream.hidden_states = lambda *a: calls.append(1) or hidden_states(*a)
    transcriber = Transcriber(model, CharVocabulary(["<blank>"]))
    with torch.no_grad():
        got, (logits, frames) = transcriber.encode_with_layers(wavs, samples, ["layer0", "layer2"])
        assert len(calls) == 1
        want = model.forward_layers(wavs, samples, ["layer0", "layer2"])
        want_logits, want_frames = model(wavs, samples)
    for name in ("layer0", "layer2"):
        assert torch.equal(got[name][0], want[name][0]) and torch.equal(got[name][1], want[name][1])
    assert torch.equal(logits, want_logits) and torch.equal(frames, want_frames)


def copy_experiment(exp, dest):
    """The experiment without its representation stores (what inference reads)."""
    return shutil.copytree(exp, dest, ignore=lambda d, names: [n for n in names if os.path.basename(d) == "dump"
                                                              and os.path.isdir(os.path.join(d, n))])


def test_decoding_keys_come_from_the_experiment(ctc_exp, las_exp, tmp_path, capsys):
    exp, protocol = ctc_exp[0], PROTOCOL["ctc"]
    copy = copy_experiment(exp, tmp_path / "ctc")
    hparams = copy / "asr" / "hyperparams.yaml"
    text = hparams.read_text()
    assert "\nbeam_size: " in text
    hparams.write_text("\n".join("beam_size: 3" if ln.startswith("beam_size:") else ln for ln in text.splitlines()))
    rec = EmotionRecognizer.from_experiment(str(copy), "MP-2", decoder="beam")
    assert rec.transcriber().beam_size == 3 and rec.transcriber()._beam.beam_size == 3
    assert rec.decoding_summary() == ("transcripts: beam search, beam_size 3 from asr/hyperparams.yaml "
                                      "(DeepSpeech2 asr/model.pt)")
    overridden = EmotionRecognizer.from_experiment(str(copy), "MP-2", decoder="beam", beam_size=2)
    assert overridden.transcriber()._beam.beam_size == 2
    # The command line says which decoder and keys it used.
    wav = emotion_wavs(exp, protocol)[0]
    assert infer_main([str(copy), wav, "--out", str(tmp_path / "o.csv"), "--decoder", "beam"]) == 0
    assert "; transcripts: beam search, beam_size 3 from asr/hyperparams.yaml" in capsys.readouterr().err
    assert infer_main([str(copy), wav, "--out", str(tmp_path / "o.csv"), "--decoder", "beam", "--beam-size", "5"]) == 0
    assert "beam_size 5 from --beam-size" in capsys.readouterr().err
    hparams.write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("beam_size:")))
    rec = EmotionRecognizer.from_experiment(str(copy), "MP-2", decoder="beam")
    assert rec.transcriber()._beam.beam_size == 4 and "beam_size 4 (default)" in rec.decoding_summary()
    assert EmotionRecognizer.from_experiment(str(copy), "MP-2").decoding_summary() == \
        "transcripts: greedy decoding (DeepSpeech2 asr/model.pt)"

    # An adapted model transcribes with stage 3's keys (its configuration, adapt/hyperparams.yaml), else stage 2's.
    exp = las_exp[0]
    copy = copy_experiment(exp, tmp_path / "las")
    stage3 = copy / "adapt" / "hyperparams.yaml"
    lines = stage3.read_text().splitlines()
    assert any(ln.startswith("beam_size: ") for ln in lines) and any(ln.startswith("decode_ctc_weight: ") for ln in lines)
    stage3.write_text("\n".join("beam_size: 7" if ln.startswith("beam_size:") else "decode_ctc_weight: 0.25"
                                if ln.startswith("decode_ctc_weight:") else ln for ln in lines))
    rec = EmotionRecognizer.from_experiment(str(copy), "IAAN-structured-pblstm2", decoder="joint")
    joint = rec.transcriber()._joint
    assert rec.transcript_asr.endswith(os.path.join("adapt", "structured", "session1", "model.pt"))
    assert joint.beam_size == 7 and joint.ctc_weight == pytest.approx(0.25)
    assert "beam_size 7 and decode_ctc_weight 0.25 from adapt/hyperparams.yaml" in rec.decoding_summary()
    stage2 = (copy / "asr" / "hyperparams.yaml").read_text()
    beam = next(int(ln.split(":")[1]) for ln in stage2.splitlines() if ln.startswith("beam_size:"))
    pretrained = EmotionRecognizer.from_experiment(str(copy), "IAAN-pretrained-pblstm1", decoder="beam")
    assert pretrained.transcriber()._beam.beam_size == beam  # the pretrained model: stage 2's keys
    assert f"beam_size {beam} from asr/hyperparams.yaml" in pretrained.decoding_summary()


def test_device_auto_is_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda:0"


PEAK_RSS = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from ser_modules.infer import EmotionRecognizer
    exp, wav, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rec = EmotionRecognizer.from_experiment(exp, "MP-2", fold="session1", device="cpu")
    started = time.time()
    row = rec.predict_files([wav], batch_size=batch_size)[0]
    print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "status": row["status"],
                      "windows": row["windows"], "duration": row["duration"], "seconds": time.time() - started}))
""")


def noise_and_tone(path, minutes: int) -> str:
    """``minutes`` of 16 kHz 16-bit PCM (a 220 Hz tone in noise), written a minute at a time."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", SR, 1, "PCM_16") as f:
        for m in range(minutes):
            t = np.arange(m * 60 * SR, (m + 1) * 60 * SR) / SR
            f.write((0.1 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
    return str(path)


def peak_rss(exp, wav: str, batch_size: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, str(exp), wav, str(batch_size)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_of_a_60_minute_file_is_that_of_a_1_minute_file(ctc_exp, tmp_path):
    exp = ctc_exp[0]
    started = time.time()
    short, long = noise_and_tone(tmp_path / "1min.wav", 1), noise_and_tone(tmp_path / "60min.wav", 60)
    generated = time.time() - started
    # The same batches (2 windows of 30 s) for both: only the number of batches differs.
    one, sixty = peak_rss(exp, short, 2), peak_rss(exp, long, 2)
    assert one["status"] == sixty["status"] == "ok"
    assert (one["windows"], sixty["windows"]) == (2, 120) and sixty["duration"] == 3600.0
    print(f"peak RSS: 1 min {one['rss_kb'] / 1024:.0f} MB, 60 min {sixty['rss_kb'] / 1024:.0f} MB "
          f"(inference {one['seconds']:.1f} s and {sixty['seconds']:.1f} s; files written in {generated:.1f} s)")
    assert sixty["rss_kb"] <= 1.3 * one["rss_kb"], (one, sixty)
