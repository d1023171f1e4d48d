"""Dimensional emotion scoring: CCC against a hand computation and audmetric, the 1 - CCC loss, target scaling."""

import numpy as np
import pytest
import torch

from ser_modules.ser.dimensional import TargetScaler, ccc_loss, concordance_correlation, regression_metrics


def test_ccc_against_a_hand_computation():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 4.0, 5.0]
    # means 2.5 and 3.25; population variances 1.25 and 1.6875; covariance 1.375
    expected = 2 * 1.375 / (1.25 + 1.6875 + 0.75 ** 2)
    assert concordance_correlation(x, y) == pytest.approx(expected, rel=1e-12)
    assert concordance_correlation(x, x) == pytest.approx(1.0)
    assert concordance_correlation(x, [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)  # mirrored about the mean
    assert concordance_correlation(x, [2.5] * 4) == 0.0  # a mean predictor
    assert np.isnan(concordance_correlation([3.0] * 4, [3.0] * 4))
    with pytest.raises(ValueError, match="1-D sequences of one length"):
        concordance_correlation(x, y[:3])


def test_ccc_equals_audmetric_and_penalises_what_pearson_ignores():
    audmetric = pytest.importorskip("audmetric")
    rng = np.random.default_rng(0)
    true = rng.normal(3.0, 0.8, 200)
    predicted = 0.6 * true + rng.normal(0.5, 0.4, 200)
    assert concordance_correlation(true, predicted) == pytest.approx(audmetric.concordance_cc(true, predicted), rel=1e-9)
    scores = regression_metrics(true, predicted)
    assert scores["r"] == pytest.approx(np.corrcoef(true, predicted)[0, 1])
    assert scores["RMSE"] == pytest.approx(np.sqrt(np.mean((true - predicted) ** 2)))
    shifted = regression_metrics(true, true + 1.0)  # perfectly correlated, biased by one point
    assert shifted["r"] == pytest.approx(1.0) and shifted["RMSE"] == pytest.approx(1.0)
    assert shifted["CCC"] == pytest.approx(2 * true.var() / (2 * true.var() + 1.0))  # the bias costs concordance


def test_ccc_loss_is_one_minus_ccc_per_attribute_and_trains_a_regressor():
    rng = np.random.default_rng(1)
    target, predicted = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    want = np.mean([1 - concordance_correlation(target[:, a], predicted[:, a]) for a in range(3)])
    got = ccc_loss(torch.tensor(predicted), torch.tensor(target))
    assert float(got) == pytest.approx(want, rel=1e-6)
    # a linear regressor trained on 1 - CCC reaches a high CCC on its training data
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x @ torch.randn(5, 2) + 0.1 * torch.randn(64, 2)
    model = torch.nn.Linear(5, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        loss = ccc_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(x).numpy()
    assert min(concordance_correlation(y[:, a].numpy(), out[:, a]) for a in range(2)) > 0.95
    with pytest.raises(ValueError, match=r"\[B, A\]"):
        ccc_loss(torch.zeros(4), torch.zeros(4))


def test_target_scaler_uses_training_statistics_and_inverts():
    train = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 3.0]])
    scaler = TargetScaler.fit(train)
    assert np.allclose(scaler.mean, [3.0, 5.0, 3.0])
    assert np.allclose(scaler.std, [np.sqrt(8 / 3), 1.0, np.sqrt(2 / 3)])  # a constant attribute keeps std 1
    inside = np.array([[2.0, 5.0, 3.5]])
    assert np.allclose(scaler.inverse(scaler.transform(inside)), inside)
    # predictions return clipped to the training targets' range (a rating scale is bounded)
    assert np.allclose(scaler.inverse(scaler.transform(np.array([[9.0, 4.0, 1.0]]))), [[5.0, 5.0, 2.0]])
    restored = TargetScaler(**scaler.state_dict())  # as model.json keeps it
    assert np.allclose(restored.inverse([[10.0, 0.0, -10.0]]), [[5.0, 5.0, 2.0]])
    assert np.allclose(TargetScaler([3.0], [2.0]).inverse([[10.0]]), [[23.0]])  # no bounds: not clipped
    assert np.allclose(scaler.transform(train).mean(axis=0), 0.0)
    with pytest.raises(ValueError, match=r"\[N, attributes\]"):
        TargetScaler.fit(np.zeros(3))


def _write_attribute_predictions(folder, name, rng, noise, folds=("f1", "f2", "f3"), runs=2, classes=False):
    import pandas as pd

    for fold in folds:
        for run in range(runs):
            true = rng.uniform(1, 5, size=(30, 2))
            frame = pd.DataFrame({"ID": [f"{fold}_{i}" for i in range(30)], "fold": fold, "run": run, "true": "ang"})
            if classes:
                frame["predicted"], frame["p_ang"], frame["p_neu"] = "ang", 0.7, 0.3
            for j, a in enumerate(("arousal", "valence")):
                frame[f"true_{a}"] = true[:, j]
                frame[f"pred_{a}"] = true[:, j] + rng.normal(0, noise[j], size=30)
            path = folder / name / fold / f"run{run}"
            path.mkdir(parents=True)
            frame.to_csv(path / "predictions.csv", index=False)


def test_stage6_scores_attributes_by_ccc_with_p_values_against_the_attribute_reference(tmp_path):
    import logging

    from ser_modules.report.attributes import attribute_table, resolve_attribute_reference
    from ser_modules.report.results import variant_rows
    from ser_modules.ser.metrics import per_fold_run_attributes

    rng = np.random.default_rng(0)
    _write_attribute_predictions(tmp_path, "good", rng, (0.3, 0.6))
    _write_attribute_predictions(tmp_path, "poor", rng, (1.5, 2.0))
    _write_attribute_predictions(tmp_path, "multi", rng, (0.5, 0.5), classes=True)
    variants = [{"name": "poor", "type": "baseline", "task": "dimensional"},
                {"name": "good", "type": "mp", "asr": "a", "layer": "l", "task": "dimensional"},
                {"name": "multi", "type": "mp", "asr": "a", "layer": "l", "task": "multitask"}]
    reference = resolve_attribute_reference(None, "baseline-cat", variants + [{"name": "baseline-cat", "type": "baseline"}])
    assert reference == "poor"  # the categorical reference's type
    assert resolve_attribute_reference("good", "baseline-cat", variants) == "good"
    assert resolve_attribute_reference("eGeMAPS-ridge", "baseline-cat", variants) == "poor"  # not trained: automatic
    rows, _, preds = variant_rows(str(tmp_path), variants, ["ang", "neu"], "multi", {"n_runs": 2}, logging.getLogger(),
                                  {"poor": 6, "good": 6, "multi": 6}, attribute_reference=reference)
    rows = rows.set_index("model")
    # CCC per (fold, run) by formula, then mean +/- std over the 6 pairs
    per_pair = per_fold_run_attributes(preds["good"])
    by_hand = [concordance_correlation(g["true_arousal"], g["pred_arousal"]) for _, g in preds["good"].groupby(["fold", "run"])]
    np.testing.assert_allclose(per_pair["CCC_arousal"], by_hand)
    assert rows.at["good", "CCC_arousal_mean"] == pytest.approx(np.mean(by_hand), abs=1e-4)
    assert rows.at["good", "CCC_arousal_std"] == pytest.approx(np.std(by_hand, ddof=1), abs=1e-4)
    # p-values of the CCC against the reference, none for the reference itself; UA only where classes are
    assert rows.at["good", "p_ttest_CCC_arousal"] < 0.001 and np.isnan(rows.at["poor", "p_ttest_CCC_arousal"])
    assert np.isnan(rows.at["good", "UA_mean"]) and rows.at["multi", "UA_mean"] == pytest.approx(1.0)
    table = attribute_table(rows.reset_index(), None)
    assert table["Model"].tolist() == ["poor", "good", "multi"]
    assert table.iloc[1]["CCC arousal"].startswith("**")  # the best arousal CCC in bold
    assert table.iloc[0]["p arousal"] == "–"


def test_the_mean_predictor_row_has_ccc_zero_and_the_test_spread_as_rmse():
    import pandas as pd

    from ser_modules.data.folds import Fold
    from ser_modules.ser.metrics import mean_predictor_scores

    manifest = pd.DataFrame({"ID": list("abcdef"), "arousal": ["1", "2", "3", "5", "4", "2"]})
    fold = Fold(name="f1", test_speakers=["x"], valid_speakers=["y"], train=["a", "b", "c"], valid=["d"], test=["e", "f"])
    row = mean_predictor_scores(manifest, [fold], ["arousal"]).iloc[0]
    assert row["CCC_arousal"] == 0.0
    assert row["RMSE_arousal"] == pytest.approx(np.sqrt(((4 - 2) ** 2 + (2 - 2) ** 2) / 2))  # training mean 2


def test_attribute_values_refuse_a_missing_value_naming_the_utterance():
    import pandas as pd

    from ser_modules.ser.dimensional import attribute_values
    from ser_modules.utils.fileio import ManifestError

    manifest = pd.DataFrame({"ID": ["u1", "u2"], "arousal": ["3.5", ""], "valence": [1, 2]})
    assert attribute_values(manifest, ["valence"])["u2"].tolist() == [2.0]
    with pytest.raises(ManifestError, match=r"corpus.csv: utterance u2: arousal '' is not a number \(1 of 2"):
        attribute_values(manifest, ["arousal"], "corpus.csv")
    with pytest.raises(ManifestError, match="no dominance column"):
        attribute_values(manifest, ["dominance"])


def test_inference_rows_of_a_dimensional_variant_carry_attributes_in_their_scale_and_no_classes():
    from ser_modules.inference.batching import BatchPredictor
    from ser_modules.inference.loading import FoldModel
    from ser_modules.inference.streaming import FileState, ResultRows
    from ser_modules.ser.variants import VariantSpec

    spec = VariantSpec.from_dict({"name": "v", "type": "mp", "asr": "a", "layer": "l", "task": "dimensional"})
    fold = FoldModel("f1", torch.nn.Identity(), None, ["arousal", "valence"], TargetScaler([3.0, 2.0], [0.5, 1.0],
                                                                                         [1.0, 1.0], [5.0, 5.0]))
    predictor = BatchPredictor.__new__(BatchPredictor)
    predictor.spec = spec
    values = predictor.fold_outputs(fold, torch.tensor([[1.0, -1.0], [10.0, 0.0]]))
    assert np.allclose(values, [[3.5, 1.0], [5.0, 2.0]])  # mean + std * output, clipped to the training range
    multitask = VariantSpec.from_dict({**spec.options, "name": "m", "type": "mp", "asr": "a", "layer": "l",
                                       "task": "multitask"})
    predictor.spec = multitask
    both = predictor.fold_outputs(fold, torch.tensor([[0.0, 0.0, 1.0, -1.0]]))
    assert np.allclose(both, [[0.5, 0.5, 3.5, 1.0]])  # softmax over the 2 class logits, then the attributes
    rows = ResultRows([], False, ["arousal", "valence"])
    state = FileState("a.wav", 2, (None, None), "")
    state.add(values[0], 16000, "")
    state.add(values[1], 48000, "")  # a longer window weighs more
    rows.finish(state)
    rows.error("b.wav", "b.wav: unreadable")
    ok, bad = rows.ordered(["a.wav", "b.wav"])
    assert "emotion" not in ok and not any(k.startswith("p_") for k in ok)
    assert ok["arousal"] == pytest.approx((3.5 + 3 * 5.0) / 4) and ok["valence"] == pytest.approx((1.0 + 3 * 2.0) / 4)
    assert bad["arousal"] == "" and bad["status"] == "error" and "emotion" not in bad
