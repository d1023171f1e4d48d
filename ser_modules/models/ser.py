"""Speech emotion recognition heads of Lakomkin et al. 2018 and the IAAN of Yeh et al. 2019/2020.

Every model takes padded frame sequences with their valid lengths and pools only valid frames,
so padding never changes a prediction. ASR representations come either precomputed (stage 4
stores) or from a :class:`FrozenASRLayer` that runs a trained ASR model without ever training it.

Shapes: sequences ``[B, T, D]``, lengths ``[B]`` (frames), logits ``[B, n_classes]``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ser_modules.data.features import length_mask, stack_frames
from ser_modules.models.activations import tanh
from ser_modules.models.flops import linear_flops, total
from ser_modules.models.rnn import MaskedRNN, run_together


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames of ``x [B, T, D]`` -> ``[B, D]``."""
    mask = length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def normalise_frames(x: torch.Tensor) -> torch.Tensor:
    """Each frame of ``x [..., D]`` to zero mean and unit variance over its ``D`` features, no learned
    scale (s3prl's ``upstream_feature_normalize``); an all-zero (padded) frame stays zero."""
    return F.layer_norm(x, (x.shape[-1],))


def masked_softmax(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Softmax over time of ``scores [B, T]`` with padded frames at zero weight."""
    scores = scores.masked_fill(~length_mask(lengths, scores.shape[1]), float("-inf"))
    return torch.softmax(scores, dim=1)


class FrozenASRLayer(nn.Module):
    """One named layer of a trained ASR model used as a fixed feature extractor.

    The ASR model stays in eval mode (BatchNorm statistics untouched) and runs without gradients,
    whatever mode the SER model around it is in. ``(feats, frames) -> (hidden [B, T', D], lengths)``.
    """

    def __init__(self, asr_model: nn.Module, layer: str | list[str]):
        super().__init__()
        self.asr, self.layer = asr_model, layer
        self.layers = [layer] if isinstance(layer, str) else list(layer)  # several: side by side (WeightedLayerSum)
        self.output_size = sum(asr_model.layer_sizes[n] for n in self.layers)
        for p in self.asr.parameters():
            p.requires_grad = False
        self.asr.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.asr.eval()
        return self

    @torch.no_grad()
    def forward(self, feats: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.asr.forward_layers(feats, frames, self.layers)
        return torch.cat([out[n][0] for n in self.layers], dim=-1), out[self.layers[0]][1]


def stacked_lengths(lengths: torch.Tensor, k: int) -> torch.Tensor:
    """Sequence lengths after stacking ``k`` frames per step (a partial last group counts)."""
    return (lengths + k - 1).div(k, rounding_mode="floor")


class BiGRUBaseline(nn.Module):
    """Lakomkin 2018 baseline: 2-layer bidirectional GRU on MFCC+delta+pitch, mean of the second
    layer's outputs over valid frames, dropout 0.25, softmax classifier (hidden 64 / 96 / 128).

    ``frame_stack`` k > 1 feeds the GRU k consecutive frames at a time (the frame rate divided by k,
    :func:`~ser_modules.data.features.stack_frames`); the paper uses 1 (10 ms frames).
    """

    def __init__(self, input_size: int = 27, hidden_size: int = 96, num_layers: int = 2, n_classes: int = 4,
                 dropout: float = 0.25, frame_stack: int = 1):
        super().__init__()
        self.frame_stack = int(frame_stack)
        layers, size = [], input_size * self.frame_stack
        for _ in range(num_layers):
            layers.append(MaskedRNN("gru", size, hidden_size, bidirectional=True))
            size = layers[-1].output_size
        self.rnns = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)
        self.output_size = size
        self.classifier = nn.Linear(size, n_classes)

    def forward_flops(self, lengths) -> int:
        """Forward FLOPs for utterances of ``lengths`` input frames (:mod:`~ser_modules.models.flops`)."""
        lengths = torch.as_tensor(lengths).reshape(-1)
        steps = stacked_lengths(lengths, self.frame_stack)
        flops = sum(rnn.forward_flops(steps) for rnn in self.rnns)
        n = len(lengths)
        if isinstance(self.classifier, nn.Linear):
            flops += linear_flops(self.classifier.in_features, self.classifier.out_features, n)
        return flops

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled utterance vector ``[B, 2 * hidden]``."""
        x, lengths = stack_frames(x, lengths, self.frame_stack)
        for rnn in self.rnns:
            x = rnn(x, lengths)
        return masked_mean(x, lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.encode(x, lengths)))


class PooledStandardiser(nn.Module):
    """Per-dimension standardisation of pooled vectors ``[B, D]``: ``(x - mean) / std`` with fixed
    statistics (buffers, so inference and exports apply them) that :meth:`fit` takes from the
    training fold's vectors; before :meth:`fit` it is the identity. A dimension constant over the
    training vectors (std below ``eps``) is only centred (std 1, as scikit-learn's StandardScaler):
    dividing by ``eps`` would turn a tiny deviation on other speech into a huge input."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, vectors: torch.Tensor) -> None:
        """Statistics of ``vectors [N, D]`` (population std; 1 for a dimension constant within ``eps``)."""
        std = vectors.std(dim=0, unbiased=False)
        self.mean.copy_(vectors.mean(dim=0))
        self.std.copy_(torch.where(std < self.eps, torch.ones_like(std), std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def pooled_norm(asr_norm: str, dim: int) -> nn.Module:
    """The pooled ASR vector's normalisation of ``asr_norm``: ``train`` (:class:`PooledStandardiser`) or
    ``none`` (the identity, the paper's input)."""
    if asr_norm not in ("none", "train"):
        raise ValueError(f"asr_norm must be 'none' or 'train', got {asr_norm!r}")
    return PooledStandardiser(dim) if asr_norm == "train" else nn.Identity()


class FineTuneMP(nn.Module):
    """Fine-tuning MP-x: mean of ASR layer x over valid frames -> dropout -> softmax layer.
    Only the classifier trains (the ASR layer is frozen or precomputed)."""

    def __init__(self, input_size: int, n_classes: int = 4, dropout: float = 0.25, asr_norm: str = "none"):
        super().__init__()
        # train: the pooled vector standardised with the training fold's statistics, as in ProgressiveNet
        self.asr_norm = pooled_norm(asr_norm, input_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(input_size, n_classes)

    def forward_flops(self, lengths) -> int:
        """Forward FLOPs (the classifier; pooling is a sum) for utterances of ``lengths`` frames."""
        n = len(torch.as_tensor(lengths).reshape(-1))
        return linear_flops(self.classifier.in_features, self.classifier.out_features, n)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.asr_norm(masked_mean(x, lengths))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.encode(x, lengths)))


class FineTuneRNN(nn.Module):
    """Fine-tuning RNN-x: a new GRU on ASR layer x, mean over valid frames, dropout, classifier.
    The paper does not give the GRU's size; the default matches the best baseline (96, bidirectional)."""

    def __init__(self, input_size: int, hidden_size: int = 96, bidirectional: bool = True, n_classes: int = 4,
                 dropout: float = 0.25, frame_stack: int = 1):
        super().__init__()
        self.frame_stack = int(frame_stack)  # k ASR frames per GRU step, as in the baseline (paper: 1)
        self.rnn = MaskedRNN("gru", input_size * self.frame_stack, hidden_size, bidirectional=bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.rnn.output_size, n_classes)

    def forward_flops(self, lengths) -> int:
        """Forward FLOPs for utterances of ``lengths`` frames (:mod:`~ser_modules.models.flops`)."""
        lengths = torch.as_tensor(lengths).reshape(-1)
        return (self.rnn.forward_flops(stacked_lengths(lengths, self.frame_stack))
                + linear_flops(self.classifier.in_features, self.classifier.out_features, len(lengths)))

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x, lengths = stack_frames(x, lengths, self.frame_stack)
        return masked_mean(self.rnn(x, lengths), lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.encode(x, lengths)))


class WeightedLayerSum(nn.Module):
    """The SUPERB protocol's upstream read-out: a learned softmax-weighted sum of all ``n_layers``
    layers, then a head (:class:`FineTuneMP` or :class:`FineTuneRNN`) on the sum.

    Input: the layers side by side, ``x [B, T, n_layers * dim]`` (layer k in columns ``k*dim:(k+1)*dim``).
    ``layer_norm``: each layer of each frame normalised to zero mean and unit variance over its ``dim``
    features (:func:`normalise_frames`) before the sum, so layers of very different scales weigh by their
    weights alone.

    With the MP head the sum commutes with the mean over frames, and the normalisation is a fixed function
    of each frame, so the model is also a function of the per-layer (normalised) means ``[B, n_layers * dim]``
    (which stage 4 stores once per utterance): :meth:`forward_pooled` on them equals
    :meth:`forward` on the frames up to float rounding, at the cost of one vector per utterance.
    """

    def __init__(self, n_layers: int, dim: int, head: nn.Module, layer_norm: bool = False):
        super().__init__()
        self.n_layers, self.dim, self.layer_norm = int(n_layers), int(dim), bool(layer_norm)
        self.layer_logits = nn.Parameter(torch.zeros(self.n_layers))  # uniform weights at the start, as in s3prl
        self.head = head

    def layer_weights(self) -> torch.Tensor:
        """The softmax weights ``[n_layers]`` (sum 1)."""
        return torch.softmax(self.layer_logits, dim=0)

    def forward_flops(self, lengths) -> int:
        lengths = torch.as_tensor(lengths).reshape(-1)
        return 2 * self.n_layers * self.dim * total(lengths) + self.head.forward_flops(lengths)


    def _sum(self, layers: torch.Tensor) -> torch.Tensor:
        return (layers * self.layer_weights()[:, None]).sum(dim=-2)

    def combine(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, n_layers * dim]`` -> the weighted sum ``[B, T, dim]``."""
        layers = x.view(*x.shape[:-1], self.n_layers, self.dim)
        return self._sum(normalise_frames(layers) if self.layer_norm else layers)

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_classes]`` from the mean of each (normalised) layer ``[B, n_layers * dim]`` (MP head
        only; :func:`ser_modules.ser.variants.pool_layers`, stage 4's ``pooled_norm_<layer>.npy``)."""
        if not isinstance(self.head, FineTuneMP):
            raise TypeError("forward_pooled needs the MP head: a recurrent head reads frames")
        summed = self._sum(pooled.view(pooled.shape[0], self.n_layers, self.dim))
        return self.head.classifier(self.head.dropout(summed))

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head.encode(self.combine(x), lengths)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.combine(x), lengths)


PROGRESSIVE_ABLATIONS = (None, "asr", "branch")


class ProgressiveNet(nn.Module):
    """Progressive net-x: the baseline branch (trained from scratch on handcrafted features) beside
    the frozen ASR layer x; both pooled vectors concatenated into the classifier.

    ``asr_norm``: ``none`` (the paper) or ``train`` (the pooled ASR vector standardised per dimension
    with the training fold's statistics, :class:`PooledStandardiser`, fitted by stage 5 before training).
    ``ablate`` (measurements of issue 43): ``asr`` feeds zeros in place of the ASR vector (the model is the
    baseline), ``branch`` drops the branch (the model is Fine-tuning MP-x; it still reads the handcrafted
    features and is batched by their frames, as the Progressive net is, so that only the branch differs).
    """

    def __init__(self, handcrafted_size: int = 27, asr_size: int = 800, hidden_size: int = 96, num_layers: int = 2,
                 n_classes: int = 4, dropout: float = 0.25, frame_stack: int = 1, asr_norm: str = "none",
                 ablate: str | None = None):
        super().__init__()
        if ablate not in PROGRESSIVE_ABLATIONS:
            raise ValueError(f"ablate must be one of {PROGRESSIVE_ABLATIONS}, got {ablate!r}")
        self.ablate, self.asr_size = ablate, int(asr_size)
        self.branch = None
        branch_size = 0
        if ablate != "branch":
            self.branch = BiGRUBaseline(handcrafted_size, hidden_size, num_layers, n_classes, dropout, frame_stack)
            self.branch.classifier = nn.Identity()  # the shared classifier below replaces it
            branch_size = self.branch.output_size
        self.asr_norm = pooled_norm(asr_norm, self.asr_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(branch_size + self.asr_size, n_classes)

    def forward_flops(self, feat_lengths, asr_lengths) -> int:
        """Forward FLOPs: the handcrafted branch over ``feat_lengths`` frames and the classifier
        (the ASR layer is precomputed or frozen and is not part of this model's work)."""
        n = len(torch.as_tensor(feat_lengths).reshape(-1))
        branch = self.branch.forward_flops(feat_lengths) if self.branch is not None else 0
        return branch + linear_flops(self.classifier.in_features, self.classifier.out_features, n)

    def pooled_asr(self, asr: torch.Tensor, asr_lengths: torch.Tensor) -> torch.Tensor:
        """The ASR half of the classifier's input ``[B, asr_size]``: the (standardised) mean, or zeros."""
        if self.ablate == "asr":
            return asr.new_zeros(asr.shape[0], self.asr_size)
        return self.asr_norm(masked_mean(asr, asr_lengths))

    def encode(self, feats, feat_lengths, asr, asr_lengths) -> torch.Tensor:
        parts = [self.branch.encode(feats, feat_lengths)] if self.branch is not None else []
        return torch.cat(parts + [self.pooled_asr(asr, asr_lengths)], dim=-1)

    def forward(self, feats, feat_lengths, asr, asr_lengths) -> torch.Tensor:
        return self.classifier(self.dropout(self.encode(feats, feat_lengths, asr, asr_lengths)))


class SelfAttentionPooling(nn.Module):
    """``alpha = softmax(u^T tanh(X W + b))`` over valid frames; returns ``sum_t alpha_t x_t``."""

    def __init__(self, input_size: int, attention_size: int):
        super().__init__()
        self.proj = nn.Linear(input_size, attention_size)
        self.u = nn.Linear(attention_size, 1, bias=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = masked_softmax(self.u(tanh(self.proj(x))).squeeze(-1), lengths)
        return (alpha.unsqueeze(-1) * x).sum(dim=1), alpha


class IAAN(nn.Module):
    """Interaction-aware attention network (Yeh, Lin, Lee, ICASSP 2019; Yeh 2020 uses it on ASR layers).

    Inputs: the target utterance ``[B, T, D]``, the previous utterance of the same speaker ``U_p`` and
    of the interlocutor ``U_r`` (each ``[B, T_*, D]`` with lengths; a missing context is one zero frame).
    ``U_p`` and ``U_r``: a GRU each, self-attention pooling -> ``h_p``, ``h_r``. Target: a GRU over its
    frames ``c_t``, interaction attention ``e_t = u^T tanh(W_c c_t + W_p h_p + W_r h_r + b)``, padded
    frames masked, ``h_c = sum_t alpha_t c_t``. Output: ``[h_c; h_p; h_r] -> FC -> dropout ->
    LayerNorm -> ReLU -> FC``. Paper sizes: unidirectional GRUs of 1024, attention 16, MLP 64.
    """

    def __init__(self, input_size: int = 512, hidden_size: int = 1024, attention_size: int = 16, mlp_size: int = 64,
                 n_classes: int = 4, dropout: float = 0.25):
        super().__init__()
        self.target_rnn = MaskedRNN("gru", input_size, hidden_size, bidirectional=False)
        self.prev_rnn = MaskedRNN("gru", input_size, hidden_size, bidirectional=False)
        self.other_rnn = MaskedRNN("gru", input_size, hidden_size, bidirectional=False)
        self.prev_pool = SelfAttentionPooling(hidden_size, attention_size)
        self.other_pool = SelfAttentionPooling(hidden_size, attention_size)
        self.w_c = nn.Linear(hidden_size, attention_size, bias=True)
        self.w_p = nn.Linear(hidden_size, attention_size, bias=False)
        self.w_r = nn.Linear(hidden_size, attention_size, bias=False)
        self.u = nn.Linear(attention_size, 1, bias=False)
        self.mlp = nn.Sequential(nn.Linear(3 * hidden_size, mlp_size), nn.Dropout(dropout), nn.LayerNorm(mlp_size),
                                 nn.ReLU(), nn.Linear(mlp_size, n_classes))

    def forward_flops(self, target_lengths, prev_lengths, other_lengths) -> int:
        """Forward FLOPs for target / previous / interlocutor utterances of the given frame counts."""
        t, p, o = (total(x) for x in (target_lengths, prev_lengths, other_lengths))
        n = len(torch.as_tensor(target_lengths).reshape(-1))
        hidden, att = self.target_rnn.hidden_size, self.w_c.out_features
        flops = self.target_rnn.forward_flops(t) + self.prev_rnn.forward_flops(p) + self.other_rnn.forward_flops(o)
        flops += linear_flops(hidden, att, p + o) + linear_flops(att, 1, p + o)  # self-attention pooling
        flops += linear_flops(hidden, att, t) + 2 * linear_flops(hidden, att, n) + linear_flops(att, 1, t)
        first, last = self.mlp[0], self.mlp[-1]
        return flops + linear_flops(first.in_features, first.out_features, n) + linear_flops(
            last.in_features, last.out_features, n)

    def encode(self, target, target_lengths, prev, prev_lengths, other, other_lengths):
        """``(h = [h_c; h_p; h_r] [B, 3H], alpha [B, T])``: the pooled vector and target attention."""
        prev_c, other_c, c = run_together([self.prev_rnn, self.other_rnn, self.target_rnn],
                                          [(prev, prev_lengths), (other, other_lengths), (target, target_lengths)])
        h_p, _ = self.prev_pool(prev_c, prev_lengths)
        h_r, _ = self.other_pool(other_c, other_lengths)
        scores = self.u(tanh(self.w_c(c) + (self.w_p(h_p) + self.w_r(h_r)).unsqueeze(1))).squeeze(-1)
        alpha = masked_softmax(scores, target_lengths)
        h_c = (alpha.unsqueeze(-1) * c).sum(dim=1)
        return torch.cat([h_c, h_p, h_r], dim=-1), alpha

    def forward(self, target, target_lengths, prev, prev_lengths, other, other_lengths) -> torch.Tensor:
        return self.mlp(self.encode(target, target_lengths, prev, prev_lengths, other, other_lengths)[0])


class LinearSVMReference(nn.Module):
    """The classical SER reference: utterance-level features (eGeMAPS functionals), standardised,
    into a one-vs-rest linear SVM. Its parameters are fitted by scikit-learn (stage 5) and copied into
    the buffers, so inference runs it like any other model. ``x [B, 1, D]`` -> decision values ``[B, C]``.
    """

    def __init__(self, input_size: int = 88, n_classes: int = 4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(input_size))
        self.register_buffer("scale", torch.ones(input_size))
        self.register_buffer("weight", torch.zeros(n_classes, input_size))
        self.register_buffer("bias", torch.zeros(n_classes))

    def set_parameters(self, mean, scale, coef, intercept) -> None:
        """From a fitted ``StandardScaler`` (``mean_``, ``scale_``) and the SVM's per-class weights
        ``coef [C, D]`` and biases ``intercept [C]``."""
        for buffer, value in ((self.mean, mean), (self.scale, scale), (self.weight, coef), (self.bias, intercept)):
            buffer.copy_(torch.as_tensor(value, dtype=torch.float32))

    def forward_flops(self, lengths) -> int:
        n = len(torch.as_tensor(lengths).reshape(-1))
        return linear_flops(self.weight.shape[1], self.weight.shape[0], n)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return ((x[:, 0] - self.mean) / self.scale) @ self.weight.T + self.bias
