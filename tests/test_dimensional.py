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
    other = np.array([[2.0, 4.0, 1.0]])
    assert np.allclose(scaler.inverse(scaler.transform(other)), other)
    assert np.allclose(scaler.transform(train).mean(axis=0), 0.0)
    with pytest.raises(ValueError, match=r"\[N, attributes\]"):
        TargetScaler.fit(np.zeros(3))
