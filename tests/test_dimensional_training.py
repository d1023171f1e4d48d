"""Stage 5 with attribute targets (issue 41): regression heads on the same inputs as the categorical ones,
targets standardised per training fold, predictions in the attribute's original scale, multitask heads."""

import dataclasses
import json
import os

import numpy as np
import pytest

from ser_modules.ser.dimensional import concordance_correlation
from ser_modules.ser.jobs import skip_reason
from ser_modules.ser.training import train_fold_run
from ser_modules.ser.variants import VariantSpec
from ser_modules.utils.fileio import ManifestError
from ser_modules.utils.hparams import load_stage_hparams
from test_ser_training import REPO, corpus  # noqa: F401  (the module fixture)


@pytest.fixture(scope="module")
def learnable(corpus):  # noqa: F811
    """The fixture corpus with arousal and valence that are linear in the pooled stand-in ASR layer (on a 1-5
    like scale): a regression head on that layer can learn them; scored on its training utterances (8 utterances
    do not generalise over 13 dimensions, but they show that the head fits)."""
    turns, inputs, fold, tmp = corpus
    fold = dataclasses.replace(fold, test=list(fold.train))
    store = inputs.asr_store("pretrained", fold.name)
    pooled = store.mean_pooled("layer1", turns["ID"])
    turns = turns.copy()
    z = (pooled - pooled.mean(0)) / pooled.std(0)
    turns["arousal"] = 3 + 0.8 * z[:, 0]
    turns["valence"] = 2.5 + 0.5 * z[:, 1] - 0.3 * z[:, 2]
    return turns, inputs, fold, tmp


def train(data, name, variant, *overrides):
    turns, inputs, fold, tmp = data
    hp, _ = load_stage_hparams(os.path.join(REPO, "recipes", "ctc_transfer", "conf"), "ser", "paper",
                               {"output_folder": str(tmp / name)},
                               ["ser.lr=0.05", "ser.batch_size=4", "ser.max_epochs=150", "ser.dropout=0.0", "ser.anneal_patience=1000", "ser.attributes=[arousal,valence]",
                                *overrides])
    frame = train_fold_run(VariantSpec.from_dict(variant), fold, 0, turns, ["ang", "neu"], inputs, hp, str(tmp / name))
    return frame, json.loads((tmp / name / "history.json").read_text()), json.loads((tmp / name / "model.json").read_text())


MP_DIM = {"name": "MP-dim", "type": "mp", "asr": "pretrained", "layer": "layer1", "asr_norm": "train",
          "task": "dimensional"}


def test_a_dimensional_head_learns_attributes_in_their_original_scale(learnable):
    turns, _, fold, _ = learnable
    frame, history, info = train(learnable, "mp_dim", MP_DIM)
    assert list(frame.columns) == ["ID", "fold", "run", "true", "true_arousal", "pred_arousal", "true_valence",
                                   "pred_valence"]  # no class columns for a dimensional variant
    assert sorted(frame["ID"]) == sorted(fold.test)
    truth = turns.set_index("ID").loc[frame["ID"]]
    np.testing.assert_allclose(frame["true_arousal"], truth["arousal"], atol=1e-6)  # the manifest's values
    for attribute in ("arousal", "valence"):
        assert concordance_correlation(frame[f"true_{attribute}"], frame[f"pred_{attribute}"]) > 0.8
    # standardised with the training speakers' statistics, which model.json keeps for inference
    train_values = turns.set_index("ID").loc[fold.train, ["arousal", "valence"]].to_numpy()
    np.testing.assert_allclose(info["attribute_scaler"]["mean"], train_values.mean(0), rtol=1e-6)
    np.testing.assert_allclose(info["attribute_scaler"]["std"], train_values.std(0), rtol=1e-6)
    assert info["attributes"] == ["arousal", "valence"] and info["task"] == "dimensional"
    assert "valid_CCC" in history[-1] and "valid_UA" not in history[-1]
    # the validation loss model selection reads is 1 - CCC over the whole validation set
    best = min(history, key=lambda h: h["valid_loss"])
    assert best["valid_loss"] == pytest.approx(1 - best["valid_CCC"], abs=2e-3)


def test_a_multitask_head_predicts_classes_and_attributes(learnable):
    frame, history, info = train(learnable, "mp_multi", {**MP_DIM, "name": "MP-multi", "task": "multitask"},
                                 "ser.max_epochs=5")
    assert {"predicted", "p_ang", "p_neu", "pred_arousal", "pred_valence"} <= set(frame.columns)
    np.testing.assert_allclose(frame[["p_ang", "p_neu"]].sum(axis=1), 1, atol=1e-5)
    assert {"valid_UA", "valid_CCC"} <= set(history[-1])


def test_mse_loss_and_ridge_reference_keys_are_checked():
    with pytest.raises(ManifestError, match="attribute_loss must be one of"):
        VariantSpec.from_dict({**MP_DIM, "attribute_loss": "l1"})
    with pytest.raises(ManifestError, match="task must be one of"):
        VariantSpec.from_dict({**MP_DIM, "task": "regression"})
    with pytest.raises(ManifestError, match="task_weight"):
        VariantSpec.from_dict({**MP_DIM, "task_weight": 0})


def test_a_corpus_without_attributes_skips_dimensional_variants_with_the_reason(learnable):
    turns, inputs, fold, _ = learnable
    spec = VariantSpec.from_dict(MP_DIM)
    stores = {"pretrained": {}}
    assert skip_reason(spec, True, stores, [fold], "", turns, ["arousal"]) is None
    no_labels = turns.assign(arousal="")
    reason = skip_reason(spec, True, stores, [fold], "", no_labels, ["arousal"])
    assert "needs arousal for every utterance" in reason
    assert skip_reason(VariantSpec.from_dict({**MP_DIM, "task": "categorical"}), True, stores, [fold], "", no_labels,
                       ["arousal"]) is None


@pytest.mark.parametrize("variant", [
    {"type": "baseline"}, {"type": "mp", "asr": "a", "layer": "l1"}, {"type": "rnn", "asr": "a", "layer": "l1"},
    {"type": "progressive", "asr": "a", "layer": "l1"}, {"type": "iaan", "asr": "a", "layer": "l1"},
    {"type": "weighted", "asr": "a", "layer": "l1", "layers": ["l1", "l2"]},
    {"type": "weighted", "asr": "a", "layer": "l1", "layers": ["l1", "l2"], "head": "rnn"},
    {"type": "reference"},
])
@pytest.mark.parametrize("task, outputs", [("categorical", 4), ("dimensional", 3), ("multitask", 7)])
def test_every_model_family_has_the_tasks_outputs_in_its_last_layer(variant, task, outputs):
    import torch

    from ser_modules.ser.variants import build_model

    spec = VariantSpec.from_dict({"name": "v", "hidden": 8, **variant, "task": task})
    model = build_model(spec, {"handcrafted": 5, "asr": 6, "egemaps": 7, "layers": 2}, 4, 0.0, 3)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)] if variant["type"] != "reference" else []
    out_features = last[-1].out_features if last else model.bias.numel()
    assert out_features == outputs
