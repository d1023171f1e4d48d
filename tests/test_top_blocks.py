"""The top blocks of an upstream run from a stored layer (issue 40): equal to the full upstream's layers on
the waveform, for every format whose blocks can run from a hidden state; a clear error otherwise."""

import os
import sys

import pytest
import torch
import transformers

# Resolved at collection, before the session's background runs import transformers in their threads: a lazy
# attribute resolved by two threads at once can fail ("module 'transformers' has no attribute 'AutoModel'").
transformers.AutoModel  # noqa: B018

from ser_modules.upstreams.checkpoints import resolve_arch
from ser_modules.upstreams.loading import load_upstream
from ser_modules.upstreams.top_blocks import top_blocks
from ser_modules.utils.fileio import ManifestError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "utils"))
from make_tiny_upstream import hf_config, make_tiny_upstream  # noqa: E402

CASES = [  # (kind, format, group_norm)
    ("whisper", "folder", False), ("whisper", "openai-whisper", False), ("wav2vec2", "folder", False),
    ("wav2vec2", "folder", True), ("hubert", "folder", False), ("data2vec-audio", "folder", False),
    ("wavlm", "folder", False), ("wavlm", "folder", True), ("wav2vec2", "torchaudio", False),
    ("wavlm", "torchaudio", False), ("hubert", "torchaudio", True), ("speechbrain", "folder", False),
]


def padded_batch(seed=0):
    """Two utterances of different lengths, zero-padded: the padded frames must not change the shorter one."""
    g = torch.Generator().manual_seed(seed)
    samples = torch.tensor([16000, 9000])
    wavs = torch.randn(2, 16000, generator=g) * 0.1
    wavs[1, 9000:] = 0
    return wavs, samples


@pytest.mark.parametrize("kind, fmt, group_norm", CASES)
def test_top_blocks_on_a_stored_layer_equal_the_full_upstream(tmp_path, kind, fmt, group_norm):
    name = f"{kind}.pt" if fmt == "openai-whisper" else f"{kind}.pth" if fmt == "torchaudio" else kind
    path = make_tiny_upstream(kind, str(tmp_path / name), layers=3, hidden=32, group_norm=group_norm, fmt=fmt)
    arch = resolve_arch(path, os.path.splitext(path)[0] + ".json") if fmt == "torchaudio" else None
    upstream, _ = load_upstream(path, arch=arch, whisper_window="utterance")
    wavs, samples = padded_batch()
    layers = upstream.forward_layers(wavs, samples, upstream.layer_names)
    n_blocks = len(upstream.layer_names) - 1
    for k in (1, 2, n_blocks):
        blocks = top_blocks(upstream, k, path)
        start = upstream.layer_names[n_blocks - k]
        x, frames = layers[start]
        with torch.no_grad():
            outputs = blocks.eval()(x, frames)
        assert blocks.layer_names == upstream.layer_names[n_blocks - k + 1:]
        for name, out in zip(blocks.layer_names, outputs):
            want, want_frames = layers[name]
            for i, n in enumerate(want_frames.tolist()):
                torch.testing.assert_close(out[i, :n], want[i, :n], atol=2e-4, rtol=1e-4, msg=f"{kind} {fmt} k={k} {name}")
        trainable = sum(p.numel() for p in blocks.parameters() if p.requires_grad)
        copied = [*blocks.blocks.parameters(), *(blocks.final_norm.parameters() if blocks.final_norm is not None else [])]
        assert trainable == sum(p.numel() for p in copied)  # every copied weight, the frozen WavLM bias below them not
        if kind == "wavlm" and k < n_blocks:  # block 1's bias embedding: frozen, out of the state dict
            assert blocks.frozen_bias is not None and not any("frozen_bias" in key for key in blocks.state_dict())
    assert trainable > 0  # (k = all blocks)
    # From the waveform with every block, a wav2vec 2.0-style encoder's projection + positional convolution train too
    stemmed = top_blocks(upstream, n_blocks, path, stem=True)
    if kind in ("whisper", "speechbrain"):
        assert stemmed.stem is None  # their layer0 stays frozen (no separate CNN feature encoder)
    else:
        features, frames = upstream.cnn_features(wavs, samples)
        with torch.no_grad():
            layer0 = stemmed.stem.eval()(features, frames)
        want, want_frames = layers["layer0"]
        assert torch.equal(frames, want_frames) and layer0.shape == want.shape
        for i, n in enumerate(want_frames.tolist()):
            torch.testing.assert_close(layer0[i, :n], want[i, :n], atol=2e-4, rtol=1e-4, msg=f"{kind} {fmt} stem")
            assert not layer0[i, n:].any()
        stem_weights = sum(p.numel() for p in stemmed.stem.parameters())
        assert stem_weights and sum(p.numel() for p in stemmed.parameters() if p.requires_grad) == trainable + stem_weights
    # the copies train; the upstream's own blocks stay frozen
    assert not any(p.requires_grad for p in upstream.parameters())


def test_whisper_in_30s_windows_and_a_bad_number_of_blocks_are_refused(tmp_path):
    path = make_tiny_upstream("whisper", str(tmp_path / "whisper"), layers=2, hidden=32)
    upstream, _ = load_upstream(path)  # 30 s windows
    with pytest.raises(ManifestError, match="needs whisper_window: utterance"):
        top_blocks(upstream, 1, path)
    upstream, _ = load_upstream(path, whisper_window="utterance")
    with pytest.raises(ManifestError, match="finetune_blocks 3 is not between 0 and its 2 blocks"):
        top_blocks(upstream, 3, path)
    assert top_blocks(upstream, 0, path)(torch.zeros(1, 5, 32), torch.tensor([5])) == []  # a frozen probe


def test_a_hubert_whose_positional_convolution_starts_with_a_batch_norm_runs_one_utterance_at_a_time():
    """conv_pos_batch_norm (mHuBERT-147): the batch norm turns zeroed padding into non-zero frames before the
    positional convolution, so the upstream and the stem run each utterance alone: the stem's layer0 on a padded
    batch equals the upstream's, which equals each utterance's own."""
    from ser_modules.upstreams.encoders import HFUpstream

    config = hf_config("hubert", 2, 32, group_norm=False)
    config.conv_pos_batch_norm = True
    torch.manual_seed(0)
    model = transformers.HubertModel(config)
    norm = model.encoder.pos_conv_embed.batch_norm
    norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2)  # a trained norm, not the identity
    upstream = HFUpstream(model, "hubert")
    assert not upstream.batched
    wavs, samples = padded_batch()
    layer0, frames = upstream.forward_layers(wavs, samples, ["layer0"])["layer0"]
    alone = upstream.forward_layers(wavs[1:, :9000], samples[1:], ["layer0"])["layer0"][0]
    n = int(frames[1])
    torch.testing.assert_close(layer0[1, :n], alone[0, :n])
    stem = top_blocks(upstream, 2, stem=True).stem.eval()
    assert stem.one_at_a_time
    with torch.no_grad():
        got = stem(*upstream.cnn_features(wavs, samples))
    for i, n in enumerate(frames.tolist()):
        torch.testing.assert_close(got[i, :n], layer0[i, :n], atol=2e-4, rtol=1e-4)
