"""Paper-scale stage 4-5: pooled vectors written once by stage 4 (bit-identical to pooling the frames),
finished SER runs without their resume state, and stage 4's size estimate and disk-space check."""

import json
import logging
import os
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from ser_modules.asr.saved_models import export_model, model_blocks
from ser_modules.data.features import HandcraftedFeatures, LogSpectrogram, MFCC
from ser_modules.data.folds import Fold
from ser_modules.dump.planning import plan_asr_store, plan_feature_store, probe_asr_layers
from ser_modules.dump.store import FeatureStore, pooled_file
from ser_modules.dump.writing import dump_asr_layers, dump_features
from ser_modules.models.ds2 import DeepSpeech2
from ser_modules.models.las import ListenAttendSpell
from ser_modules.ser.inputs import SERInputs
from ser_modules.ser.training import train_fold_run
from ser_modules.ser.variants import VariantSpec
from ser_modules.utils.curves import read_curves
from ser_modules.utils.fileio import ManifestError, run_main
from ser_modules.utils.hparams import load_stage_hparams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTC_CONF = os.path.join(REPO, "recipes", "ctc_transfer", "conf")


@pytest.fixture(scope="module")
def turns(tiny_demo):
    """The tiny demo's 16 turns, labelled alternately neu/ang."""
    from prepare_iemocap import read_corpus

    turns = read_corpus(tiny_demo["iemocap"])
    turns["emotion"] = np.where(turns.index % 2 == 0, "neu", "ang")
    return turns


def tiny_ds2(hidden: int = 6) -> DeepSpeech2:
    torch.manual_seed(0)
    return DeepSpeech2(conv_channels=2, rnn_layers=2, rnn_hidden=hidden).eval()


def folder_bytes(folder) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def old_mean_pooled(store, layer, ids, normalised=False):
    """Stage 5's pooling before stage 4 wrote pooled vectors (SERDataset, until this change): plain means only."""
    assert not normalised
    return np.stack([store.get(u, layer).mean(axis=0, keepdims=True)[0] for u in ids])


# ----------------------------------------------------------------------------------------------
# Pooled vectors


@pytest.fixture(scope="module")
def asr_store(turns, tmp_path_factory):
    """A float16 store of two DS2 layers over the tiny demo's turns, and its manifest CSV."""
    tmp = tmp_path_factory.mktemp("pooled")
    csv = tmp / "utts.csv"
    turns.to_csv(csv, index=False)
    store = dump_asr_layers(tiny_ds2(), LogSpectrogram(), turns, str(csv), ["gru1", "gru2"], str(tmp), "m", "sha",
                            batch_size=3)
    return store, str(csv), tmp


def test_pooled_vectors_equal_the_mean_of_the_stored_frames_bit_for_bit(turns, asr_store, tmp_path):
    store, _, _ = asr_store
    hand = dump_features(turns.head(5), str(tmp_path), HandcraftedFeatures(), "handcrafted", "mfcc_pitch")
    for st in (store, hand):
        for layer in st.layers:
            assert st.meta["layers"][layer]["pooled"] == pooled_file(layer)
            assert os.path.isfile(os.path.join(st.folder, pooled_file(layer)))
            matrix = np.load(os.path.join(st.folder, pooled_file(layer)))
            assert matrix.dtype == np.float32 and matrix.shape == (len(st), st.dim(layer))
            old = old_mean_pooled(st, layer, st.ids)
            np.testing.assert_array_equal(matrix.view(np.uint32), old.view(np.uint32))  # index order, same bits
            some = st.ids[::-2]  # any subset, any order
            np.testing.assert_array_equal(st.mean_pooled(layer, some).view(np.uint32),
                                          old_mean_pooled(st, layer, some).view(np.uint32))
    assert not [f for f in os.listdir(store.folder) if f.endswith(".raw")]  # the writer's row files are gone
    with pytest.raises(KeyError, match="not in this store"):
        store.mean_pooled("gru1", ["nobody"])


def ser_training(asr_store, turns, name: str, epochs: int):
    """``(stores.json, fold, hp)`` of a stage-5 training on the store of ``asr_store`` (the paper config, lr 0.01,
    batches of 4, ``epochs`` epochs), its files named after ``name``."""
    store, _, tmp = asr_store
    stores = tmp / f"stores_{name}.json"
    stores.write_text(json.dumps({"asr": {"pretrained": {"folder": store.folder}}, "handcrafted": None,
                                  "egemaps": None}))
    hp, _ = load_stage_hparams(CTC_CONF, "ser", "paper", {"output_folder": str(tmp / f"ser_{name}")},
                               ["ser.lr=0.01", "ser.batch_size=4", f"ser.max_epochs={epochs}"])
    return stores, speaker_fold(turns), hp


def test_mp_trainings_predict_the_same_from_stored_pooled_vectors(turns, asr_store, monkeypatch):
    tmp = asr_store[2]
    stores, fold, hp = ser_training(asr_store, turns, "mp", 3)
    specs = [VariantSpec.from_dict({"name": "MP-gru2", "type": "mp", "asr": "pretrained", "layer": "gru2"}),
             VariantSpec.from_dict({"name": "weighted-MP", "type": "weighted", "head": "mp", "asr": "pretrained",
                                    "layer": "gru1", "layers": ["gru1", "gru2"]})]

    def predictions(name):
        inputs = SERInputs(str(stores))
        return {s.name: train_fold_run(s, fold, 0, turns, ["ang", "neu"], inputs, hp, str(tmp / name / s.name))
                for s in specs}

    new = predictions("new")
    monkeypatch.setattr(FeatureStore, "mean_pooled", old_mean_pooled)
    old = predictions("old")
    for name in new:
        assert not new[name].attrs.get("finished_before") and not old[name].attrs.get("finished_before")
        pd.testing.assert_frame_equal(new[name], old[name])
        weights = [torch.load(tmp / run / name / "model.pt") for run in ("new", "old")]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same training, bit for bit


def test_weighted_mp_norm_trains_on_pooled_vectors_as_on_frames(turns, asr_store, monkeypatch):
    """weighted-MP with layer_norm reads one normalised mean per layer and utterance; the same seed on the
    frames (the path before this change) gives the same class probabilities (max abs difference <= 1e-5)."""
    tmp = asr_store[2]
    stores, fold, hp = ser_training(asr_store, turns, "norm", 4)
    spec = VariantSpec.from_dict({"name": "weighted-MP-norm", "type": "weighted", "head": "mp", "asr": "pretrained",
                                  "layer": "weighted", "layers": ["gru1", "gru2"], "layer_norm": True})
    assert spec.pooled and spec.normalised
    # the same batches on both paths: bucketed by each utterance's frames, whichever the path reads
    threads = threading.active_count()
    pooled = train_fold_run(spec, fold, 0, turns, ["ang", "neu"], SERInputs(str(stores)), hp, str(tmp / "norm" / "p"),
                            curves_dir=str(tmp / "board"))
    assert threading.active_count() == threads  # the curves' writer (a thread of its own) is closed with the run
    curves = read_curves(str(tmp / "board"))
    epochs = json.loads((tmp / "norm" / "p" / "history.json").read_text())
    assert [s for s, _ in curves["UA/valid"]] == [h["epoch"] for h in epochs]
    assert {"layer_weight/gru1", "layer_weight/gru2", "loss/train", "loss/valid", "lr"} <= set(curves)
    monkeypatch.setattr(VariantSpec, "pooled", property(lambda self: False))
    frames = train_fold_run(spec, fold, 0, turns, ["ang", "neu"], SERInputs(str(stores)), hp, str(tmp / "norm" / "f"))
    probs = [c for c in pooled.columns if c.startswith("p_")]
    assert len(probs) == 2 and len(pooled) == len(fold.test)
    assert pooled["ID"].tolist() == frames["ID"].tolist()
    diff = np.abs(pooled[probs].to_numpy() - frames[probs].to_numpy()).max()
    assert diff <= 1e-5, diff
    assert np.abs(pooled[probs].to_numpy() - 0.5).max() > 1e-3  # it learned something to agree on


def speaker_fold(turns) -> Fold:
    speakers = sorted(turns["speaker"].unique())
    ids = lambda spk: turns.loc[turns["speaker"].isin(spk), "ID"].tolist()  # noqa: E731
    return Fold(name="f1", test_speakers=[speakers[0]], valid_speakers=[speakers[1]], train=ids(speakers[2:]),
                valid=ids([speakers[1]]), test=ids([speakers[0]]))


def test_a_store_written_before_pooled_files_is_pooled_from_frames_and_completed_on_reuse(turns, asr_store, tmp_path):
    store, csv, _ = asr_store
    old = tmp_path / "m" / os.path.basename(store.folder)
    shutil.copytree(store.folder, old)
    originals = {layer: np.load(os.path.join(old, pooled_file(layer))) for layer in store.layers}
    meta = json.loads((old / "meta.json").read_text())
    normalised = {layer: np.load(os.path.join(old, pooled_file(layer, True))) for layer in store.layers}
    for layer in store.layers:  # as stage 4 wrote stores before this change
        os.remove(old / pooled_file(layer))
        os.remove(old / pooled_file(layer, True))
        del meta["layers"][layer]["pooled"], meta["layers"][layer]["pooled_norm"]
    (old / "meta.json").write_text(json.dumps(meta))
    legacy = FeatureStore(str(old))
    assert legacy.lacks_pooled == [("gru1", False), ("gru1", True), ("gru2", False), ("gru2", True)]
    np.testing.assert_array_equal(legacy.mean_pooled("gru1", legacy.ids), originals["gru1"])  # pooled from frames
    np.testing.assert_array_equal(legacy.mean_pooled("gru2", legacy.ids, normalised=True), normalised["gru2"])
    reused = dump_asr_layers(tiny_ds2(), LogSpectrogram(), turns, csv, ["gru1", "gru2"], str(tmp_path), "m", "sha")
    assert reused.folder == str(old) and reused.lacks_pooled == []
    for layer in store.layers:
        np.testing.assert_array_equal(np.load(old / pooled_file(layer)).view(np.uint32),
                                      originals[layer].view(np.uint32))
        np.testing.assert_array_equal(np.load(old / pooled_file(layer, True)), normalised[layer])
        assert reused.meta["layers"][layer]["pooled"] == pooled_file(layer)
        assert reused.meta["layers"][layer]["pooled_norm"] == pooled_file(layer, True)
    assert sorted(os.listdir(old)) == sorted(os.listdir(store.folder))  # no temporary file left


# ----------------------------------------------------------------------------------------------
# Finished runs


def test_a_finished_run_keeps_model_pt_drops_resume_pt_and_stays_finished(turns, asr_store):
    store, _, tmp = asr_store
    stores = tmp / "stores_resume.json"
    stores.write_text(json.dumps({"asr": {"pretrained": {"folder": store.folder}}, "handcrafted": None,
                                  "egemaps": None}))
    hp, _ = load_stage_hparams(CTC_CONF, "ser", "paper", {"output_folder": str(tmp / "ser")},
                               ["ser.lr=0.01", "ser.batch_size=4", "ser.max_epochs=2"])
    spec = VariantSpec.from_dict({"name": "MP-gru1", "type": "mp", "asr": "pretrained", "layer": "gru1"})
    out = tmp / "resume" / "MP-gru1" / "f1" / "run0"
    first = train_fold_run(spec, speaker_fold(turns), 0, turns, ["ang", "neu"], SERInputs(str(stores)), hp, str(out))
    assert not first.attrs.get("finished_before")
    assert (out / "model.pt").is_file() and (out / "predictions.csv").is_file()
    assert not (out / "resume.pt").exists()
    assert sorted(os.listdir(out.parent)) == ["run0"]  # no work folder left beside it
    model_bytes = (out / "model.pt").read_bytes()
    again = train_fold_run(spec, speaker_fold(turns), 0, turns, ["ang", "neu"], SERInputs(str(stores)), hp, str(out))
    assert again.attrs.get("finished_before")
    pd.testing.assert_frame_equal(again, first, check_dtype=False)
    assert (out / "model.pt").read_bytes() == model_bytes and not (out / "resume.pt").exists()


# ----------------------------------------------------------------------------------------------
# Size estimates


def test_probed_frame_rates_of_ds2_and_las():
    ds2 = probe_asr_layers(tiny_ds2(), LogSpectrogram(), ["conv", "gru2"])
    assert ds2["gru2"].rate == ds2["conv"].rate == 50 and ds2["gru2"].dim == 6  # 100 frames/s halved
    torch.manual_seed(0)
    las = ListenAttendSpell(listener_hidden=4, fc_size=8, speller_hidden=8, attention_dim=4, embedding_dim=4).eval()
    shapes = probe_asr_layers(las, MFCC(), ["blstm", "pblstm1", "pblstm2"])
    assert [shapes[n].rate for n in ("blstm", "pblstm1", "pblstm2")] == [100, 50, 25]  # the pyramid quarters it
    assert shapes["pblstm2"].dim == 8


@pytest.mark.parametrize("model", ["ds2", "las"])
def test_the_size_estimate_matches_the_bytes_a_dump_writes(turns, tmp_path, model):
    csv = tmp_path / "utts.csv"
    turns.to_csv(csv, index=False)
    if model == "ds2":
        net, features, layers = tiny_ds2(hidden=48), LogSpectrogram(), ["gru1", "gru2"]
    else:
        torch.manual_seed(0)
        net = ListenAttendSpell(listener_hidden=16, fc_size=32, speller_hidden=8, attention_dim=4,
                                embedding_dim=4).eval()
        features, layers = MFCC(), ["blstm", "pblstm2"]
    plan = plan_asr_store(net, features, turns, layers, str(tmp_path), "m", "sha")
    assert not plan.reused
    store = dump_asr_layers(net, features, turns, str(csv), layers, str(tmp_path), "m", "sha")
    assert plan.folder == store.folder
    assert plan.bytes == pytest.approx(folder_bytes(store.folder), rel=0.02)
    for layer in layers:
        assert plan.frames(layer) == pytest.approx(store.meta["layers"][layer]["frames"], rel=0.02)
    again = plan_asr_store(net, features, turns, layers, str(tmp_path), "m", "sha")
    assert again.reused and again.bytes == 0  # an existing store is reused: nothing to write


def test_the_handcrafted_size_estimate_matches_its_store(turns, tmp_path):
    plan = plan_feature_store(turns, str(tmp_path), HandcraftedFeatures(), "handcrafted", "mfcc_pitch")
    store = dump_features(turns, str(tmp_path), HandcraftedFeatures(), "handcrafted", "mfcc_pitch")
    assert plan.folder == store.folder and plan.shapes["mfcc_pitch"].dim == 27
    assert plan.bytes == pytest.approx(folder_bytes(store.folder), rel=0.02)


# ----------------------------------------------------------------------------------------------
# Stage 4


@pytest.fixture
def experiment(turns, tmp_path):
    """An experiment with the tiny demo's turns as protocol ``standard`` and an exported random DS2
    (2 BiGRUs of 48): ``(exp, argv of stage 4)``."""
    exp, data = tmp_path / "exp", tmp_path / "data"
    (data / "emotion" / "standard").mkdir(parents=True)
    turns.to_csv(data / "emotion" / "standard" / "manifest.csv", index=False)
    hp, text = load_stage_hparams(CTC_CONF, "asr", "demo",
                                  {"output_folder": str(exp / "asr"), "data_folder": str(data)},
                                  ["asr.conv_channels=2", "asr.rnn_layers=2", "asr.rnn_hidden=48"])
    (exp / "asr").mkdir(parents=True, exist_ok=True)
    blocks = exp / "asr" / "model_hparams.yaml"
    blocks.write_text(model_blocks(text))
    export_model(hp["model"], str(exp / "asr"), str(blocks))
    argv = ["--exp-dir", str(exp), "--data-dir", str(data), "--conf-dir", CTC_CONF, "--size", "demo", "--protocol",
            "standard", "--nj", "1", "--device", "cpu", "--", "dump.layers=[gru1, gru2]"]
    return exp, argv


def stores_written(dump_dir) -> dict[str, str]:
    """``{name: folder}`` of the finished stores under ``dump_dir``."""
    return {name: os.path.join(dump_dir, name, key) for name in ("pretrained", "handcrafted", "egemaps")
            if os.path.isdir(os.path.join(dump_dir, name)) for key in os.listdir(os.path.join(dump_dir, name))}


def test_stage4_refuses_to_start_without_disk_room_and_writes_no_store(experiment, monkeypatch, caplog):
    from ser_modules.stages import dump as stage

    exp, argv = experiment
    out = str(exp / "dump")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=50_000))
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        run_main(lambda: stage.main(argv), "stage4_dump")
    assert stop.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"{out}: not enough free disk space for stage 4: ")
    assert "bytes needed" in errors[0] and "50,000 bytes free" in errors[0]
    assert stores_written(out) == {} and sorted(os.listdir(out)) == []  # nothing written, not even the config
    with pytest.raises(ManifestError, match="not enough free disk space"):
        stage.main(argv)


def test_stage4_estimate_matches_what_it_writes_and_completes_old_stores(experiment, caplog):
    from ser_modules.stages import dump as stage

    exp, argv = experiment
    out = exp / "dump"
    caplog.set_level("INFO")
    stage.main(argv)
    printed = caplog.text
    total = int(printed.split("stage 4 will write ")[1].split("(")[1].split(" bytes")[0].replace(",", ""))
    stores = stores_written(out)
    assert sorted(stores) == ["egemaps", "handcrafted", "pretrained"]
    written = sum(folder_bytes(f) for f in stores.values())
    assert total == pytest.approx(written, rel=0.02)
    assert "    gru1: " in printed and "frames x 48 x float16" in printed and "50 frames/s" in printed
    # A rerun reuses every store (0 bytes); a store written before pooled files gets them on reuse.
    pretrained = stores["pretrained"]
    kept = {layer: np.load(os.path.join(pretrained, pooled_file(layer))) for layer in ("gru1", "gru2")}
    for layer in kept:
        os.remove(os.path.join(pretrained, pooled_file(layer)))
    caplog.clear()
    stage.main(argv)
    printed = caplog.text
    assert "pretrained: reused" in printed and "adds pooled vectors" in printed
    assert "handcrafted: reused" in printed and "egemaps: reused" in printed
    for layer, matrix in kept.items():
        np.testing.assert_array_equal(np.load(os.path.join(pretrained, pooled_file(layer))), matrix)
    caplog.clear()
    stage.main(argv)
    assert "stage 4 will write 0 B (0 bytes)" in caplog.text


# ----------------------------------------------------------------------------------------------
# Stage 4's memory

CONV_SHAPES = """
import sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "bounded":
    from ser_modules.dump.writing import bound_primitive_cache
    bound_primitive_cache()
def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
conv = torch.nn.Conv2d(1, 8, (41, 11), stride=(2, 2), padding=(20, 5))  # DS2's first layer, demo width
# 300 padded batch shapes of similar size; not batch 1: a [1, 1, H, W] input takes oneDNN's reference kernel (10x the time)
shapes = [(b, f) for f in range(300, 420, 2) for b in range(2, 7)]
with torch.no_grad():
    for b, f in shapes[:40]:
        conv(torch.randn(b, 1, 161, f))
    conv(torch.randn(6, 1, 161, 400))  # the largest buffers first: what grows after is cached primitives
    start = rss_mb()
    for b, f in shapes[40:]:
        conv(torch.randn(b, 1, 161, f))
print(rss_mb() - start)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_bounded_primitive_cache_keeps_a_dump_of_many_shapes_flat():
    # Stage 4 grew 1.1 GB from 1x to 8x the demo corpus: oneDNN kept a primitive per padded batch shape.
    import subprocess
    import sys

    def growth(mode: str) -> float:
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
        # Large blocks straight from and back to the kernel: RSS then counts live memory, not malloc's cache
        # (without this the growth varied 38-173 MB from run to run).
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        out = subprocess.run([sys.executable, "-c", CONV_SHAPES, mode], env=env, cwd=REPO, capture_output=True,
                             text=True, check=True)
        return float(out.stdout.strip())

    unbounded, bounded = growth("default"), growth("bounded")
    # How much a primitive weighs depends on the CPU's oneDNN kernels: 26 MB unbounded / 5.5 MB bounded on the
    # Intel machine the bound was made on, 13.1 / 6.0 MB on an AMD EPYC of the same size (2026-12-06)
    assert unbounded > 10, unbounded  # the default cache grows with the shapes seen
    assert bounded < 0.6 * unbounded, (bounded, unbounded)


def test_stage4_bounds_the_cache_before_it_runs_unless_the_user_set_it(monkeypatch):
    from ser_modules.dump.writing import PRIMITIVE_CACHE_ENV, bound_primitive_cache
    from ser_modules.stages import dump as stage

    monkeypatch.delenv(PRIMITIVE_CACHE_ENV, raising=False)
    with pytest.raises(SystemExit):
        stage.main(["--no-such-option"])  # stops at argument parsing, after the bound is set
    assert os.environ[PRIMITIVE_CACHE_ENV] == "16"
    monkeypatch.setenv(PRIMITIVE_CACHE_ENV, "256")
    bound_primitive_cache()
    assert os.environ[PRIMITIVE_CACHE_ENV] == "256"


def test_streamed_index_reads_as_the_table_pandas_wrote(asr_store):
    # The writer appends each utterance's index row as it comes instead of keeping every row in memory.
    store, csv, _ = asr_store
    index = pd.read_csv(os.path.join(store.folder, "index.csv"))
    turns = pd.read_csv(csv)
    assert list(index.columns) == ["ID", "offset_gru1", "frames_gru1", "offset_gru2", "frames_gru2"]
    assert sorted(index["ID"]) == sorted(turns["ID"])
    for layer in ("gru1", "gru2"):
        frames = index[f"frames_{layer}"].to_numpy()
        np.testing.assert_array_equal(index[f"offset_{layer}"].to_numpy(), np.concatenate([[0], np.cumsum(frames)[:-1]]))
        assert frames.sum() == store.meta["layers"][layer]["frames"]
