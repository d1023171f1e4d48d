"""Representation dumps (stage 4) and ASR adaptation pieces (stage 3): SVD factorisation, freezing,
per-fold adaptation data."""

import os

import numpy as np
import pandas as pd
import pytest
import torch

from ser_modules.asr.adaptation import adaptation_splits, set_trainable, untranscribed_folds
from ser_modules.asr.saved_models import export_model, list_asr_models, load_asr_model, model_blocks
from ser_modules.dump.store import FeatureStore
from ser_modules.dump.writing import dump_asr_layers, dump_features
from ser_modules.data.features import (
    HandcraftedFeatures, LogSpectrogram, TempoGainAugment, estimate_pitch, moving_average,
)
from ser_modules.data.folds import Fold
from ser_modules.models.ds2 import DeepSpeech2
from ser_modules.models.las import ListenAttendSpell
from ser_modules.models.lowrank import LowRankLinear, factorize_listener, listener_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def utterances(tiny_demo, tmp_path_factory):
    """Eight utterances of the tiny demo's emotion corpus as a manifest CSV."""
    from prepare_iemocap import read_corpus

    turns = read_corpus(tiny_demo["iemocap"]).head(8)
    path = tmp_path_factory.mktemp("utts") / "utts.csv"
    turns.to_csv(path, index=False)
    return turns, str(path)


def test_low_rank_full_rank_reproduces_and_counts():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 12)
    x = torch.randn(5, 24)
    full = LowRankLinear.from_linear(linear, 12)
    assert torch.allclose(full(x), linear(x), atol=1e-5)
    low = LowRankLinear.from_linear(linear, 4)
    assert sum(p.numel() for p in low.parameters()) == 4 * (24 + 12) + 12  # r(m + n) + bias
    # The truncated SVD is the best rank-4 approximation: its error is the tail singular values.
    s = torch.linalg.svdvals(linear.weight)
    w_low = low.expand.weight @ low.project.weight
    assert torch.allclose(torch.linalg.matrix_norm(linear.weight - w_low), s[4:].norm(), atol=1e-4)
    with pytest.raises(ValueError, match="rank must be"):
        LowRankLinear(24, 12, 13)


def test_paper_structured_las_parameter_counts():
    model = ListenAttendSpell()
    assert model.listener.fc0 is None  # the paper's listener: an FC after each pyramidal BLSTM only
    before = sum(p.numel() for p in model.parameters())
    dense = listener_size(model)
    counts = factorize_listener(model, 256)
    # Paper: m x n = 1024 x 512 -> r (m + n) = 256 * 1536, plus the bias, in each factorised layer.
    assert set(counts) == {"fc1", "fc2"}
    assert counts["fc1"] == (1024 * 512 + 512, 256 * (1024 + 512) + 512)
    assert counts["fc2"] == counts["fc1"]
    for name in ("fc1", "fc2"):
        layer = getattr(model.listener, name)
        assert isinstance(layer, LowRankLinear)
        assert sum(p.numel() for p in layer.parameters()) == 256 * (1024 + 512) + 512
    assert before - sum(p.numel() for p in model.parameters()) == 2 * (1024 * 512 - 256 * 1536)
    low = listener_size(model)  # what RESULTS.md reports for pretrained vs structured
    assert (dense["rank"], low["rank"]) == (0, 256) and dense["model"] == before
    assert dense["listener_fc"] == 2 * (1024 * 512 + 512) and low["listener_fc"] == 2 * (256 * 1536 + 512)
    assert dense["model"] - low["model"] == dense["listener"] - low["listener"] == 2 * (1024 * 512 - 256 * 1536)
    # The authors' extra FC after the first BLSTM is an option; it is never factorised.
    extra = ListenAttendSpell(blstm_fc=True)
    assert set(factorize_listener(extra, 256)) == {"fc1", "fc2"} and isinstance(extra.listener.fc0, torch.nn.Linear)


def test_freezing_keeps_weights_bit_identical():
    torch.manual_seed(0)
    model = ListenAttendSpell(listener_hidden=8, fc_size=8, speller_hidden=8, attention_dim=8, embedding_dim=4)
    feats, lengths = torch.randn(2, 12, 39), torch.tensor([12, 9])
    tokens = torch.tensor([[1, 5, 6], [1, 7, 0]])
    for part, frozen, trained in (("encoder", "speller", "listener"), ("decoder", "listener", "speller")):
        set_trainable(model, part)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for _ in range(2):
            loss = model(feats, lengths, tokens)["logits"].logsumexp(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        for n, p in model.named_parameters():
            if n.startswith(frozen):
                assert torch.equal(p, before[n]), f"{part}: {n} changed"
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(trained))
    assert set_trainable(model, "all") == sum(p.numel() for p in model.parameters())
    joint = ListenAttendSpell(listener_hidden=8, fc_size=8, speller_hidden=8, attention_dim=8, embedding_dim=4,
                              ctc_head=True)
    head = sum(p.numel() for p in joint.ctc_output.parameters())
    assert set_trainable(joint, "encoder", ctc=False) + head == set_trainable(joint, "encoder", ctc=True)
    assert set_trainable(joint, "all", ctc=False) == sum(p.numel() for p in joint.parameters()) - head
    assert not any(p.requires_grad for p in joint.ctc_output.parameters())
    ds2 = DeepSpeech2(conv_channels=2, rnn_layers=1, rnn_hidden=4)
    assert set_trainable(ds2, "decoder") == 2 * 4 + 4 * 29  # output BatchNorm and linear layer


def test_adaptation_data_never_holds_test_speakers():
    turns = pd.DataFrame({"ID": [f"{s}_{i}" for s in "abcd" for i in range(3)],
                          "speaker": [s for s in "abcd" for _ in range(3)],
                          "transcript": ["Hello [LAUGHTER] there."] * 11 + ["[BREATHING]"],
                          "wav": "x.wav", "duration": 1.0})
    manifest = turns.iloc[:-1].copy()
    fold = Fold("f", test_speakers=["d"], valid_speakers=["c"], train=[f"{s}_{i}" for s in "ab" for i in range(3)],
                valid=[f"c_{i}" for i in range(3)], test=["d_0", "d_1"])
    splits = adaptation_splits(turns, manifest, fold)
    assert set(splits["train"]["ID"]) == {f"{s}_{i}" for s in "ab" for i in range(3)}
    assert set(splits["valid"]["ID"]) == {"c_0", "c_1", "c_2"}
    assert set(splits["test"]["ID"]) == {"d_0", "d_1"}  # d_2 has no words left after token removal
    assert splits["train"]["transcript"].iloc[0] == "HELLO THERE"
    wider = adaptation_splits(turns, manifest, fold, adapt_on="non_test")
    assert set(wider["train"]["ID"]) == set(splits["train"]["ID"])  # validation speakers stay out of training


def test_folds_without_transcribed_utterances_are_named():
    turns = pd.DataFrame({"ID": [f"{s}_{i}" for s in "abc" for i in range(2)],
                          "speaker": [s for s in "abc" for _ in range(2)],
                          "transcript": ["hi", "", "", "", "yes", ""], "wav": "x.wav", "duration": 1.0})

    def fold(test, valid, train):
        return Fold(test, [test], [valid], [f"{train}_{i}" for i in range(2)], [f"{valid}_{i}" for i in range(2)],
                    [f"{test}_{i}" for i in range(2)])

    splits = {f.name: adaptation_splits(turns, turns, f) for f in (fold("a", "b", "c"), fold("b", "c", "a"),
                                                                    fold("c", "a", "b"))}
    assert untranscribed_folds(splits, ("test",)) == ["b"]  # speaker b said nothing transcribed
    assert untranscribed_folds(splits) == ["a", "b", "c"]  # b is always in one split: no fold can adapt


def test_dumped_frames_equal_a_direct_forward_pass(utterances, tmp_path):
    turns, csv = utterances
    torch.manual_seed(0)
    model = DeepSpeech2(conv_channels=2, rnn_layers=2, rnn_hidden=6).eval()
    features = LogSpectrogram()
    store = dump_asr_layers(model, features, turns, csv, ["gru1", "gru2"], str(tmp_path), "m", "sha", batch_size=3)
    assert isinstance(store, FeatureStore) and store.meta["utterances"] == 8 and store.meta["x_real_time"] > 0
    from ser_modules.data.audio import load_audio

    for _, row in turns.iterrows():
        wav = load_audio(row["wav"])
        feats, frames = features(wav.unsqueeze(0), torch.tensor([len(wav)]))
        with torch.no_grad():
            out = model.forward_layers(feats, frames, ["gru1", "gru2"])
        for layer in ("gru1", "gru2"):
            direct = out[layer][0][0].numpy()
            stored = store.get(row["ID"], layer)
            # Subsampled length: 10 ms spectrogram frames halved by the first convolution.
            assert stored.shape == direct.shape and stored.shape[0] == ((len(wav) - 320) // 160 + 1 + 1) // 2
            np.testing.assert_allclose(stored, direct, rtol=2e-3, atol=2e-3)  # float16 storage


def test_dump_is_reused_and_keyed_by_its_inputs(utterances, tmp_path):
    turns, csv = utterances
    model = DeepSpeech2(conv_channels=2, rnn_layers=1, rnn_hidden=4).eval()
    first = dump_asr_layers(model, LogSpectrogram(), turns, csv, ["gru1"], str(tmp_path), "m", "sha1")
    again = dump_asr_layers(model, LogSpectrogram(), turns, csv, ["gru1"], str(tmp_path), "m", "sha1")
    assert again.folder == first.folder
    other_model = dump_asr_layers(model, LogSpectrogram(), turns, csv, ["gru1"], str(tmp_path), "m", "sha2")
    fewer = turns.head(4)
    other_utts = dump_asr_layers(model, LogSpectrogram(), fewer, csv, ["gru1"], str(tmp_path), "m", "sha1")
    assert len({first.folder, other_model.folder, other_utts.folder}) == 3


def test_interrupted_dump_leaves_no_store(utterances, tmp_path):
    turns, csv = utterances

    class Exploding(DeepSpeech2):
        calls = 0

        def forward_layers(self, *a, **k):
            Exploding.calls += 1
            if Exploding.calls == 2:
                raise KeyboardInterrupt("power cut")
            return super().forward_layers(*a, **k)

    model = Exploding(conv_channels=2, rnn_layers=1, rnn_hidden=4).eval()
    with pytest.raises(KeyboardInterrupt):
        dump_asr_layers(model, LogSpectrogram(), turns, csv, ["gru1"], str(tmp_path), "m", "sha", batch_size=2)
    assert os.listdir(tmp_path / "m") == []  # nothing half-written remains
    store = dump_asr_layers(model, LogSpectrogram(), turns, csv, ["gru1"], str(tmp_path), "m", "sha", batch_size=2)
    assert store.meta["utterances"] == 8


def test_handcrafted_store_with_augmented_copies(utterances, tmp_path):
    turns, _ = utterances
    store = dump_features(turns.head(3), str(tmp_path), HandcraftedFeatures(), "handcrafted", "mfcc_pitch",
                          augment=TempoGainAugment(), copies=2, seed=1)
    assert store.layers == ["mfcc_pitch", "mfcc_pitch@1", "mfcc_pitch@2"]
    utt = turns["ID"].iloc[0]
    clean, aug = store.get(utt, "mfcc_pitch"), store.get(utt, "mfcc_pitch@1")
    assert clean.shape[1] == 27 and np.allclose(clean.mean(0), 0, atol=0.02)  # normalised per utterance
    assert aug.shape[0] != clean.shape[0] or not np.allclose(aug, clean)  # tempo changes the frames
    # Two worker processes and another utterance order give the same arrays in the same store.
    again = dump_features(turns.head(3).iloc[::-1], str(tmp_path / "b"), HandcraftedFeatures(), "handcrafted",
                          "mfcc_pitch", augment=TempoGainAugment(), copies=2, seed=1, nj=2)
    for layer in store.layers:
        np.testing.assert_array_equal(again.get(utt, layer), store.get(utt, layer))


def test_feature_store_keys_follow_every_parameter(utterances, tmp_path):
    """A changed extractor or augmentation parameter makes a new store; an equal configuration reuses it."""
    turns, _ = utterances
    few = turns.head(2)

    def folder(extractor, augment=None, copies=0):
        return dump_features(few, str(tmp_path), extractor, "handcrafted", "mfcc_pitch", augment=augment,
                             copies=copies, seed=1).folder

    base = folder(HandcraftedFeatures())
    assert folder(HandcraftedFeatures()) == base
    assert folder(HandcraftedFeatures(pitch_smoothing=5)) != base
    assert folder(HandcraftedFeatures(win_ms=25.0)) != base
    aug = folder(HandcraftedFeatures(), TempoGainAugment(), 1)
    assert folder(HandcraftedFeatures(), TempoGainAugment(gain_db=(-3.0, 3.0)), 1) != aug
    assert folder(HandcraftedFeatures(), TempoGainAugment(tempo=(0.9, 1.1)), 1) != aug
    with pytest.raises(TypeError, match="cannot key a cache"):
        folder(torch.nn.Identity())


def test_pitch_and_smoothing():
    t = torch.arange(16000) / 16000
    tone = sum(torch.sin(2 * torch.pi * 150 * k * t) / k for k in range(1, 4))
    assert torch.allclose(estimate_pitch(tone)[2:-2], torch.tensor(150.0), rtol=0.03)
    x = torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0])
    assert moving_average(x, 3).tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0, 0.0])


def test_export_and_reload_models(tmp_path):
    from ser_modules.utils.hparams import load_stage_hparams

    hp, text = load_stage_hparams(os.path.join(REPO, "recipes", "las_adapt", "conf"), "asr", "demo",
                                  {"output_folder": str(tmp_path), "data_folder": str(tmp_path)},
                                  ["asr.listener_hidden=4", "asr.fc_size=8", "asr.speller_hidden=8",
                                   "asr.attention_dim=4", "asr.embedding_dim=4"])
    blocks = tmp_path / "model_hparams.yaml"
    blocks.write_text(model_blocks(text))
    model = hp["model"]
    export_model(model, str(tmp_path / "asr"), str(blocks))
    factorize_listener(model, 2)
    export_model(model, str(tmp_path / "adapt" / "structured" / "session1"), str(blocks), rank=2)
    refs = list_asr_models(str(tmp_path))
    assert [(r.name, r.fold) for r in refs] == [("pretrained", None), ("structured", "session1")]
    loaded, features, vocab, info = load_asr_model(refs[1].path)
    assert info["rank"] == 2 and loaded.listener.fc1.rank == 2 and len(vocab) == 31
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
