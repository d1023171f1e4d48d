"""The classical reference row: eGeMAPS functionals (openSMILE) + linear SVM (scikit-learn), trained
on the same folds as the neural models."""

import json

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from ser_modules.data.audio import load_audio
from ser_modules.data.features import EGeMAPSFunctionals
from ser_modules.data.folds import Fold
from ser_modules.dump.writing import dump_features
from ser_modules.models.ser import LinearSVMReference
from ser_modules.ser.inputs import SERInputs
from ser_modules.ser.training import train_fold_run
from ser_modules.ser.variants import VariantSpec, build_model


@pytest.fixture(scope="module")
def corpus(tiny_demo, tmp_path_factory):
    """The tiny demo's turns (4 speakers) with an eGeMAPS store and a speaker fold."""
    from prepare_iemocap import read_corpus

    turns = read_corpus(tiny_demo["iemocap"])
    turns["emotion"] = np.where(turns.index % 2 == 0, "neu", "ang")  # two balanced classes per speaker
    tmp = tmp_path_factory.mktemp("reference")
    store = dump_features(turns, str(tmp), EGeMAPSFunctionals(), "egemaps", "egemaps", "float32")
    stores = tmp / "stores.json"
    stores.write_text(json.dumps({"asr": {}, "handcrafted": None, "egemaps": {"folder": store.folder}}))
    speakers = sorted(turns["speaker"].unique())
    ids = lambda spk: turns.loc[turns["speaker"].isin(spk), "ID"].tolist()  # noqa: E731
    fold = Fold(name="f1", test_speakers=[speakers[0]], valid_speakers=[speakers[1]], train=ids(speakers[2:]),
                valid=ids([speakers[1]]), test=ids([speakers[0]]))
    return turns, SERInputs(str(stores)), fold, tmp


def test_reference_agrees_with_a_direct_sklearn_fit(corpus):
    turns, inputs, fold, tmp = corpus
    classes = ["ang", "neu"]
    spec = VariantSpec.from_dict({"name": "eGeMAPS-SVM", "type": "reference", "C": 0.1})
    frame = train_fold_run(spec, fold, 0, turns, classes, inputs, {"seed": 1, "dropout": 0.0}, str(tmp / "run"))

    # Directly: openSMILE on the audio, scaler and SVM fitted on train + validation speakers.
    extractor = EGeMAPSFunctionals()
    wav = dict(zip(turns["ID"], turns["wav"]))
    label = dict(zip(turns["ID"], turns["emotion"]))
    x = lambda ids: np.concatenate([extractor(load_audio(wav[i])).numpy() for i in ids]).astype(np.float64)  # noqa: E731
    fit_ids = fold.train + fold.valid
    scaler = StandardScaler().fit(x(fit_ids))
    svm = LinearSVC(C=0.1, max_iter=20000, random_state=1).fit(scaler.transform(x(fit_ids)),
                                                              [classes.index(label[i]) for i in fit_ids])
    test = frame["ID"].tolist()
    assert sorted(test) == sorted(fold.test)
    decision = svm.decision_function(scaler.transform(x(test)))
    assert frame["predicted"].tolist() == [classes[int(d > 0)] for d in decision]
    # The two-class decision d becomes scores softmax([-d/2, d/2]) = sigmoid(d).
    np.testing.assert_allclose(frame["p_neu"], 1 / (1 + np.exp(-decision)), atol=1e-4)

    # The saved model answers like the fit (what inference loads).
    model = build_model(spec, {"egemaps": 88}, 2, 0.0)
    model.load_state_dict(torch.load(tmp / "run" / "model.pt"))
    feats = torch.from_numpy(x(test).astype(np.float32)).unsqueeze(1)
    np.testing.assert_allclose(model(feats, torch.ones(len(test))).softmax(-1)[:, 1], frame["p_neu"], atol=1e-4)


def test_reference_chooses_c_on_the_validation_speakers(corpus):
    turns, inputs, fold, tmp = corpus
    spec = VariantSpec.from_dict({"name": "ref", "type": "reference", "C": [0.0001, 0.01, 1.0]})
    train_fold_run(spec, fold, 0, turns, ["ang", "neu"], inputs, {"seed": 1, "dropout": 0.0}, str(tmp / "grid"))
    history = json.loads((tmp / "grid" / "history.json").read_text())
    tried = {h["C"]: h["valid_UA"] for h in history if "C" in h}
    assert sorted(tried) == [0.0001, 0.01, 1.0]
    best = max(tried.values())
    assert history[-1]["chosen_C"] == min(c for c, ua in tried.items() if ua == best)  # ties: the smaller C
    assert history[-1]["fitted_on"] == "train+valid"


def test_reference_on_a_fold_with_one_training_class_predicts_it(corpus):
    turns, inputs, fold, tmp = corpus
    one_class = turns.assign(emotion="ang")  # a tiny corpus's fold: LinearSVC refuses a single class
    spec = VariantSpec.from_dict({"name": "ref", "type": "reference", "C": [0.01, 1.0]})
    frame = train_fold_run(spec, fold, 0, one_class, ["ang", "neu"], inputs, {"seed": 1, "dropout": 0.0},
                           str(tmp / "one"))
    assert (frame["predicted"] == "ang").all() and (frame["p_ang"] > 0.99).all()


def test_reference_class_absent_from_training_is_never_predicted():
    model = LinearSVMReference(3, 4)
    coef = np.zeros((4, 3))
    coef[[0, 1, 3]] = np.eye(3)
    model.set_parameters(np.zeros(3), np.ones(3), coef, [0.0, 0.0, -1e4, 0.0])
    scores = model(torch.randn(50, 1, 3) * 10, torch.ones(50))
    assert (scores.argmax(-1) != 2).all()


def test_reference_needs_the_egemaps_store(tmp_path):
    stores = tmp_path / "stores.json"
    stores.write_text(json.dumps({"asr": {}, "handcrafted": None, "egemaps": None}))
    with pytest.raises(Exception, match="egemaps: True"):
        SERInputs(str(stores)).egemaps_store()
    assert VariantSpec.from_dict({"name": "r", "type": "reference"}).asr is None


def test_ridge_reference_agrees_with_a_direct_sklearn_fit_in_the_attributes_scale(corpus):
    from sklearn.linear_model import Ridge

    turns, inputs, fold, tmp = corpus
    spec = VariantSpec.from_dict({"name": "eGeMAPS-ridge", "type": "reference", "task": "multitask", "C": 0.1,
                                  "alpha": [1.0, 100.0]})
    hp = {"seed": 1, "dropout": 0.0, "attributes": ["arousal", "valence"]}
    frame = train_fold_run(spec, fold, 0, turns, ["ang", "neu"], inputs, hp, str(tmp / "ridge"))
    history = json.loads((tmp / "ridge" / "history.json").read_text())
    alpha = history[-1]["chosen_alpha"]
    assert alpha in (1.0, 100.0) and history[-1]["chosen_C"] == 0.1
    # Directly: scaler on train + valid, targets standardised with the training speakers' statistics.
    store = inputs.egemaps_store()
    x = lambda ids: np.stack([store.get(i, "egemaps")[0] for i in ids]).astype(np.float64)  # noqa: E731
    y = turns.set_index("ID")[["arousal", "valence"]].astype(float)
    mean, std = y.loc[fold.train].mean().to_numpy(), y.loc[fold.train].std(ddof=0).to_numpy()
    fit_ids = fold.train + fold.valid
    scaler = StandardScaler().fit(x(fit_ids))
    ridge = Ridge(alpha=alpha).fit(scaler.transform(x(fit_ids)), (y.loc[fit_ids].to_numpy() - mean) / std)
    expected = ridge.predict(scaler.transform(x(frame["ID"]))) * std + mean
    expected = np.clip(expected, y.loc[fold.train].min().to_numpy(), y.loc[fold.train].max().to_numpy())
    np.testing.assert_allclose(frame[["pred_arousal", "pred_valence"]], expected, atol=1e-4)
    np.testing.assert_allclose(frame["true_valence"], y.loc[frame["ID"], "valence"], atol=1e-6)
    assert {"predicted", "p_ang", "p_neu"} <= set(frame.columns)  # the SVM's rows beside the ridge's
