"""SER variants: one model on one input (``baseline-96``, ``MP-gru2``, ``IAAN-finetuned-pblstm1``).

:class:`VariantSpec` is one entry of ``conf/ser.yaml``'s ``variants``; :func:`model_blueprint` turns
it into a model class of :mod:`ser_modules.models.ser` with its arguments (what an export writes as
``!new:``), and :func:`forward` feeds a collated batch to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ser_modules.models.ser import (
    IAAN,
    BiGRUBaseline,
    FineTuneMP,
    FineTuneRNN,
    PROGRESSIVE_ABLATIONS,
    LinearSVMReference,
    PooledStandardiser,
    ProgressiveNet,
    WeightedLayerSum,
    normalise_frames,
)
from ser_modules.utils.fileio import ManifestError

MODEL_TYPES = ("baseline", "mp", "rnn", "progressive", "iaan", "reference", "weighted")


NO_ASR_TYPES = ("baseline", "reference")


VARIANT_TRAINING_KEYS = ("max_epochs", "batch_size", "lr", "layer_weights_lr", "dropout", "early_stop_patience",
                         "early_stop_min_steps")


@dataclass
class VariantSpec:
    """One SER model configuration: ``type`` in MODEL_TYPES, the ASR model and layer it reads
    (``asr`` = pretrained, finetuned, structured or an upstream; ``layer`` = gru2, pblstm1, layer3, ...)
    and sizes. ``weighted`` (SUPERB) reads all ``options["layers"]`` through a learned weighted sum
    into an ``options["head"]`` of ``mp`` or ``rnn``."""

    name: str
    type: str
    asr: str | None = None
    layer: str | None = None
    hidden: int = 96
    options: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: dict) -> "VariantSpec":
        spec = dict(spec)
        if spec.get("type") not in MODEL_TYPES:
            raise ManifestError(f"variant {spec.get('name')!r}: type must be one of {MODEL_TYPES}, got {spec.get('type')!r}")
        if spec["type"] not in NO_ASR_TYPES and not (spec.get("asr") and spec.get("layer")):
            raise ManifestError(f"variant {spec.get('name')!r}: type {spec['type']} needs 'asr' and 'layer'")
        if spec["type"] == "weighted" and spec.get("head", "mp") not in ("mp", "rnn"):
            raise ManifestError(f"variant {spec.get('name')!r}: a weighted variant's head must be mp or rnn, got "
                                f"{spec.get('head')!r}")
        if spec.get("asr_norm", "none") not in ("none", "train") or ("asr_norm" in spec and spec["type"] not in
                                                                      ("mp", "progressive")):
            raise ManifestError(f"variant {spec.get('name')!r}: asr_norm (none or train) is a key of mp and progressive "
                                f"variants, got {spec.get('asr_norm')!r} on type {spec['type']}")
        if "n_runs" in spec and not (isinstance(spec["n_runs"], int) and spec["n_runs"] >= 1):
            raise ManifestError(f"variant {spec.get('name')!r}: n_runs must be a whole number >= 1, "
                                f"got {spec['n_runs']!r}")
        if "ablate" in spec and (spec["type"] != "progressive" or spec["ablate"] not in PROGRESSIVE_ABLATIONS):
            raise ManifestError(f"variant {spec.get('name')!r}: ablate (asr or branch) is a key of progressive variants, "
                                f"got {spec.get('ablate')!r} on type {spec['type']}")
        known = {k: spec.pop(k) for k in ("name", "type", "asr", "layer", "hidden") if k in spec}
        return cls(**known, options=spec)

    @property
    def uses_handcrafted(self) -> bool:
        return self.type in ("baseline", "progressive")

    @property
    def layers(self) -> list[str]:
        """The ASR layers the variant reads: its ``layer``, or for ``weighted`` all of ``options["layers"]``."""
        if self.type == "weighted":
            return list(self.options.get("layers") or [])
        return [self.layer] if self.layer else []

    @property
    def pooled(self) -> bool:
        """Reads one mean-pooled vector per utterance (MP-x, Progressive net-x, weighted with the MP head:
        the mean of each layer, of its normalised frames with ``layer_norm``; :class:`WeightedLayerSum`)."""
        return self.type in ("mp", "progressive") or (self.type == "weighted" and self.options.get("head", "mp") == "mp")

    @property
    def normalised(self) -> bool:
        """A weighted sum that normalises each layer's frames (``layer_norm``) before the sum."""
        return self.type == "weighted" and bool(self.options.get("layer_norm", False))


def variant_runs(spec: "VariantSpec | dict", n_runs: int) -> int:
    """Runs (seeds) per fold of a variant: its own ``n_runs`` key, else the config's ``n_runs`` (the demo
    repeats cheap variants more often than the recurrent ones)."""
    options = spec.options if isinstance(spec, VariantSpec) else spec
    return int(options.get("n_runs", n_runs))


def planned_pairs(variants: list[dict], n_folds: int, n_runs: int) -> dict[str, int]:
    """``{variant name: (fold, run) pairs planned}`` (:func:`variant_runs` per fold)."""
    return {v["name"]: n_folds * variant_runs(v, n_runs) for v in variants}


def pool_layers(spec: VariantSpec, seq: torch.Tensor) -> torch.Tensor:
    """What a pooled variant reads of one utterance's layers side by side ``[T, n_layers * D]``: the mean of
    each layer's (normalised, :attr:`VariantSpec.normalised`) frames ``[1, n_layers * D]``, as stage 4 stores it."""
    if not spec.normalised:
        return seq.mean(dim=0, keepdim=True)
    n = len(spec.layers)
    return normalise_frames(seq.view(seq.shape[0], n, -1)).mean(dim=0).reshape(1, -1)


def model_blueprint(spec: VariantSpec, dims: dict[str, int], n_classes: int, dropout: float) -> tuple[type, dict]:
    """The SER model class of ``spec`` and its keyword arguments (a weighted sum's ``head`` is itself a
    ``(class, kwargs)`` pair): :func:`build_model` calls it, an export writes it as HyperPyYAML ``!new:``."""
    o = spec.options
    if spec.type == "baseline":
        return BiGRUBaseline, dict(input_size=dims["handcrafted"], hidden_size=spec.hidden,
                                   num_layers=o.get("num_layers", 2), n_classes=n_classes, dropout=dropout,
                                   frame_stack=o.get("frame_stack", 1))
    if spec.type == "mp":
        return FineTuneMP, dict(input_size=dims["asr"], n_classes=n_classes, dropout=dropout,
                                asr_norm=o.get("asr_norm", "none"))
    if spec.type == "rnn":
        return FineTuneRNN, dict(input_size=dims["asr"], hidden_size=spec.hidden,
                                 bidirectional=o.get("bidirectional", True), n_classes=n_classes, dropout=dropout,
                                 frame_stack=o.get("frame_stack", 1))
    if spec.type == "progressive":
        return ProgressiveNet, dict(handcrafted_size=dims["handcrafted"], asr_size=dims["asr"], hidden_size=spec.hidden,
                                    num_layers=o.get("num_layers", 2), n_classes=n_classes, dropout=dropout,
                                    frame_stack=o.get("frame_stack", 1), asr_norm=o.get("asr_norm", "none"),
                                    ablate=o.get("ablate"))
    if spec.type == "reference":
        return LinearSVMReference, dict(input_size=dims["egemaps"], n_classes=n_classes)
    if spec.type == "weighted":
        head = VariantSpec(spec.name, o.get("head", "mp"), spec.asr, spec.layer, spec.hidden, o)
        return WeightedLayerSum, dict(n_layers=dims["layers"], dim=dims["asr"],
                                      head=model_blueprint(head, dims, n_classes, dropout),
                                      layer_norm=bool(o.get("layer_norm", False)))
    return IAAN, dict(input_size=dims["asr"], hidden_size=spec.hidden, attention_size=o.get("attention_size", 16),
                      mlp_size=o.get("mlp_size", 64), n_classes=n_classes, dropout=dropout)


def fit_input_statistics(model: torch.nn.Module, pooled: torch.Tensor) -> None:
    """Fit every :class:`PooledStandardiser` of ``model`` (``asr_norm: train``) on the training fold's pooled
    ASR vectors ``[N, D]``; nothing else in a model learns before training."""
    for module in model.modules():
        if isinstance(module, PooledStandardiser):
            module.fit(pooled)


def build_model(spec: VariantSpec, dims: dict[str, int], n_classes: int, dropout: float) -> torch.nn.Module:
    def build(blueprint):
        cls, kwargs = blueprint
        return cls(**{k: build(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})

    return build(model_blueprint(spec, dims, n_classes, dropout))


def forward(model: torch.nn.Module, spec: VariantSpec, batch: dict, device) -> torch.Tensor:
    def seq(key):
        x, n = batch[key]
        return x.to(device), n.to(device)

    if spec.type == "baseline":
        return model(*seq("feats"))
    if spec.type == "reference":
        return model(*seq("egemaps"))
    if spec.type == "weighted" and spec.pooled:  # one vector per layer: the sum and the head, no frames
        return model.forward_pooled(seq("asr")[0][:, 0])
    if spec.type in ("mp", "rnn", "weighted"):
        return model(*seq("asr"))
    if spec.type == "progressive":
        return model(*seq("feats"), *seq("asr"))
    return model(*seq("asr"), *seq("prev"), *seq("other"))
