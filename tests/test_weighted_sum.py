"""The SUPERB weighted layer sum (ser_modules/models/ser.py WeightedLayerSum, ser_modules/ser/):
layer weights at their own learning rate, per-layer normalisation against a hand computation, the
minimum-steps rule of early stopping, and stage 6's entropy of the learned weights."""

import numpy as np
import pytest
import torch

from ser_modules.models.ser import FineTuneMP, WeightedLayerSum
from ser_modules.ser.brain import PlateauAnnealer, param_groups, should_stop
from ser_modules.ser.variants import VariantSpec, build_model, pool_layers


def toy(layer_norm: bool) -> WeightedLayerSum:
    model = WeightedLayerSum(3, 4, FineTuneMP(4, n_classes=2, dropout=0.0), layer_norm=layer_norm)
    with torch.no_grad():
        model.layer_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
    return model


@pytest.mark.parametrize("layer_norm", [False, True])
def test_the_weighted_sum_equals_a_hand_computation_on_a_3_layer_toy(layer_norm):
    # one frame, three layers of 4 features at very different scales
    layers = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, -10.0, 10.0, -10.0], [0.1, 0.1, 0.3, 0.5]])
    logits = np.array([0.5, -1.0, 2.0])
    weights = np.exp(logits) / np.exp(logits).sum()
    if layer_norm:  # (x - mean) / sqrt(var + 1e-5) per layer, the biased variance
        layers = (layers - layers.mean(1, keepdims=True)) / np.sqrt(layers.var(1, keepdims=True) + 1e-5)
    expected = (weights[:, None] * layers).sum(0)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0, -10.0, 10.0, -10.0, 0.1, 0.1, 0.3, 0.5]]).view(1, 1, 12)
    got = toy(layer_norm).combine(x)[0, 0].detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # worked by hand: weights softmax(0.5, -1, 2) = 0.17529, 0.03911, 0.78560; normalised layers
    # [-1.34164, -0.44721, 0.44721, 1.34164], [1, -1, 1, -1], [-0.90437, -0.90437, 0.30146, 1.50728]
    by_hand = [-0.90654, -0.82797, 0.35433, 1.38019] if layer_norm else [0.64495, 0.03804, 1.15265, 0.70286]
    np.testing.assert_allclose(got, by_hand, atol=2e-4)


def test_a_padded_frame_stays_zero_under_layer_norm():
    x = torch.zeros(1, 2, 12)
    x[0, 0] = torch.arange(12.0)
    out = toy(True).combine(x)
    assert torch.equal(out[0, 1], torch.zeros(4)) and out[0, 0].abs().sum() > 0


def test_layer_norm_pools_the_normalised_frames_not_the_normalised_mean():
    mp = VariantSpec.from_dict({"name": "w", "type": "weighted", "head": "mp", "asr": "up", "layer": "weighted"})
    normed = VariantSpec.from_dict({"name": "w", "type": "weighted", "head": "mp", "asr": "up", "layer": "weighted",
                                    "layer_norm": True, "layers": ["a", "b", "c"]})
    rnn = VariantSpec.from_dict({"name": "w", "type": "weighted", "head": "rnn", "asr": "up", "layer": "weighted",
                                 "layer_norm": True})
    assert mp.pooled and not mp.normalised and normed.pooled and normed.normalised and not rnn.pooled
    model = build_model(normed, {"asr": 4, "layers": 3}, 2, 0.0)
    assert isinstance(model, WeightedLayerSum) and model.layer_norm
    # two frames of 3 layers x 4 features (and a padded third frame), pooled by hand
    frames = np.array([[1.0, 2.0, 3.0, 4.0, 10.0, -10.0, 10.0, -10.0, 0.1, 0.1, 0.3, 0.5],
                       [4.0, 0.0, 0.0, 0.0, -1.0, -1.0, 1.0, 1.0, 2.0, 4.0, 6.0, 8.0]])
    per_layer = frames.reshape(2, 3, 4)
    normalised = (per_layer - per_layer.mean(2, keepdims=True)) / np.sqrt(per_layer.var(2, keepdims=True) + 1e-5)
    expected = normalised.mean(0).reshape(12)
    mean_first = per_layer.mean(0)
    assert np.abs(expected - ((mean_first - mean_first.mean(1, keepdims=True)) /
                              np.sqrt(mean_first.var(1, keepdims=True) + 1e-5)).reshape(12)).max() > 0.1
    x = torch.zeros(1, 3, 12)
    x[0, :2] = torch.tensor(frames, dtype=torch.float32)
    lengths = torch.tensor([2])
    pooled = pool_layers(normed, x[0, :2])
    np.testing.assert_allclose(pooled[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    model.eval()
    torch.testing.assert_close(model.forward_pooled(pooled), model(x, lengths), atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="MP head"):
        build_model(rnn, {"asr": 4, "layers": 3}, 2, 0.0).forward_pooled(pooled)


def test_the_layer_weights_move_at_their_own_learning_rate():
    torch.manual_seed(0)
    model = toy(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = param_groups(model, 1e-3, 0.1)
    assert [len(g["params"]) for g in groups] == [2, 1] and [g["lr"] for g in groups] == [1e-3, 0.1]
    opt = torch.optim.Adam(groups, lr=1e-3)
    x, lengths = torch.randn(8, 5, 12), torch.full((8,), 5)
    loss = torch.nn.functional.cross_entropy(model(x, lengths), torch.randint(0, 2, (8,)))
    loss.backward()
    assert model.layer_logits.grad.abs().min() > 0
    opt.step()
    # Adam's first step moves every parameter with a gradient by its learning rate (m / sqrt(v) = sign(g))
    step = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
    torch.testing.assert_close(step["layer_logits"], torch.full((3,), 0.1), rtol=1e-4, atol=0)
    head = step["head.classifier.weight"]
    torch.testing.assert_close(head[head > 0], torch.full_like(head[head > 0], 1e-3), rtol=1e-3, atol=0)
    assert len(param_groups(model, 1e-3, None)) == 1  # no own rate: one group, as before
    frozen = param_groups(model, 1e-3, 0.0)  # 0 is a rate: the layer weights stay where they are
    assert [g["lr"] for g in frozen] == [1e-3, 0.0]


def test_a_weighted_sums_own_rate_leaves_other_variants_finished_runs_alone():
    from types import SimpleNamespace

    from ser_modules.data.folds import Fold
    from ser_modules.ser.training import run_key

    fold = Fold(name="f1", test_speakers=["a"], valid_speakers=["b"], train=["u1"], valid=["u2"], test=["u3"])
    inputs = SimpleNamespace(asr_store=lambda asr, fold: SimpleNamespace(folder="/exp/dump/up/abc"))
    hp = {"lr": 1e-3, "batch_size": 32}
    mp = VariantSpec.from_dict({"name": "MP", "type": "mp", "asr": "up", "layer": "layer1"})
    weighted = VariantSpec.from_dict({"name": "w", "type": "weighted", "asr": "up", "layer": "weighted"})
    with_rate = {**hp, "layer_weights_lr": 0.05}
    assert run_key(mp, fold, 0, ["a", "b"], inputs, hp) == run_key(mp, fold, 0, ["a", "b"], inputs, with_rate)
    assert run_key(weighted, fold, 0, ["a", "b"], inputs, hp) != run_key(weighted, fold, 0, ["a", "b"], inputs, with_rate)


def test_annealing_scales_the_layer_weights_rate_alike(tmp_path):
    """SERBrain.on_stage_start sets each group to its initial rate times the annealer's decay."""
    import speechbrain as sb

    from ser_modules.ser.brain import SERBrain

    model = toy(False)
    annealer = PlateauAnnealer(1e-3, factor=0.5, patience=1)
    annealer.step(1.0)
    annealer.step(2.0)  # one epoch without improvement: halved
    assert annealer.lr == 5e-4

    class Stub:
        def set_epoch(self, epoch):
            pass

    groups = param_groups(model, 1e-3, 0.05)
    brain = SERBrain(modules={"model": model}, opt_class=lambda params: torch.optim.Adam(groups),
                     hparams={"seed": 1, "train_sampler": Stub(), "train_set": Stub(), "annealer": annealer,
                              "resume_path": str(tmp_path / "none.pt")}, run_opts={"device": "cpu"})
    brain.init_optimizers()
    brain.on_stage_start(sb.Stage.TRAIN, 2)
    assert [g["lr"] for g in brain.optimizer.param_groups] == pytest.approx([5e-4, 0.025])


def history(losses, steps_per_epoch=30):
    return [{"epoch": e, "steps": e * steps_per_epoch, "valid_loss": v} for e, v in enumerate(losses, start=1)]


def test_early_stopping_waits_for_the_minimum_steps():
    rising = [1.0, 1.1, 1.2, 1.3, 1.4]  # best at epoch 1
    assert should_stop(history(rising[:3]), False, 2, None)  # patience 2: stop after epoch 3
    assert not should_stop(history(rising[:3]), False, 2, 100)  # 90 steps < 100: go on
    assert should_stop(history(rising[:4]), False, 2, 100)  # 120 steps: the patience rule applies again
    assert not should_stop(history(rising[:2]), True, None, 100)  # annealed out, but only 60 steps
    assert should_stop(history(rising[:4]), True, None, 100)
    assert not should_stop(history([1.0, 0.9, 0.8]), False, 2, 0)  # improving: no stop either way


def test_weight_entropy_is_ln_layers_when_uniform_and_zero_when_one_layer_takes_all():
    from ser_modules.report.upstream import weight_entropy

    np.testing.assert_allclose(weight_entropy([[0.25] * 4, [1.0, 0, 0, 0]]), [np.log(4), 0.0], atol=1e-9)
    np.testing.assert_allclose(weight_entropy([0.5, 0.5]), np.log(2))


def test_stage6_weights_table_states_entropy_next_to_uniform(tmp_path, monkeypatch):
    """Two folds' layer_weights.json -> one table row: mean weights, entropy mean ± std, uniform, ratio."""
    import json

    import pandas as pd

    from ser_modules.report import plots
    from ser_modules.report.upstream import upstream_report

    folds = {"session1": {"layer0": 0.1, "layer1": 0.2, "layer2": 0.7}, "session2": {"layer0": 0.3, "layer1": 0.3, "layer2": 0.4}}
    for fold, weights in folds.items():
        run = tmp_path / "ser" / "weighted-MP-up" / fold / "run0"
        run.mkdir(parents=True)
        (run / "layer_weights.json").write_text(json.dumps(weights))
    drawn = {}
    monkeypatch.setattr(plots, "plot_layer_weights", lambda curves, path, title=None: drawn.update(curves) or path)
    monkeypatch.setattr(plots, "plot_layer_scores", lambda *a, **k: "")
    results = pd.DataFrame([{"model": "weighted-MP-up", "type": "weighted", "asr": "up", "layer": "weighted",
                             "UA_mean": 0.5, "UA_std": 0.1}])
    _, table = upstream_report(results, [{"name": "weighted-MP-up"}], [{"name": "up", "model_type": "wavlm"}],
                                     str(tmp_path / "ser"), str(tmp_path))
    h1 = -(0.1 * np.log(0.1) + 0.2 * np.log(0.2) + 0.7 * np.log(0.7))  # 0.8018
    h2 = -(0.6 * np.log(0.3) + 0.4 * np.log(0.4))  # 1.0889
    row = table.iloc[0]
    assert [row["layer0"], row["layer1"], row["layer2"]] == ["0.200", "0.250", "0.550"]
    assert row["entropy (nats)"] == f"{(h1 + h2) / 2:.3f} ± {abs(h1 - h2) / 2:.3f}" == "0.945 ± 0.144"
    assert row["uniform"] == "1.099" and row["entropy / uniform"] == f"{(h1 + h2) / 2 / np.log(3):.2f}"
    np.testing.assert_allclose(drawn["weighted-MP-up"][1], [[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])  # each fold drawn
