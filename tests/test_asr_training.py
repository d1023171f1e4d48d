"""ASR training on the tiny demo corpus: losses fall, resuming repeats an uninterrupted run, DDP."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import speechbrain as sb
import torch

from prepare_librispeech import read_librispeech
from ser_modules.adaptation import run_stage, stage_lr
from ser_modules.fileio import ManifestError
from ser_modules.asr_training import CTCBrain, LASBrain, evaluate_asr, fit_asr, run_options, update_asr_results
from ser_modules.data import LengthBucketBatchSampler, asr_dataset
from ser_modules.hparams import load_stage_hparams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "ctc_transfer": ["asr.conv_channels=2", "asr.rnn_layers=2", "asr.rnn_hidden=24", "asr.batch_size=4", "asr.patience=100",
                     "asr.lr=0.001"],
    "las_adapt": ["asr.listener_hidden=32", "asr.fc_size=32", "asr.speller_hidden=32", "asr.attention_dim=16", "asr.patience=100",
                  "asr.embedding_dim=8", "asr.batch_size=4", "asr.lr=0.01"],
}


@pytest.fixture(scope="module")
def asr_data(tiny_demo, tmp_path_factory):
    """16 training and 4 dev utterances of the tiny demo's LibriSpeech layout."""
    out = tmp_path_factory.mktemp("asr_data")
    splits = read_librispeech(tiny_demo["librispeech"])
    splits["train"].sort_values("duration").head(16).to_csv(out / "train.csv", index=False)
    for split in ("dev", "test"):
        splits[split].sort_values("duration").head(4).to_csv(out / f"{split}.csv", index=False)
    return str(out)


def tiny_hparams(recipe, asr_data, out, *extra):
    runner = {"output_folder": str(out), "data_folder": asr_data, "seed": 3}
    hparams, _ = load_stage_hparams(os.path.join(REPO, "recipes", recipe, "conf"), "asr", "demo", runner,
                                    TINY[recipe] + list(extra))
    return hparams


def train_losses(brain_cls, hparams, epochs):
    losses = []

    class Recording(brain_cls):
        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.TRAIN:
                losses.append(stage_loss)
            super().on_stage_end(stage, stage_loss, epoch)

    hparams["epoch_counter"].limit = epochs
    fit_asr(hparams, run_options("cpu", noprogressbar=True), Recording)
    return losses


@pytest.mark.parametrize("recipe,brain,epochs,ratio", [("ctc_transfer", CTCBrain, 4, 0.8), ("las_adapt", LASBrain, 15, 0.8)])
def test_training_loss_falls(recipe, brain, epochs, ratio, asr_data, tmp_path):
    losses = train_losses(brain, tiny_hparams(recipe, asr_data, tmp_path), epochs=epochs)
    assert len(losses) == epochs
    assert losses[-1] < ratio * losses[0], losses
    log = (tmp_path / "train_log.txt").read_text()
    assert f"epoch: {epochs}" in log and "valid CER" in log


def test_resume_after_interrupted_epoch_matches_uninterrupted(asr_data, tmp_path):
    whole = tiny_hparams("ctc_transfer", asr_data, tmp_path / "whole")
    train_losses(CTCBrain, whole, epochs=2)
    expected = {k: v.clone() for k, v in whole["model"].state_dict().items()}

    class Interrupted(CTCBrain):
        def fit_batch(self, batch):
            if self.hparams.epoch_counter.current == 2 and self.step == 2:
                raise KeyboardInterrupt("power cut in epoch 2")
            return super().fit_batch(batch)

    first = tiny_hparams("ctc_transfer", asr_data, tmp_path / "resumed")
    first["epoch_counter"].limit = 2
    with pytest.raises(KeyboardInterrupt):
        fit_asr(first, run_options("cpu", noprogressbar=True), Interrupted)
    second = tiny_hparams("ctc_transfer", asr_data, tmp_path / "resumed")  # a fresh process would rebuild all
    train_losses(CTCBrain, second, epochs=2)
    assert second["epoch_counter"].current == 2
    for name, value in second["model"].state_dict().items():
        assert torch.equal(value, expected[name]), name


def adaptation_hparams(asr_hp, out, *overrides):
    hp, _ = load_stage_hparams(os.path.join(REPO, "recipes", "las_adapt", "conf"), "adapt", "demo",
                               {"output_folder": str(out)},
                               ["adapt.lr=0.01", "adapt.batch_size=4", "adapt.select_on=CER", *overrides])
    return {**hp, "vocab": asr_hp["vocab"], "features": asr_hp["features"]}


@pytest.mark.parametrize("start_cer,keeps_start", [(50.0, True), (1000.0, False)])
def test_adaptation_stage_keeps_its_start_unless_an_epoch_beats_it(asr_data, tmp_path, start_cer, keeps_start):
    asr_hp = tiny_hparams("las_adapt", asr_data, tmp_path / "asr")
    model = asr_hp["model"]
    start = {k: v.clone() for k, v in model.state_dict().items()}

    class ValidCER90(LASBrain):  # every epoch scores validation CER 90
        def on_stage_end(self, stage, stage_loss, epoch=None):
            if stage == sb.Stage.VALID:
                self.cer_stats.summarize = lambda field=None: 90.0
            super().on_stage_end(stage, stage_loss, epoch)

    data = {"train": asr_hp["train_csv"], "valid": asr_hp["valid_csv"]}
    hp = adaptation_hparams(asr_hp, tmp_path / "adapt", "adapt.epochs_per_stage=2")
    record = run_stage(model, hp, "all", 1.0, data, str(tmp_path / "stage"), run_options("cpu", noprogressbar=True),
                       ValidCER90, start_error=start_cer)
    assert record["kept_start"] is keeps_start and record["valid"] == min(start_cer, 90.0)
    adapted = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(adapted[k], start[k]) for k in start) is keeps_start  # trained weights differ
    # A rerun (a new process) restores the same weights from disk without training.
    fresh = tiny_hparams("las_adapt", asr_data, tmp_path / "asr2")["model"]
    again = run_stage(fresh, hp, "all", 1.0, data, str(tmp_path / "stage"), run_options("cpu", noprogressbar=True),
                      ValidCER90, start_error=start_cer)
    assert again == record and all(torch.equal(fresh.state_dict()[k], adapted[k]) for k in adapted)


def test_adaptation_stage_scores_its_start_when_not_given(asr_data, tmp_path):
    asr_hp = tiny_hparams("las_adapt", asr_data, tmp_path / "asr")
    data = {"train": asr_hp["train_csv"], "valid": asr_hp["valid_csv"]}
    model = asr_hp["model"]
    expected = evaluate_asr(model, asr_hp["features"], asr_dataset(data["valid"], asr_hp["vocab"]), asr_hp["vocab"],
                            "cpu", str(tmp_path), "valid")["greedy"]["CER"]
    hp = adaptation_hparams(asr_hp, tmp_path / "adapt", "adapt.lr=0.0")  # no update: every epoch ties the start
    record = run_stage(model, hp, "encoder", 1.0, data, str(tmp_path / "stage"),
                       run_options("cpu", noprogressbar=True), LASBrain)
    assert record["start"] == pytest.approx(expected, abs=0.01) and record["kept_start"]


def test_adaptation_stage_learning_rates(asr_data, tmp_path):
    hp = {"lr": 1e-3, "stages": ["encoder", "decoder", "all"]}
    assert stage_lr(hp, "decoder") == 1e-3  # no scales: the shared lr
    hp["stage_lr_scale"] = [1.0, 0.25, 0.5]
    assert [stage_lr(hp, p) for p in hp["stages"]] == [1e-3, 2.5e-4, 5e-4]
    with pytest.raises(ManifestError, match="stage_lr_scale has 2 entries for 3 stages"):
        stage_lr({**hp, "stage_lr_scale": [1.0, 0.5]}, "all")
    # The optimiser of a stage runs at its scaled rate.
    asr_hp = tiny_hparams("las_adapt", asr_data, tmp_path / "asr")
    seen = []

    class Recording(LASBrain):
        def on_stage_end(self, stage, stage_loss, epoch=None):
            seen.append(self.optimizer.param_groups[0]["lr"])
            super().on_stage_end(stage, stage_loss, epoch)

    hp = adaptation_hparams(asr_hp, tmp_path / "adapt", "adapt.epochs_per_stage=1", "adapt.stage_lr_scale=[1.0,0.1,1.0]")
    run_stage(asr_hp["model"], hp, "decoder", 1.0, {"train": asr_hp["train_csv"], "valid": asr_hp["valid_csv"]},
              str(tmp_path / "stage"), run_options("cpu", noprogressbar=True), Recording, start_error=50.0)
    assert seen and all(lr == pytest.approx(0.001) for lr in seen)  # adapt.lr=0.01 x 0.1


def test_sampler_sortagrad_then_shuffled_buckets():
    lengths = [5.0, 1.0, 3.0, 2.0, 4.0, 6.0]
    sampler = LengthBucketBatchSampler(lengths, batch_size=2, sortagrad_epochs=1, seed=0)
    sampler.set_epoch(1)
    assert list(sampler) == [[1, 3], [2, 4], [0, 5]]  # epoch 1: ascending duration
    sampler.set_epoch(2)
    second = list(sampler)
    assert sorted(i for b in second for i in b) == list(range(6)) and len(second) == 3
    assert all(abs(lengths[a] - lengths[b]) <= 2 for a, b in second)  # buckets of similar length
    again = LengthBucketBatchSampler(lengths, batch_size=2, seed=0)
    again.set_epoch(2)
    assert list(again) == second  # the order depends only on seed and epoch


def test_evaluate_and_results_table(asr_data, tmp_path):
    hparams = tiny_hparams("ctc_transfer", asr_data, tmp_path)
    data = asr_dataset(hparams["test_csv"], hparams["vocab"])
    res = evaluate_asr(hparams["model"], hparams["features"], data, hparams["vocab"], "cpu", str(tmp_path), "test",
                       methods=("greedy", "beam"), beam_size=2)
    assert set(res) == {"greedy", "beam"} and res["greedy"]["utterances"] == len(pd.read_csv(hparams["test_csv"]))
    assert res["greedy"]["WER"] >= 0 and (tmp_path / "wer_test_greedy.txt").is_file()
    path = str(tmp_path / "asr_results.csv")
    row = {"model": "ds2", "stage": "pretrained", "corpus": "x", "split": "test", "decoder": "greedy", "WER": 50,
           "CER": 20, "utterances": 4, "checkpoint": ""}
    update_asr_results(path, [row, {**row, "split": "dev"}])
    update_asr_results(path, [{**row, "WER": 40}])  # replaces the test row, keeps dev
    table = pd.read_csv(path)
    assert len(table) == 2 and table.set_index("split").loc["test", "WER"] == 40


DDP_SCRIPT = r"""
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_asr_training import tiny_hparams
from ser_modules.asr_training import fit_asr, run_options
hp = tiny_hparams("ctc_transfer", {data!r}, os.path.join({out!r}, "exp"))
hp["epoch_counter"].limit = 1
fit_asr(hp, run_options("cpu", noprogressbar=True))
torch.save(hp["model"].state_dict(), os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
"""


def test_ddp_two_cpu_processes_stay_identical(asr_data, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=os.path.dirname(__file__), data=asr_data, out=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.path.join(REPO, "local"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    untrained = tiny_hparams("ctc_transfer", asr_data, tmp_path / "fresh")["model"].state_dict()
    assert any(not torch.equal(a[n], untrained[n]) for n in a)  # the replicas did train
