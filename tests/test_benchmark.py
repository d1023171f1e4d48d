"""Analytic FLOP counts (hand counts and PyTorch's FlopCounterMode), the store reader, and the
benchmark's pieces that are not timings (batches, replication of a corpus for the scaling runs)."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ser_modules.dump.store import FeatureStore, write_store
from ser_modules.models.ds2 import DeepSpeech2
from ser_modules.models.las import ListenAttendSpell
from ser_modules.models.lowrank import factorize_listener
from ser_modules.models.ser import IAAN, BiGRUBaseline, FineTuneMP, FineTuneRNN, ProgressiveNet


def counted(fn) -> int:
    """FLOPs PyTorch counts for ``fn`` (oneDNN's fused LSTM kernel is invisible to the counter: off)."""
    with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as mode:
        fn()
    return mode.get_total_flops()


def test_ds2_flops_by_hand_and_by_pytorch():
    model = DeepSpeech2(n_freq=11, conv_channels=2, conv1_kernel=(5, 3), conv2_kernel=(3, 3), rnn_layers=1,
                        rnn_hidden=4, n_symbols=5).eval()
    # conv1: 6 freq x 5 time outputs x 2 channels, 5 x 3 x 1 MACs each; conv2: 3 x 5 x 2, 3 x 3 x 2 MACs each;
    # BiGRU 6 -> 4 over 5 frames: 2 directions x 3 gates x 4 x (6 + 4); output 4 -> 5 on 5 frames.
    hand = 2 * (60 * 15) + 2 * (30 * 18) + 2 * 2 * 3 * 4 * 10 * 5 + 2 * 4 * 5 * 5
    assert hand == 5480
    assert model.forward_flops([10]) == hand
    assert counted(lambda: model(torch.randn(1, 10, 11), torch.tensor([10]))) == hand
    deeper = DeepSpeech2(n_freq=21, conv_channels=3, rnn_layers=3, rnn_hidden=6, n_symbols=7).eval()
    assert deeper.forward_flops([37]) == counted(lambda: deeper(torch.randn(1, 37, 21), torch.tensor([37])))
    # Utterances add up; padding adds nothing.
    assert deeper.forward_flops([37, 20]) == deeper.forward_flops([37]) + deeper.forward_flops([20])


def test_las_flops_by_hand_and_by_pytorch():
    model = ListenAttendSpell(n_input=3, listener_hidden=2, fc_size=4, speller_hidden=3, speller_layers=1,
                              attention_dim=2, embedding_dim=2, n_symbols=5).eval()
    frames, steps = 8, 3  # encoder frames: 8 -> 4 -> 2
    listener = (2 * 2 * 4 * 2 * (3 + 2) * 8  # BLSTM 3 -> 2 over 8 frames
                + 2 * 2 * 4 * 2 * (4 + 2) * 8 + 2 * 8 * 4 * 4  # pBLSTM1 (input 4) and FC 8 -> 4 on 4 frames
                + 2 * 2 * 4 * 2 * (4 + 2) * 4 + 2 * 8 * 4 * 2)  # pBLSTM2 and FC on 2 frames
    # Per step: LSTM (2 + 2 -> 3), query 3 -> 2, combination 5 -> 3, output 3 -> 5.
    per_step = 4 * 3 * (4 + 3) + 3 * 2 + 5 * 3 + 3 * 5
    # Keys and projected values (4 -> 2) once on the 2 encoder frames; per step, energies and the
    # context average over them (2 multiply-adds of size 2 per frame).
    attention = 2 * (2 * 4 * 2 * 2) + 2 * (2 + 2) * 2 * steps
    hand = listener + 2 * per_step * steps + attention
    assert model.forward_flops([frames], [steps]) == hand
    tokens = torch.tensor([[1, 3, 4]])
    assert counted(lambda: model(torch.randn(1, frames, 3), torch.tensor([frames]), tokens)) == hand
    paper_like = ListenAttendSpell(n_input=39, listener_hidden=4, fc_size=6, speller_hidden=5, attention_dim=3,
                                   embedding_dim=2, ctc_head=True, blstm_fc=True).eval()
    tokens = torch.tensor([[1, 5, 6, 7]])
    assert paper_like.forward_flops([9], [4]) == counted(
        lambda: paper_like(torch.randn(1, 9, 39), torch.tensor([9]), tokens))
    factorize_listener(paper_like, 2)  # low-rank layers: r (m + n) per frame instead of m n
    assert paper_like.forward_flops([9], [4]) == counted(
        lambda: paper_like(torch.randn(1, 9, 39), torch.tensor([9]), tokens))


def test_ser_model_flops_by_hand_and_by_pytorch():
    base = BiGRUBaseline(input_size=3, hidden_size=2, n_classes=4).eval()
    hand = 2 * 2 * 3 * 2 * (3 + 2) * 5 + 2 * 2 * 3 * 2 * (4 + 2) * 5 + 2 * 4 * 4  # 2 BiGRU layers, classifier
    assert base.forward_flops([5]) == hand
    assert counted(lambda: base(torch.randn(1, 5, 3), torch.tensor([5]))) == hand
    mp = FineTuneMP(6).eval()
    assert mp.forward_flops([9, 4]) == 2 * 6 * 4 * 2 == counted(lambda: mp(torch.randn(2, 1, 6), torch.tensor([1, 1])))
    rnn = FineTuneRNN(6, 5).eval()
    assert rnn.forward_flops([8]) == 2 * 2 * 3 * 5 * (6 + 5) * 8 + 2 * 10 * 4
    assert rnn.forward_flops([8]) == counted(lambda: rnn(torch.randn(1, 8, 6), torch.tensor([8])))
    stacked = FineTuneRNN(6, 5, frame_stack=2).eval()  # 8 frames -> 4 steps of 12 inputs
    assert stacked.forward_flops([8]) == 2 * 2 * 3 * 5 * (12 + 5) * 4 + 2 * 10 * 4
    assert stacked.forward_flops([8]) == counted(lambda: stacked(torch.randn(1, 8, 6), torch.tensor([8])))
    prog = ProgressiveNet(handcrafted_size=3, asr_size=6, hidden_size=2).eval()
    assert prog.forward_flops([5], [1]) == hand - 2 * 4 * 4 + 2 * (4 + 6) * 4
    assert prog.forward_flops([5], [1]) == counted(
        lambda: prog(torch.randn(1, 5, 3), torch.tensor([5]), torch.randn(1, 1, 6), torch.tensor([1])))
    iaan = IAAN(input_size=6, hidden_size=4, attention_size=3, mlp_size=5, n_classes=4).eval()
    gru = 2 * 3 * 4 * (6 + 4)
    hand = gru * (5 + 3 + 2) + (2 * 4 * 3 + 2 * 3) * (3 + 2)  # three GRUs; pooling of U_p and U_r
    hand += 2 * 4 * 3 * 5 + 2 * (2 * 4 * 3) + 2 * 3 * 5 + 2 * 12 * 5 + 2 * 5 * 4  # attention; MLP
    assert iaan.forward_flops([5], [3], [2]) == hand
    args = (torch.randn(1, 5, 6), torch.tensor([5]), torch.randn(1, 3, 6), torch.tensor([3]), torch.randn(1, 2, 6),
            torch.tensor([2]))
    assert counted(lambda: iaan(*args)) == hand


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_store_reader_returns_what_the_writer_wrote(tmp_path, dtype):
    rng = np.random.default_rng(0)
    written = {f"u{i}": {"a": rng.standard_normal((n, 5)).astype(np.float32), "b": rng.standard_normal((n // 2 + 1, 3))}
               for i, n in enumerate([7, 1, 12, 3])}

    def fill(writer):
        for utt, arrays in written.items():
            writer.add(utt, arrays)

    store = write_store(str(tmp_path / "store"), ["a", "b"], dtype, {"name": "t"}, fill)
    reread = FeatureStore(store.folder)
    for utt, arrays in written.items():
        for layer, array in arrays.items():
            got = reread.get(utt, layer)
            assert got.dtype == np.float32 and got.shape == array.shape
            np.testing.assert_array_equal(got, array.astype(dtype).astype(np.float32))
            assert reread.frames(utt, layer) == array.shape[0]
            # numpy.memmap over the raw file agrees with the positioned reads
            info = reread.meta["layers"][layer]
            mm = np.memmap(os.path.join(store.folder, f"{layer}.bin"), dtype=info["dtype"], mode="r",
                           shape=(info["frames"], info["dim"]))
            offset = int(pd.read_csv(os.path.join(store.folder, "index.csv")).set_index("ID").at[utt, f"offset_{layer}"])
            np.testing.assert_array_equal(mm[offset : offset + array.shape[0]].astype(np.float32), got)
    assert "u2" in reread and "zz" not in reread and len(reread) == 4
    with pytest.raises(KeyError, match="not in this store"):
        reread.get("zz", "a")
    with pytest.raises(KeyError, match="no layer"):
        reread.get("u0", "c")
    with open(os.path.join(store.folder, "a.bin"), "r+b") as f:  # a truncated file is named, not misread
        f.truncate(10)
    with pytest.raises(Exception, match="truncated"):
        FeatureStore(store.folder).get("u3", "a")


def test_bucketed_batches_and_durations():
    from ser_modules.benchmark.steps import bucketed_batches, iemocap_like_durations

    d = iemocap_like_durations(400, seed=0)
    assert d.min() >= 0.6 and d.max() <= 15.0 and 3.0 < np.median(d) < 3.8
    batches = bucketed_batches(d, 16, 5)
    assert len(batches) == 5 and all(len(b) == 16 for b in batches)
    # Length bucketing keeps padding small: every batch's shortest is close to its longest.
    assert np.mean([b.min() / b.max() for b in batches]) > 0.8


def test_replicated_corpus_keeps_folds_speaker_independent(tmp_path):
    from ser_modules.benchmark.stage_rates import replicate_protocol
    from ser_modules.data.folds import check_speaker_independence, load_folds

    src = tmp_path / "src"
    (src / "emotion" / "p").mkdir(parents=True)
    manifest = pd.DataFrame({"ID": ["a", "b", "c"], "speaker": ["s1", "s2", "s3"], "emotion": ["neu", "sad", "ang"],
                             "prev_same": ["", "a", ""], "prev_other": ["", "", "b"]})
    manifest.to_csv(src / "emotion" / "p" / "manifest.csv", index=False)
    folds = {"scheme": "x", "folds": [{"name": "f1", "test_speakers": ["s1"], "valid_speakers": ["s2"], "train": ["c"],
                                       "valid": ["b"], "test": ["a"]}]}
    (src / "emotion" / "p" / "folds_x.json").write_text(json.dumps(folds))
    (src / "prepare_summary.json").write_text("{}")
    replicate_protocol(str(src), str(tmp_path / "dst"), "p", 3)
    out = pd.read_csv(tmp_path / "dst" / "emotion" / "p" / "manifest.csv", keep_default_na=False)
    assert len(out) == 9 and out["ID"].is_unique
    assert out.set_index("ID").at["b~2", "prev_same"] == "a~2"  # a copy's context is the same copy's turn
    fold = load_folds(str(tmp_path / "dst" / "emotion" / "p" / "folds_x.json"))
    assert sorted(fold[0].test) == ["a", "a~1", "a~2"] and len(fold[0].train) == 3
    check_speaker_independence(out, fold)


def test_upstream_throughput_rows_per_format(tmp_path, monkeypatch):
    """``--upstreams``: one row per upstream (the built-in base-size ones replaced by tiny ones here) and per
    PATH given; the counted FLOPs of a Whisper in 30 s windows include the padding, so per second of audio
    they exceed the utterance windows' (a 3-5 s utterance fills 150-250 of the 1500 frames)."""
    import sys

    from ser_modules.benchmark import run as bench_run
    from ser_modules.upstreams.encoders import HFUpstream, WaveformInput
    from ser_modules.upstreams.loading import load_upstream

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "utils"))
    from make_tiny_upstream import make_tiny_upstream

    whisper = make_tiny_upstream("whisper", str(tmp_path / "whisper"), layers=2, hidden=32)
    wavlm = make_tiny_upstream("wavlm", str(tmp_path / "wavlm"), layers=2, hidden=32)
    encoder = load_upstream(whisper)[0].model

    def tiny():
        return {"w 30s": (HFUpstream(encoder, "whisper", "30s"), WaveformInput(400)),
                "w utt": (HFUpstream(encoder, "whisper", "utterance"), WaveformInput(400))}

    monkeypatch.setattr(bench_run, "base_upstreams", tiny)
    assert bench_run.main(["--upstreams", wavlm, "--quick", "--out", str(tmp_path / "out")]) == 0
    frame = pd.read_csv(tmp_path / "out" / "upstreams.csv")
    assert frame["what"].tolist() == ["stage 4 upstream w 30s", "stage 4 upstream w utt",
                                      "stage 4 upstream wavlm (--upstream)"]
    assert frame["batched"].tolist() == [True, True, True]
    assert (frame["audio_s_per_s"] > 0).all() and (frame["ratio"] > 0).all()
    padded, unpadded = frame["gflop_per_audio_s"].iloc[:2]
    assert padded > 4 * unpadded
    assert "GEMM fp32" in (tmp_path / "out" / "upstreams.md").read_text()


@pytest.mark.parametrize("variant", [{"name": "MP-1", "type": "mp", "asr": "pretrained", "layer": "gru1"},
                                     {"name": "Progressive-1", "type": "progressive", "asr": "pretrained",
                                      "layer": "gru1", "hidden": 8}])
def test_a_stage5_training_step_row(tmp_path, variant):
    """The benchmark drives stage 5's Brain batch by batch, without the epochs, samplers and task keys a recipe's
    stage 5 gives it (the fine-tuning warm-up's epochs, the dimensional task's outputs broke it before): a row with a
    positive rate."""
    from ser_modules.benchmark.steps import iemocap_like_durations, measure, recipe_conf, ser_case

    hp = recipe_conf("ctc_transfer", "ser", "demo", str(tmp_path))
    case = ser_case(variant, hp, {"gru1": 16}, "demo", "cpu", quick=True)
    row = measure(case, iemocap_like_durations(64, seed=0), "cpu", gemm=100.0, quick=True)
    assert row["frames_per_s"] > 0 and row["model"].startswith(variant["type"])
