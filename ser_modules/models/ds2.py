"""DeepSpeech2-style CTC acoustic model of Lakomkin et al. 2018 (deepspeech.pytorch layout).

``spectrogram [B, T, 161]`` -> 2 x (Conv2d, BatchNorm, Hardtanh(0, 20)) -> N x bidirectional GRU
(directions summed, BatchNorm before every layer but the first) -> BatchNorm + Linear -> CTC
logits over the characters. Padded frames are masked after every layer, and batch statistics
use valid frames only, so a padded utterance gives the same outputs as the unpadded one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ser_modules.data.features import length_mask
from ser_modules.models import requested_layers
from ser_modules.models.flops import linear_flops, total
from ser_modules.models.rnn import MaskedRNN


CPU_CHANNELS_LAST = True  # the convolutions on a CPU in NHWC (MaskedConvBlock.forward); False: PyTorch's default


class MaskedBatchNorm(nn.Module):
    """Batch normalisation whose statistics use valid positions only (padded ones stay zero).

    ``channel_dim`` 2 for ``[B, T, D]`` sequences, 1 for ``[B, C, F, T]`` conv maps. A plain module,
    not a ``_BatchNorm``: DDP's SyncBatchNorm conversion would otherwise drop the masking (each
    process normalises with its own batch, like per-GPU BatchNorm).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``mask`` broadcasts against ``x`` (1 on valid positions)."""
        shape = [1] * x.dim()
        channel_dim = 1 if x.dim() == 4 else x.dim() - 1
        shape[channel_dim] = -1
        dims = [d for d in range(x.dim()) if d != channel_dim]
        mask = mask.to(x.dtype)
        if self.training:
            n = (mask.expand_as(x)).sum(dim=dims)
            mean = (x * mask).sum(dim=dims) / n.clamp(min=1)
            var = (((x - mean.view(shape)) * mask) ** 2).sum(dim=dims) / n.clamp(min=1)
            with torch.no_grad():
                self.num_batches_tracked += 1
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1).clamp(min=1))
        else:
            mean, var = self.running_mean, self.running_var
        x = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return (x * self.weight.view(shape) + self.bias.view(shape)) * mask


class MaskedConvBlock(nn.Module):
    """Conv2d over ``[B, C, F, T]`` + masked BatchNorm + Hardtanh(0, 20); time positions past each
    utterance's length are zeroed so the next convolution sees zero padding as on its own."""

    def __init__(self, in_channels, out_channels, kernel, stride):
        super().__init__()
        padding = (kernel[0] // 2, kernel[1] // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = MaskedBatchNorm(out_channels)
        self.act = nn.Hardtanh(0, 20)
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        k, s, p = self.kernel[1], self.stride[1], self.padding[1]
        return (lengths + 2 * p - k).div(s, rounding_mode="floor") + 1

    def out_size(self, n_freq: int) -> int:
        k, s, p = self.kernel[0], self.stride[0], self.padding[0]
        return (n_freq + 2 * p - k) // s + 1

    def forward_flops(self, n_freq: int, out_frames: int) -> int:
        """Convolution FLOPs for ``out_frames`` valid output time steps of an ``n_freq``-bin input."""
        macs_per_output = self.conv.in_channels * self.kernel[0] * self.kernel[1]
        return 2 * macs_per_output * self.conv.out_channels * self.out_size(n_freq) * out_frames

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.device.type == "cpu" and CPU_CHANNELS_LAST:
            # oneDNN takes its reference kernel for some NCHW shapes (1 input channel, few long utterances: 5.3 s for
            # 2 x 30 s of 8 channels instead of 0.07 s, docs/benchmark.md); NHWC input and weight take a JIT one
            # (.to restrides a one-channel tensor too, where .contiguous sees it as NHWC already and keeps NCHW strides)
            weight = self.conv.weight.to(memory_format=torch.channels_last)
            x = self.conv._conv_forward(x.to(memory_format=torch.channels_last), weight, self.conv.bias)
        else:
            x = self.conv(x)
        lengths = self.out_lengths(lengths)
        mask = length_mask(lengths, x.shape[-1])[:, None, None, :]
        return self.act(self.bn(x, mask)) * mask, lengths


class BatchRNN(nn.Module):
    """Optional masked BatchNorm, then a (bi)directional GRU; the two directions are summed
    (deepspeech.pytorch), so the output size is ``hidden_size``."""

    def __init__(self, input_size: int, hidden_size: int, batch_norm: bool = True, bidirectional: bool = True,
                 sum_directions: bool = True):
        super().__init__()
        self.bn = MaskedBatchNorm(input_size) if batch_norm else None
        self.rnn = MaskedRNN("gru", input_size, hidden_size, bidirectional, merge="sum" if sum_directions else "concat")
        self.output_size = self.rnn.output_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            x = self.bn(x, length_mask(lengths, x.shape[1]).unsqueeze(-1))
        return self.rnn(x, lengths)


class DeepSpeech2(nn.Module):
    """DeepSpeech2-style CTC model; every layer's hidden sequence can be returned by name.

    Layer names: ``conv`` (flattened conv output), ``gru1`` .. ``gru<N>``, ``logits``.
    Time is halved by the first convolution; :meth:`output_lengths` gives the frame counts.

    Arguments: ``n_freq`` input bins (161), ``conv_channels`` (32), ``conv1_kernel`` (41, 11)
    and ``conv2_kernel`` (21, 11) as (freq, time), ``rnn_layers`` (5), ``rnn_hidden`` (800),
    ``n_symbols`` (29 = blank, apostrophe, A-Z, space).
    """

    def __init__(self, n_freq: int = 161, conv_channels: int = 32, conv1_kernel=(41, 11), conv2_kernel=(21, 11),
                 rnn_layers: int = 5, rnn_hidden: int = 800, n_symbols: int = 29, bidirectional: bool = True):
        super().__init__()
        self.conv1 = MaskedConvBlock(1, conv_channels, tuple(conv1_kernel), (2, 2))
        self.conv2 = MaskedConvBlock(conv_channels, conv_channels, tuple(conv2_kernel), (2, 1))
        freq = self.conv2.out_size(self.conv1.out_size(n_freq))
        self.rnn_input_size = conv_channels * freq
        layers, size = [], self.rnn_input_size
        for i in range(rnn_layers):
            layers.append(BatchRNN(size, rnn_hidden, batch_norm=i > 0, bidirectional=bidirectional))
            size = layers[-1].output_size
        self.rnns = nn.ModuleList(layers)
        self.n_freq = n_freq
        self.out_bn = MaskedBatchNorm(size)
        self.out = nn.Linear(size, n_symbols, bias=False)
        self.layer_names = ["conv"] + [f"gru{i + 1}" for i in range(rnn_layers)] + ["logits"]
        self.layer_sizes = dict(zip(self.layer_names, [self.rnn_input_size] + [r.output_size for r in self.rnns] + [n_symbols]))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.conv2.out_lengths(self.conv1.out_lengths(lengths))

    def forward_flops(self, frames) -> int:
        """Forward FLOPs for utterances of ``frames`` spectrogram frames each (:mod:`~ser_modules.models.flops`)."""
        frames = torch.as_tensor(frames).reshape(-1)
        t1 = total(self.conv1.out_lengths(frames))
        t2 = total(self.output_lengths(frames))
        flops = self.conv1.forward_flops(self.n_freq, t1) + self.conv2.forward_flops(self.conv1.out_size(self.n_freq), t2)
        flops += sum(r.rnn.forward_flops(t2) for r in self.rnns)
        return flops + linear_flops(self.out.in_features, self.out.out_features, t2)

    def forward_layers(self, feats: torch.Tensor, lengths: torch.Tensor, layers=None) -> dict:
        """Run up to the deepest requested layer. ``feats [B, T, F]``, ``lengths [B]`` (frames).

        Returns ``{name: (hidden [B, T', D], lengths [B])}`` for the names in ``layers``
        (default: all). Padded positions are zero.
        """
        wanted, last = requested_layers(layers, self.layer_names, "DeepSpeech2")
        out = {}
        feats = feats * length_mask(lengths, feats.shape[1]).unsqueeze(-1)  # the convolutions see zero padding
        x, lengths = self.conv1(feats.transpose(1, 2).unsqueeze(1), lengths)
        x, lengths = self.conv2(x, lengths)
        b, c, f, t = x.shape
        x = x.reshape(b, c * f, t).transpose(1, 2)  # [B, T', C*F]
        hidden = {"conv": x}
        for i, rnn in enumerate(self.rnns, 1):
            if self.layer_names.index(f"gru{i}") > last:
                break
            x = rnn(x, lengths)
            hidden[f"gru{i}"] = x
        if self.layer_names.index("logits") <= last:
            mask = length_mask(lengths, x.shape[1]).unsqueeze(-1)
            hidden["logits"] = self.out(self.out_bn(x, mask)) * mask
        for name in wanted:
            out[name] = (hidden[name], lengths)
        return out

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats [B, T, F]`` -> CTC logits ``[B, T', n_symbols]`` and their lengths."""
        return self.forward_layers(feats, lengths, ["logits"])["logits"]

    def layers_and_output(self, feats: torch.Tensor, lengths: torch.Tensor, layers=None) -> tuple[dict, tuple]:
        """One pass for both :meth:`forward_layers` ``(feats, lengths, layers)`` and :meth:`forward`:
        ``({name: (hidden, lengths)}, (logits [B, T', n_symbols], lengths))``, each equal to what those
        methods return (inference reads a SER layer and decodes the transcript from one forward)."""
        names = list(self.layer_names if layers is None else layers)
        out = self.forward_layers(feats, lengths, list(dict.fromkeys([*names, "logits"])))
        return {name: out[name] for name in names}, out["logits"]
