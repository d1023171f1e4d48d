"""Stage-5 training rules on the tiny demo corpus: early stopping on the validation loss, held off for a
minimum number of optimizer steps; the pooled standardisation fitted on the training speakers only."""

import json
import os

import numpy as np
import pytest
import torch

from ser_modules.data.features import MFCC, HandcraftedFeatures
from ser_modules.data.folds import Fold
from ser_modules.dump.writing import dump_features
from ser_modules.ser.inputs import SERInputs
from ser_modules.ser.training import train_fold_run
from ser_modules.ser.variants import VariantSpec
from ser_modules.utils.hparams import load_stage_hparams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UnnormalisedMFCC(torch.nn.Module):
    config = {"n_mfcc": 13}

    def __init__(self):
        super().__init__()
        self.mfcc = MFCC(16000, n_mfcc=13, delta_order=0, normalize=False)

    def forward(self, wav):
        feats, frames = self.mfcc(wav.reshape(1, -1), torch.tensor([wav.numel()]))
        return feats[0, : int(frames[0])]


@pytest.fixture(scope="module")
def corpus(tiny_demo, tmp_path_factory):
    """The tiny demo's turns with a handcrafted-feature store and one speaker fold."""
    from prepare_iemocap import read_corpus

    turns = read_corpus(tiny_demo["iemocap"])
    turns["emotion"] = np.where(turns.index % 2 == 0, "neu", "ang")
    tmp = tmp_path_factory.mktemp("ser_training")
    store = dump_features(turns, str(tmp), HandcraftedFeatures(), "handcrafted", "mfcc_pitch", "float32")
    stores = tmp / "stores.json"
    # MFCCs without normalisation stand in for an ASR layer: utterance means that differ, as a layer's do
    asr = dump_features(turns, str(tmp), UnnormalisedMFCC(), "asr", "layer1", "float32")
    stores.write_text(json.dumps({"asr": {"pretrained": {"folder": asr.folder}}, "handcrafted": {"folder": store.folder},
                                  "egemaps": None}))
    speakers = sorted(turns["speaker"].unique())
    ids = lambda spk: turns.loc[turns["speaker"].isin(spk), "ID"].tolist()  # noqa: E731
    fold = Fold(name="f1", test_speakers=[speakers[0]], valid_speakers=[speakers[1]], train=ids(speakers[2:]),
                valid=ids([speakers[1]]), test=ids([speakers[0]]))
    return turns, SERInputs(str(stores)), fold, tmp


BASELINE = {"name": "baseline-8", "type": "baseline", "hidden": 8, "frame_stack": 4}


def train(corpus, name, *overrides, variant=BASELINE):
    turns, inputs, fold, tmp = corpus
    hp, _ = load_stage_hparams(os.path.join(REPO, "recipes", "ctc_transfer", "conf"), "ser", "paper",
                               {"output_folder": str(tmp / name)}, ["ser.lr=0.05", "ser.batch_size=4", *overrides])
    spec = VariantSpec.from_dict(variant)
    train_fold_run(spec, fold, 0, turns, ["ang", "neu"], inputs, hp, str(tmp / name))
    return json.loads((tmp / name / "history.json").read_text())


def test_early_stopping_waits_patience_epochs_after_the_best_validation_loss(corpus):
    # lr 0.05 on random labels: the validation loss soon stops falling.
    history = train(corpus, "patience", "ser.max_epochs=25", "ser.early_stop_patience=3", "ser.anneal_patience=100")
    losses = [h["valid_loss"] for h in history]
    best = int(np.argmin(losses))
    assert len(history) == best + 1 + 3 < 25  # stopped exactly 3 epochs after the best one
    assert min(losses[best + 1:]) >= losses[best]
    # Without early stopping the same run goes on (only min_lr or max_epochs end it).
    assert len(train(corpus, "no_patience", f"ser.max_epochs={len(history) + 2}", "ser.anneal_patience=100")) \
        == len(history) + 2


def test_the_minimum_steps_hold_off_early_stopping(corpus):
    # The same run as above with early_stop_min_steps: no stop before that many optimizer steps.
    history = train(corpus, "patience", "ser.max_epochs=25", "ser.early_stop_patience=3", "ser.anneal_patience=100")
    per_epoch = history[0]["steps"]
    min_steps = (len(history) + 3) * per_epoch  # three epochs past where patience stopped it
    held = train(corpus, "min_steps", "ser.max_epochs=25", "ser.early_stop_patience=3", "ser.anneal_patience=100",
                 f"ser.early_stop_min_steps={min_steps}")
    assert [h["steps"] for h in held] == [per_epoch * e for e in range(1, len(held) + 1)]
    assert held[-1]["steps"] >= min_steps and len(held) >= len(history) + 3
    best = int(np.argmin([h["valid_loss"] for h in held]))
    assert len(held) == 25 or len(held) - (best + 1) >= 3  # where it stopped, the patience rule held


@pytest.mark.parametrize("variant", [
    {"name": "MP-norm", "type": "mp", "asr": "pretrained", "layer": "layer1", "asr_norm": "train"},
    {"name": "P-norm", "type": "progressive", "asr": "pretrained", "layer": "layer1", "hidden": 4, "frame_stack": 4,
     "asr_norm": "train"},
])
def test_asr_norm_statistics_come_from_the_training_speakers(corpus, variant):
    turns, inputs, fold, tmp = corpus
    train(corpus, variant["name"], "ser.max_epochs=1", variant=variant)
    state = torch.load(tmp / variant["name"] / "model.pt")
    store = inputs.asr_store("pretrained", fold.name)
    pooled = np.stack([store.get(i, "layer1").mean(axis=0) for i in fold.train])  # by hand, from the frames
    assert np.allclose(state["asr_norm.mean"].numpy(), pooled.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert np.allclose(state["asr_norm.std"].numpy(), pooled.std(axis=0), rtol=1e-4)  # population std
    everyone = np.stack([store.get(i, "layer1").mean(axis=0) for i in fold.train + fold.valid + fold.test])
    assert not np.allclose(state["asr_norm.mean"].numpy(), everyone.mean(axis=0), rtol=1e-3)  # not the others' stats


@pytest.mark.parametrize("variant, message", [
    ({"name": "w", "type": "weighted", "asr": "a", "layer": "l", "layers": ["l"], "asr_norm": "train"}, "asr_norm"),
    ({"name": "m", "type": "mp", "asr": "a", "layer": "l", "asr_norm": "fold"}, "asr_norm"),
    ({"name": "m", "type": "mp", "asr": "a", "layer": "l", "ablate": "asr"}, "ablate"),
    ({"name": "p", "type": "progressive", "asr": "a", "layer": "l", "ablate": "both"}, "ablate"),
    ({"name": "m", "type": "mp", "asr": "a", "layer": "l", "n_runs": 0}, "n_runs"),
])
def test_progressive_keys_refused_where_they_mean_nothing(variant, message):
    from ser_modules.utils.fileio import ManifestError

    with pytest.raises(ManifestError, match=f"variant '{variant['name']}': {message}"):
        VariantSpec.from_dict(variant)


def test_a_variant_sets_its_own_number_of_runs(tmp_path):
    import logging

    from ser_modules.report.results import variant_rows
    from ser_modules.ser.jobs import training_jobs
    from ser_modules.ser.variants import planned_pairs
    from ser_modules.utils.fileio import ManifestError

    variants = [{"name": "MP-1", "type": "mp", "asr": "a", "layer": "l", "n_runs": 3},
                {"name": "RNN-1", "type": "rnn", "asr": "a", "layer": "l"}]
    jobs = training_jobs(variants, 2, 1)
    assert sorted((v["name"], f, r) for v, f, r in jobs) == sorted(
        [("MP-1", f, r) for f in range(2) for r in range(3)] + [("RNN-1", f, 0) for f in range(2)])
    planned = planned_pairs(variants, 2, 1)
    assert planned == {"MP-1": 6, "RNN-1": 2}
    # Stage 6 wants each variant's own runs: MP-1 with 2 of its 3 runs per fold is refused, RNN-1's one is enough.
    # RNN-1 also has a second run of an earlier n_runs: 2, which stays on disk and is not scored
    for name, runs in (("MP-1", 2), ("RNN-1", 2)):
        for fold in ("f1", "f2"):
            for run in range(runs):
                folder = tmp_path / name / fold / f"run{run}"
                folder.mkdir(parents=True)
                folder.joinpath("predictions.csv").write_text(
                    f"ID,fold,run,true,predicted,p_ang,p_neu\nu1,{fold},{run},ang,ang,0.9,0.1\nu2,{fold},{run},neu,ang,0.6,0.4\n")
    hp = {"lr": 0.1, "n_runs": 1, "variants": variants}
    with pytest.raises(ManifestError, match="MP-1: predictions of 4 of the 6 planned"):
        variant_rows(str(tmp_path), variants, ["ang", "neu"], "RNN-1", hp, logging.getLogger(), planned)
    rows, _, _ = variant_rows(str(tmp_path), variants, ["ang", "neu"], "RNN-1", hp, logging.getLogger(), planned,
                              allow_incomplete=True)
    assert rows.set_index("model")["complete"].to_dict() == {"MP-1": False, "RNN-1": True}
    assert rows.set_index("model")["runs"].to_dict() == {"MP-1": 2, "RNN-1": 1}


def test_a_variants_own_runs_do_not_change_what_its_runs_are(corpus):
    # run0 of a variant given n_runs: 3 is the run0 it had with one run: read back, not retrained
    variant = {"name": "MP-runs", "type": "mp", "asr": "pretrained", "layer": "layer1"}
    turns, inputs, fold, tmp = corpus
    train(corpus, "MP-runs", "ser.max_epochs=1", variant=variant)
    hp, _ = load_stage_hparams(os.path.join(REPO, "recipes", "ctc_transfer", "conf"), "ser", "paper",
                               {"output_folder": str(tmp / "MP-runs")}, ["ser.lr=0.05", "ser.batch_size=4", "ser.max_epochs=1"])
    frame = train_fold_run(VariantSpec.from_dict({**variant, "n_runs": 3}), fold, 0, turns, ["ang", "neu"], inputs, hp,
                           str(tmp / "MP-runs"))
    assert frame.attrs.get("finished_before") is True
