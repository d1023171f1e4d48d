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
from ser_modules.ser.dimensional import ATTRIBUTE_LOSSES, ATTRIBUTES, TASKS, output_sizes
from ser_modules.ser.finetune import FineTunedTop, attach_upstream_blocks
from ser_modules.utils.fileio import ManifestError

MODEL_TYPES = ("baseline", "mp", "rnn", "progressive", "iaan", "reference", "weighted")


NO_ASR_TYPES = ("baseline", "reference")
FINETUNE_INPUTS = ("stored", "waveform")  # stage 4's stored layer below the blocks, or the signal


VARIANT_TRAINING_KEYS = ("max_epochs", "batch_size", "lr", "layer_weights_lr", "dropout", "early_stop_patience",
                         "early_stop_min_steps", "attribute_loss", "task_weight", "upstream_lr", "warmup_steps")


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
        check_task_keys(spec)
        check_finetune_keys(spec)
        known = {k: spec.pop(k) for k in ("name", "type", "asr", "layer", "hidden") if k in spec}
        return cls(**known, options=spec)

    @property
    def task(self) -> str:
        """``categorical`` (class logits), ``dimensional`` (attributes) or ``multitask`` (both, one last layer)."""
        return self.options.get("task", "categorical")

    @property
    def predicts_classes(self) -> bool:
        return self.task != "dimensional"

    @property
    def predicts_attributes(self) -> bool:
        return self.task != "categorical"

    @property
    def finetuned(self) -> int:
        """How many top blocks of its upstream the variant fine-tunes (0: a frozen probe; :mod:`ser_modules.ser.finetune`)."""
        return int(self.options.get("finetune_blocks", 0) or 0)

    @property
    def reads_waveform(self) -> bool:
        """A fine-tuned top that runs its frozen upstream on the signal (``finetune_input: waveform``)."""
        return bool(self.finetuned) and self.options.get("finetune_input", "stored") == "waveform"

    @property
    def summed_layers(self) -> list[str]:
        """The layers a weighted sum weighs: the stored ones it reads and, fine-tuned, the blocks' outputs
        (``layer{L-k+1} .. layer{L}`` after the stored ``layer{L-k}``)."""
        layers = self.layers
        if self.type != "weighted" or not self.finetuned or not layers:
            return layers
        top = int(layers[-1][len("layer"):])
        return layers + [f"layer{top + i}" for i in range(1, self.finetuned + 1)]

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
        if self.finetuned:  # the blocks read frames
            return False
        return self.type in ("mp", "progressive") or (self.type == "weighted" and self.options.get("head", "mp") == "mp")

    @property
    def normalised(self) -> bool:
        """A weighted sum that normalises each layer's frames (``layer_norm``) before the sum."""
        return self.type == "weighted" and bool(self.options.get("layer_norm", False))


def check_task_keys(spec: dict) -> None:
    """:class:`ManifestError` naming the variant for a bad ``task``, ``attribute_loss``, ``task_weight`` or
    ``attributes`` key (attributes are the config's unless a variant names its own)."""
    name = spec.get("name")
    if spec.get("task", "categorical") not in TASKS:
        raise ManifestError(f"variant {name!r}: task must be one of {TASKS}, got {spec.get('task')!r}")
    if spec.get("attribute_loss", "ccc") not in ATTRIBUTE_LOSSES:
        raise ManifestError(f"variant {name!r}: attribute_loss must be one of {ATTRIBUTE_LOSSES}, got "
                            f"{spec.get('attribute_loss')!r}")
    weight = spec.get("task_weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
        raise ManifestError(f"variant {name!r}: task_weight (the attribute loss's weight in a multitask variant) must "
                            f"be a number > 0, got {weight!r}")
    attributes = spec.get("attributes", list(ATTRIBUTES))
    if not isinstance(attributes, (list, tuple)) or not attributes or not all(isinstance(a, str) for a in attributes):
        raise ManifestError(f"variant {name!r}: attributes must be a list of manifest columns, got {attributes!r}")


def check_finetune_keys(spec: dict) -> None:
    """:class:`ManifestError` naming the variant for a bad ``finetune_blocks`` (a whole number >= 0, or ``all``
    on a template, of an mp, rnn or weighted variant of an upstream), ``upstream_lr`` or ``warmup_steps``."""
    name = spec.get("name")
    k = spec.get("finetune_blocks")
    if k is None:
        return
    whole = isinstance(k, int) and not isinstance(k, bool) and k >= 0
    if spec.get("type") not in ("mp", "rnn", "weighted") or not (whole or k == "all"):
        raise ManifestError(f"variant {name!r}: finetune_blocks (the top blocks of an upstream to fine-tune) is a whole "
                            f"number >= 0 or 'all' of an mp, rnn or weighted variant, got {k!r} on type {spec.get('type')}")
    if k == "all" and spec.get("asr") != "upstreams":
        raise ManifestError(f"variant {name!r}: finetune_blocks: all needs asr: upstreams (each upstream's number of "
                            f"blocks), got asr {spec.get('asr')!r}; give the number of blocks instead")
    if k and spec.get("asr_norm", "none") != "none":
        raise ManifestError(f"variant {name!r}: asr_norm standardises the stored layer, which fine-tuned blocks "
                            "change: leave it out with finetune_blocks")
    if spec.get("finetune_input", "stored") not in FINETUNE_INPUTS:
        raise ManifestError(f"variant {name!r}: finetune_input (where the blocks' input comes from) must be one of "
                            f"{FINETUNE_INPUTS}, got {spec.get('finetune_input')!r}")
    lr = spec.get("upstream_lr")
    if lr is not None and (not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0):
        raise ManifestError(f"variant {name!r}: upstream_lr must be a number > 0, got {lr!r}")
    warmup = spec.get("warmup_steps", 0)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ManifestError(f"variant {name!r}: warmup_steps must be a whole number >= 0, got {warmup!r}")


def variant_attributes(spec: "VariantSpec", config_attributes=None) -> list[str]:
    """The attributes a variant predicts: none for a categorical one, else its own ``attributes`` key, the
    config's ``attributes``, or arousal, valence and dominance."""
    if not spec.predicts_attributes:
        return []
    return list(spec.options.get("attributes") or config_attributes or ATTRIBUTES)


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


def model_blueprint(spec: VariantSpec, dims: dict[str, int], n_classes: int, dropout: float,
                    n_attributes: int = 0) -> tuple[type, dict]:
    """The SER model class of ``spec`` and its keyword arguments (a weighted sum's ``head`` is itself a
    ``(class, kwargs)`` pair): :func:`build_model` calls it, an export writes it as HyperPyYAML ``!new:``.
    The last layer has ``n_classes`` class logits and/or ``n_attributes`` attribute outputs, by the task."""
    o = spec.options
    if spec.finetuned:  # the head's blueprint; the upstream's blocks are attached when the model is built
        head = VariantSpec(spec.name, spec.type, spec.asr, spec.layer, spec.hidden,
                           {k: v for k, v in o.items() if k != "finetune_blocks"})
        if spec.type == "weighted":  # the stored layers and the blocks' outputs
            dims = {**dims, "layers": dims["layers"] + spec.finetuned}
        return FineTunedTop, dict(head=model_blueprint(head, dims, n_classes, dropout, n_attributes),
                                  finetune_blocks=spec.finetuned,
                                  waveform_layers=spec.layers if spec.reads_waveform else None)
    n_classes = sum(output_sizes(spec.task, n_classes, n_attributes))
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
        # the head's last layer already has the task's outputs (n_classes is their sum here)
        head = VariantSpec(spec.name, o.get("head", "mp"), spec.asr, spec.layer, spec.hidden,
                           {k: v for k, v in o.items() if k != "task"})
        return WeightedLayerSum, dict(n_layers=dims["layers"], dim=dims["asr"],
                                      head=model_blueprint(head, dims, n_classes, dropout),
                                      layer_norm=bool(o.get("layer_norm", False)))
    return IAAN, dict(input_size=dims["asr"], hidden_size=spec.hidden, attention_size=o.get("attention_size", 16),
                      mlp_size=o.get("mlp_size", 64), n_classes=n_classes, dropout=dropout)


def restore_model(spec: VariantSpec, info: dict, weights: str, asr_path: str | None = None) -> torch.nn.Module:
    """A trained fold model as stage 5 saved it: built from its ``model.json`` (``info``), a fine-tuned top's
    blocks from the upstream saved at ``asr_path``, then the weights of ``weights`` over it (on the CPU)."""
    model = build_model(spec, info["dims"], len(info["classes"]), info["dropout"], len(info.get("attributes") or []))
    if spec.finetuned:
        attach_upstream_blocks(model, asr_path)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model


def fit_input_statistics(model: torch.nn.Module, pooled: torch.Tensor) -> None:
    """Fit every :class:`PooledStandardiser` of ``model`` (``asr_norm: train``) on the training fold's pooled
    ASR vectors ``[N, D]``; nothing else in a model learns before training."""
    for module in model.modules():
        if isinstance(module, PooledStandardiser):
            module.fit(pooled)


def build_model(spec: VariantSpec, dims: dict[str, int], n_classes: int, dropout: float,
                n_attributes: int = 0) -> torch.nn.Module:
    def build(blueprint):
        cls, kwargs = blueprint
        return cls(**{k: build(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})

    return build(model_blueprint(spec, dims, n_classes, dropout, n_attributes))


def forward(model: torch.nn.Module, spec: VariantSpec, batch: dict, device) -> torch.Tensor:
    def seq(key):
        x, n = batch[key]
        return x.to(device), n.to(device)

    if spec.type == "baseline":
        return model(*seq("feats"))
    if spec.type == "reference":
        return model(*seq("egemaps"))
    if spec.reads_waveform:  # the model runs its frozen upstream on the signals itself
        return model(*seq("wav"))
    if spec.type == "weighted" and spec.pooled:  # one vector per layer: the sum and the head, no frames
        return model.forward_pooled(seq("asr")[0][:, 0])
    if spec.type in ("mp", "rnn", "weighted"):  # (a fine-tuned top reads frames too)
        return model(*seq("asr"))
    if spec.type == "progressive":
        return model(*seq("feats"), *seq("asr"))
    return model(*seq("asr"), *seq("prev"), *seq("other"))
