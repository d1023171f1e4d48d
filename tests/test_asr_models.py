"""ASR models: paper-size parameter counts, pyramidal reduction, masking, features, named layers."""

import pytest
import torch
import torchaudio

from ser_modules.data.features import MFCC, LogSpectrogram, add_deltas, masked_normalize
from ser_modules.data.features import stack_frames
from ser_modules.models.ds2 import DeepSpeech2
from ser_modules.models.las import ListenAttendSpell, PyramidalBLSTM
from ser_modules.models.rnn import MaskedRNN, reverse_padded


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def gru(i, h):  # one direction of torch's GRU: 3 gates, input and recurrent weights, two biases
    return 3 * h * (i + h + 2)


def lstm(i, h):
    return 4 * h * (i + h + 2)


def test_deepspeech2_paper_parameter_count():
    model = DeepSpeech2()  # 161 bins, 32 channels, kernels 41x11 / 21x11, 5 BiGRU of 800, 29 symbols
    conv = 32 * 1 * 41 * 11 + 2 * 32 + 32 * 32 * 21 * 11 + 2 * 32  # no conv bias (BatchNorm follows)
    freq = ((161 + 40 - 41) // 2 + 1 + 20 - 21) // 2 + 1  # 81 bins after conv1, 41 after conv2
    assert freq == 41 and model.rnn_input_size == 32 * 41
    rnn = 2 * gru(32 * 41, 800) + 4 * (2 * 800 + 2 * gru(800, 800))  # BatchNorm before layers 2-5
    out = 2 * 800 + 800 * 29
    assert n_params(model) == conv + rnn + out == 41_187_904


def test_las_paper_parameter_count():
    model = ListenAttendSpell()  # 256 cells/direction, FC 1024 -> 512, speller 2 x LSTM 512, 31 symbols
    listener = 2 * lstm(39, 256) + 2 * (2 * lstm(512, 256) + 1024 * 512 + 512)  # FC after each pBLSTM only
    assert n_params(model.listener) == listener
    assert n_params(ListenAttendSpell(blstm_fc=True).listener) == listener + 512 * 512 + 512  # the authors' extra FC
    embedding = 31 * 256
    attention = 3 * (512 * 512 + 512) + 512  # W_h, W_s, context projection, u (no bias)
    cells = (4 * 512 * (256 + 512 + 512) + 8 * 512) + (4 * 512 * (512 + 512) + 8 * 512)  # input = [emb; context]
    speller = (1024 * 512 + 512) + attention + cells
    output = 512 * 31 + 31
    assert n_params(model) == listener + embedding + speller + output == 10_875_679


@pytest.mark.slow
@pytest.mark.parametrize("model_cls", [DeepSpeech2, ListenAttendSpell])
def test_paper_models_train_one_step(model_cls):
    torch.manual_seed(0)
    model = model_cls()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    if model_cls is DeepSpeech2:
        feats, lengths = torch.randn(2, 60, 161), torch.tensor([60, 41])
        logits, out_len = model(feats, lengths)
        assert logits.shape == (2, 30, 29) and out_len.tolist() == [30, 21]
        loss = torch.nn.functional.ctc_loss(logits.log_softmax(-1).transpose(0, 1), torch.tensor([[3, 4, 5], [6, 7, 0]]),
                                            out_len, torch.tensor([3, 2]))
    else:
        feats, lengths = torch.randn(2, 40, 39), torch.tensor([40, 23])
        tokens = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
        out = model(feats, lengths, tokens)
        assert out["logits"].shape == (2, 4, 31) and out["enc_lengths"].tolist() == [10, 6]
        loss = torch.nn.functional.cross_entropy(out["logits"].reshape(-1, 31), torch.tensor([5, 6, 7, 2, 8, 9, 2, 0]))
    before = [p.detach().clone() for p in model.parameters()]
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []  # every parameter takes part in the loss
    opt.step()
    assert torch.isfinite(loss)
    assert sum(not torch.equal(b, p) for b, p in zip(before, model.parameters())) > 0.9 * len(before)


def test_pyramidal_reduction_by_hand():
    x = torch.arange(2 * 5 * 1, dtype=torch.float).reshape(2, 5, 1)
    y, lengths = stack_frames(x, torch.tensor([5, 4]), 2)
    # Length 5 is padded with one zero frame: pairs (0,1) (2,3) (4,pad); length 4 -> 2 pairs.
    assert y.shape == (2, 3, 2)
    assert y[0].tolist() == [[0, 1], [2, 3], [4, 0]]
    assert y[1, :2].tolist() == [[5, 6], [7, 8]]
    assert lengths.tolist() == [3, 2]
    y, lengths = stack_frames(x, torch.tensor([5, 2]), 4)  # groups of 4: (0,1,2,3) (4,pad,pad,pad)
    assert y.shape == (2, 2, 4) and y[0].tolist() == [[0, 1, 2, 3], [4, 0, 0, 0]] and lengths.tolist() == [2, 1]
    p = PyramidalBLSTM(3, 4)
    out, out_len = p(torch.randn(3, 7, 3), torch.tensor([7, 6, 1]))
    assert out.shape == (3, 4, 16) and out_len.tolist() == [4, 3, 1]
    assert ListenAttendSpell(listener_hidden=4, fc_size=8).listener.output_lengths(torch.tensor([1, 4, 5, 8, 9])).tolist() == [1, 1, 2, 2, 3]


def test_reverse_padded():
    x = torch.arange(8, dtype=torch.float).reshape(2, 4, 1)
    r = reverse_padded(x, torch.tensor([4, 2]))
    assert r[:, :, 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]


@pytest.mark.parametrize("rnn_type", ["gru", "lstm"])
def test_masked_rnn_matches_torch_bidirectional(rnn_type):
    torch.manual_seed(0)
    layer = MaskedRNN(rnn_type, 3, 5, bidirectional=True)
    ref = getattr(torch.nn, rnn_type.upper())(3, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():  # copy our two directions into torch's bidirectional layer
        for name, p in layer.forward_rnn.named_parameters():
            getattr(ref, name).copy_(p)
            getattr(ref, name + "_reverse").copy_(getattr(layer.backward_rnn, name))
    x = torch.randn(1, 6, 3)
    expected, _ = ref(x)
    assert torch.allclose(layer(x, torch.tensor([6])), expected, atol=1e-6)


def _padded_equals_unpadded(run, feats, lengths, atol=1e-5):
    """``run(feats, lengths) -> [B, T', D]``: each utterance alone must give its padded rows."""
    batch = run(feats, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = run(feats[i : i + 1, :n], lengths[i : i + 1])
        assert torch.allclose(batch[i, : alone.shape[1]], alone[0], atol=atol), i
        assert torch.all(batch[i, alone.shape[1]:] == 0)


def test_masking_deepspeech2_layers():
    torch.manual_seed(0)
    model = DeepSpeech2(conv_channels=4, rnn_layers=2, rnn_hidden=8).eval()
    feats = torch.randn(3, 50, 161)
    feats[1, 33:] = 1e3  # garbage in the padding must not leak into valid frames
    lengths = torch.tensor([50, 33, 9])
    with torch.no_grad():
        for layer in ["conv", "gru1", "gru2", "logits"]:
            _padded_equals_unpadded(lambda f, n: model.forward_layers(f, n, [layer])[layer][0], feats, lengths)


def test_deepspeech2_convolutions_in_nhwc_equal_pytorchs_default_layout(monkeypatch):
    """On a CPU the front end runs its convolutions in channels-last layout (oneDNN's reference kernel is 75x
    slower on some default-layout shapes): the same outputs and weight gradients as the default layout, in
    inference and on a padded training batch; the stored weights keep the default layout."""
    import ser_modules.models.ds2 as ds2

    torch.manual_seed(0)
    model = DeepSpeech2(conv_channels=8, rnn_layers=1, rnn_hidden=16)
    cases = [(torch.randn(2, 1000, 161), torch.tensor([1000, 700]), False),
             (torch.randn(4, 300, 161), torch.tensor([300, 280, 150, 90]), True)]
    for feats, lengths, train in cases:
        results = []
        for nhwc in (False, True):
            monkeypatch.setattr(ds2, "CPU_CHANNELS_LAST", nhwc)
            model.zero_grad()
            model.train(train)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            out, out_lengths = model(feats, lengths)
            if train:
                out.sum().backward()
                model.load_state_dict(state)  # the same BatchNorm statistics for the other layout
            results.append((out.detach(), out_lengths, [p.grad.clone() for p in model.conv1.parameters()] if train else []))
        (a, la, ga), (b, lb, gb) = results
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert torch.equal(la, lb)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-4)
    assert model.conv1.conv.weight.is_contiguous()  # (not channels-last: checkpoints unchanged)
    seen, conv = [], model.conv1.conv
    run_conv = conv._conv_forward
    monkeypatch.setattr(conv, "_conv_forward", lambda x, w, b: seen.append((x, w)) or run_conv(x, w, b))
    model.eval().conv1(torch.randn(2, 1, 161, 50), torch.tensor([50, 40]))
    # NHWC strides (with one channel, only the channel stride tells the layouts apart: 1 in NHWC, H x W in NCHW)
    nhwc = [(x.stride(), w.stride()) for x, w in seen]
    assert nhwc == [((161 * 50, 1, 50, 1), (41 * 11, 1, 11, 1))], nhwc


def test_masking_las_listener_and_speller():
    torch.manual_seed(0)
    model = ListenAttendSpell(listener_hidden=6, fc_size=8, speller_hidden=8, attention_dim=8, embedding_dim=4).eval()
    feats = torch.randn(3, 21, 39)
    feats[2, 8:] = 50.0
    lengths = torch.tensor([21, 14, 8])
    tokens = torch.tensor([[1, 5, 6], [1, 7, 8], [1, 9, 10]])
    with torch.no_grad():
        for layer in ["blstm", "pblstm1", "pblstm2"]:
            _padded_equals_unpadded(lambda f, n: model.forward_layers(f, n, [layer])[layer][0], feats, lengths)
        batch = model(feats, lengths, tokens)["logits"]
        for i, n in enumerate(lengths.tolist()):
            alone = model(feats[i : i + 1, :n], lengths[i : i + 1], tokens[i : i + 1])["logits"]
            assert torch.allclose(batch[i], alone[0], atol=1e-5)  # attention ignores padded encoder frames


def test_features_padding_independent_and_against_torchaudio():
    torch.manual_seed(0)
    wav = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 5000])
    spec = LogSpectrogram()
    feats, frames = spec(wav, lengths)
    assert feats.shape[2] == 161 and frames.tolist() == [1 + (8000 - 320) // 160, 1 + (5000 - 320) // 160]
    alone, _ = spec(wav[1:, :5000], lengths[1:])
    assert torch.allclose(feats[1, : frames[1]], alone[0], atol=1e-5)
    raw = LogSpectrogram(normalize=False)(wav[:1], lengths[:1])[0][0]
    ref = torchaudio.transforms.Spectrogram(n_fft=320, hop_length=160, window_fn=torch.hamming_window, power=1,
                                            center=False)(wav[0])
    assert torch.allclose(raw, torch.log1p(ref).T, atol=1e-4)

    mfcc = MFCC()
    feats, frames = mfcc(wav, lengths)
    assert feats.shape[2] == 39
    alone, _ = mfcc(wav[1:, :5000], lengths[1:])
    assert torch.allclose(feats[1, : frames[1]], alone[0], atol=1e-4)
    valid = feats[0, : frames[0]]
    assert torch.allclose(valid.mean(0), torch.zeros(39), atol=1e-4)  # per-utterance CMVN
    assert torch.allclose(valid.std(0, unbiased=False), torch.ones(39), atol=1e-3)


def test_deltas_are_along_time():
    x = torch.arange(12.0).view(1, 12, 1)  # a ramp over time
    d = add_deltas(x, torch.tensor([12]), order=2)
    assert torch.allclose(d[0, 2:10, 1], torch.ones(8))  # slope 1 away from the edges
    assert torch.allclose(d[0, 4:8, 2], torch.zeros(4), atol=1e-6)  # constant slope: no acceleration
    across = torch.tensor([[[0.0, 5.0, 10.0]] * 6])  # varies across coefficients, constant in time
    assert torch.allclose(add_deltas(across, torch.tensor([6]), order=1)[0, :, 3:], torch.zeros(6, 3))
    n = masked_normalize(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([2]))
    assert n[0, :, 0].tolist() == pytest.approx([-1.0, 1.0, 0.0], abs=1e-3)


def test_named_layers_and_errors():
    model = DeepSpeech2(conv_channels=2, rnn_layers=3, rnn_hidden=4)
    out = model.forward_layers(torch.randn(1, 20, 161), torch.tensor([20]), ["gru1", "gru3"])
    assert set(out) == {"gru1", "gru3"} and out["gru3"][0].shape == (1, 10, 4)
    with pytest.raises(KeyError, match="gru7"):
        model.forward_layers(torch.randn(1, 20, 161), torch.tensor([20]), ["gru7"])
    las = ListenAttendSpell(listener_hidden=4, fc_size=6)
    out = las.forward_layers(torch.randn(1, 9, 39), torch.tensor([9]), ["pblstm1"])
    assert out["pblstm1"][0].shape == (1, 5, 6) and out["pblstm1"][1].tolist() == [5]
    assert float(out["pblstm1"][0].detach().abs().max()) <= 1.0  # FC layers end in tanh


def reference_spell(model, enc, enc_lengths, tokens_bos, teacher_forcing=1.0):
    """The speller step by step through SpeechBrain's AttentionalRNNDecoder.forward_step (beam search's path)."""
    model.speller.attn.reset()
    context = enc.new_zeros(enc.shape[0], model.speller.attn_dim)
    hs, logits, inp = None, [], tokens_bos[:, 0]
    for t in range(tokens_bos.shape[1]):
        dec_out, hs, context, _ = model.speller.forward_step(model.embedding(inp), hs, context, enc, enc_lengths)
        logits.append(model.output(dec_out))
        if t + 1 < tokens_bos.shape[1]:
            inp = tokens_bos[:, t + 1]
            if teacher_forcing < 1.0:
                own = torch.rand(inp.shape[0]) >= teacher_forcing
                inp = torch.where(own, logits[-1].argmax(dim=-1), inp)
    return torch.stack(logits, dim=1)


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.5])
def test_speller_equals_speechbrain_forward_step(teacher_forcing):
    torch.manual_seed(0)
    model = ListenAttendSpell(listener_hidden=4, fc_size=6, speller_hidden=5, speller_layers=3, attention_dim=3,
                              embedding_dim=2).eval()
    enc, lengths = torch.randn(3, 7, 6), torch.tensor([7, 4, 2])  # padded encoder frames must get no attention
    enc[1, 4:], enc[2, 2:] = 50.0, -50.0
    tokens = torch.randint(3, 31, (3, 6))
    torch.manual_seed(1)
    expected = reference_spell(model, enc, lengths, tokens, teacher_forcing)
    torch.manual_seed(1)
    got = model.spell(enc, lengths, tokens, teacher_forcing)
    assert got.shape == (3, 6, 31)
    assert torch.allclose(got, expected, atol=1e-5)
    # Gradients reach the speller's weights as through the reference loop.
    enc.requires_grad_(True)
    model.zero_grad()
    model.spell(enc, lengths, tokens).logsumexp(-1).sum().backward()
    fast = {n: p.grad.clone() for n, p in model.speller.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference_spell(model, enc, lengths, tokens).logsumexp(-1).sum().backward()
    for name, p in model.speller.named_parameters():
        if p.grad is not None:
            assert torch.allclose(fast[name], p.grad, atol=1e-5), name


def test_cpu_tanh_through_sigmoid_equals_torch_tanh():
    from ser_modules.models.activations import tanh

    x = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([0.0, 1e-8, -1e-8])]).requires_grad_(True)
    y = tanh(x)
    assert torch.allclose(y, torch.tanh(x), atol=2e-7, rtol=0)
    (g,) = torch.autograd.grad((y * torch.arange(604.0)).sum(), x)
    (ref,) = torch.autograd.grad((torch.tanh(x) * torch.arange(604.0)).sum(), x)
    assert torch.allclose(g, ref, atol=1e-4, rtol=1e-6)
    xd = x.detach().double().requires_grad_(True)
    assert torch.autograd.gradcheck(tanh, (xd[:50:7],))
