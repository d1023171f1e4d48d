"""SER models: masked pooling, gradients only where intended, IAAN masking and missing context,
overfitting a tiny batch, the Progressive net's ablations and the pooled standardisation."""

import pytest
import torch

from ser_modules.models.ds2 import DeepSpeech2
from ser_modules.models.ser import (
    IAAN, BiGRUBaseline, FineTuneMP, FineTuneRNN, FrozenASRLayer, PooledStandardiser, ProgressiveNet, masked_mean,
    masked_softmax,
)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert masked_mean(x, torch.tensor([2])).tolist() == [[2.0, 3.0]]
    w = masked_softmax(torch.tensor([[0.0, 0.0, 50.0]]), torch.tensor([2]))
    assert w.tolist() == [[0.5, 0.5, 0.0]]


@pytest.mark.parametrize("make", [
    lambda: BiGRUBaseline(5, 8),
    lambda: BiGRUBaseline(5, 8, frame_stack=3),  # 7 frames -> 3 groups, the last one completed with zeros
    lambda: FineTuneMP(5),
    lambda: FineTuneRNN(5, 8),
    lambda: FineTuneRNN(5, 8, frame_stack=2),
])
def test_padded_and_unpadded_give_the_same_vector(make):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(1, 7, 5)
    padded = torch.cat([x, torch.full((1, 4, 5), 9.0)], dim=1)
    other = torch.randn(1, 11, 5)
    batch = torch.cat([padded, other])
    with torch.no_grad():
        alone = model.encode(x, torch.tensor([7]))
        together = model.encode(batch, torch.tensor([7, 11]))
    assert torch.allclose(alone[0], together[0], atol=1e-6)


def test_progressive_and_iaan_padding_invariance():
    torch.manual_seed(0)
    prog = ProgressiveNet(5, 6, hidden_size=4).eval()
    f, a = torch.randn(1, 9, 5), torch.randn(1, 4, 6)
    fp = torch.cat([f, torch.ones(1, 3, 5) * 7], 1)
    ap = torch.cat([a, torch.ones(1, 2, 6) * 7], 1)
    with torch.no_grad():
        assert torch.allclose(prog(f, torch.tensor([9]), a, torch.tensor([4])),
                              prog(fp, torch.tensor([9]), ap, torch.tensor([4])), atol=1e-6)
    iaan = IAAN(6, 8, 4, 5).eval()
    t, p, o = torch.randn(1, 5, 6), torch.randn(1, 3, 6), torch.randn(1, 4, 6)
    with torch.no_grad():
        ref, alpha = iaan.encode(t, torch.tensor([5]), p, torch.tensor([3]), o, torch.tensor([4]))
        pad = lambda x, n: torch.cat([x, torch.full((1, n, 6), -5.0)], 1)  # noqa: E731
        got, alpha_pad = iaan.encode(pad(t, 3), torch.tensor([5]), pad(p, 2), torch.tensor([3]), pad(o, 6), torch.tensor([4]))
    assert torch.allclose(ref, got, atol=1e-6)
    assert torch.all(alpha_pad[0, 5:] == 0) and torch.allclose(alpha_pad[0].sum(), torch.tensor(1.0))


def test_iaan_missing_context_is_a_zero_frame():
    torch.manual_seed(0)
    iaan = IAAN(6, 8, 4, 5).eval()
    t = torch.randn(2, 5, 6)
    lengths = torch.tensor([5, 5])
    zero = torch.zeros(2, 1, 6)
    present = torch.randn(2, 3, 6)
    with torch.no_grad():
        logits = iaan(t, lengths, zero, torch.tensor([1, 1]), present, torch.tensor([3, 3]))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()
    with torch.no_grad():
        other = iaan(t, lengths, present, torch.tensor([3, 3]), present, torch.tensor([3, 3]))
    assert not torch.allclose(logits, other)  # the context is read


def test_frozen_asr_branch_is_untouched_by_training():
    torch.manual_seed(0)
    asr = DeepSpeech2(conv_channels=2, rnn_layers=2, rnn_hidden=6)
    frozen = FrozenASRLayer(asr, "gru2")
    head = ProgressiveNet(5, frozen.output_size, hidden_size=4)
    params = list(head.parameters()) + [p for p in frozen.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    before_asr = {k: v.clone() for k, v in asr.state_dict().items()}  # includes BatchNorm running stats
    before_head = {k: v.clone() for k, v in head.state_dict().items()}
    frozen.train()
    head.train()
    assert not asr.training  # stays in eval mode inside a training SER model
    for _ in range(3):
        spec = torch.randn(3, 40, 161)
        hidden, lengths = frozen(spec, torch.tensor([40, 30, 20]))
        logits = head(torch.randn(3, 12, 5), torch.tensor([12, 9, 5]), hidden, lengths)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]))
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in asr.parameters())
        assert all(p.grad is not None for p in head.parameters())
        opt.step()
    for k, v in asr.state_dict().items():
        assert torch.equal(v, before_asr[k]), k
    assert any(not torch.equal(v, before_head[k]) for k, v in head.state_dict().items())


def test_mp_trains_only_its_classifier():
    mp = FineTuneMP(6, 4)
    assert {n for n, _ in mp.named_parameters()} == {"classifier.weight", "classifier.bias"}


@pytest.mark.parametrize("name", ["baseline", "mp", "rnn", "progressive", "iaan"])
def test_each_model_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    n, d = 8, 6
    lengths = torch.randint(3, 10, (n,))
    x = torch.randn(n, 10, d)
    labels = torch.arange(n) % 4
    models = {
        "baseline": (BiGRUBaseline(d, 16, dropout=0.0), lambda m: m(x, lengths)),
        "mp": (FineTuneMP(d, dropout=0.0), lambda m: m(x, lengths)),
        "rnn": (FineTuneRNN(d, 16, dropout=0.0), lambda m: m(x, lengths)),
        "progressive": (ProgressiveNet(d, d, 16, dropout=0.0), lambda m: m(x, lengths, x.flip(1), lengths)),
        "iaan": (IAAN(d, 16, 8, 16, dropout=0.0), lambda m: m(x, lengths, x[:, :4], torch.full((n,), 4), x[:, 2:],
                                                              lengths - 2 + 2 * (lengths < 5))),
    }
    model, run = models[name]
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(run(model), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (run(model).argmax(-1) == labels).all(), name


def test_progressive_with_zeroed_asr_input_is_its_baseline_branch():
    torch.manual_seed(0)
    prog = ProgressiveNet(5, 6, hidden_size=4, n_classes=3, ablate="asr").eval()
    feats, fl = torch.randn(2, 9, 5), torch.tensor([9, 6])
    asr, al = torch.randn(2, 4, 6), torch.tensor([4, 3])
    with torch.no_grad():
        out = prog(feats, fl, asr, al)
        assert torch.equal(out, prog(feats, fl, 100 * torch.randn(2, 4, 6), al))  # the ASR input is ignored
        # the baseline with the branch's GRUs and the classifier's branch columns gives the same logits
        base = BiGRUBaseline(5, 4, n_classes=3).eval()
        base.rnns.load_state_dict(prog.branch.rnns.state_dict())
        base.classifier.weight.copy_(prog.classifier.weight[:, :8])
        base.classifier.bias.copy_(prog.classifier.bias)
        assert torch.allclose(out, base(feats, fl), atol=1e-6)
    assert prog.classifier.in_features == 8 + 6  # the zeroed half is still there, at zero


def test_progressive_without_branch_is_fine_tuning_mp():
    torch.manual_seed(0)
    prog = ProgressiveNet(5, 6, hidden_size=4, n_classes=3, ablate="branch").eval()
    assert prog.branch is None and prog.classifier.in_features == 6
    asr, al = torch.randn(2, 4, 6), torch.tensor([4, 3])
    mp = FineTuneMP(6, 3).eval()
    mp.classifier.load_state_dict(prog.classifier.state_dict())
    with torch.no_grad():
        out = prog(torch.randn(2, 9, 5), torch.tensor([9, 6]), asr, al)
        assert torch.equal(out, prog(torch.randn(2, 3, 5), torch.tensor([3, 1]), asr, al))  # no handcrafted input
        assert torch.allclose(out, mp(asr, al), atol=1e-6)
    assert prog.forward_flops([9, 6], [4, 3]) == mp.forward_flops([4, 3])
    with pytest.raises(ValueError, match="ablate must be one of"):
        ProgressiveNet(5, 6, ablate="classifier")


def test_pooled_standardiser_against_a_hand_computation():
    vectors = torch.tensor([[1.0, 10.0, 3.0], [3.0, 10.0, 5.0], [5.0, 10.0, 10.0]])
    norm = PooledStandardiser(3)
    x = torch.tensor([[2.0, 11.0, 6.0]])
    assert torch.equal(norm(x), x)  # the identity until fitted
    norm.fit(vectors)
    mean = [3.0, 10.0, 6.0]
    std = [(8 / 3) ** 0.5, 1.0, (38 / 3) ** 0.5]  # population std; a constant dimension is only centred
    expected = [[(2 - mean[0]) / std[0], (11 - mean[1]) / std[1], 0.0]]
    assert torch.allclose(norm(x), torch.tensor(expected), rtol=1e-6)
    assert torch.allclose(norm(vectors).std(dim=0, unbiased=False)[[0, 2]], torch.ones(2))
    assert set(dict(norm.named_buffers())) == {"mean", "std"} and not list(norm.parameters())  # saved, not trained


@pytest.mark.parametrize("make", [lambda: FineTuneMP(6, 3, asr_norm="train"),
                                  lambda: ProgressiveNet(5, 6, hidden_size=4, n_classes=3, asr_norm="train",
                                                         ablate="branch")])
def test_asr_norm_standardises_the_pooled_vector(make):
    torch.manual_seed(0)
    model = make().eval()
    asr, al = torch.randn(4, 5, 6) * 0.05 + 3, torch.tensor([5, 4, 3, 2])
    pooled = masked_mean(asr, al)
    model.asr_norm.fit(pooled)
    raw = FineTuneMP(6, 3).eval()
    raw.classifier.load_state_dict(model.classifier.state_dict())
    with torch.no_grad():
        out = model(torch.randn(4, 3, 5), al, asr, al) if isinstance(model, ProgressiveNet) else model(asr, al)
        z = (pooled - pooled.mean(0)) / pooled.std(0, unbiased=False)
        assert torch.allclose(out, raw.classifier(z), atol=1e-5)
