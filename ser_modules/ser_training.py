"""Training the SER models on stored representations, fold by fold and run by run.

A *variant* is one model on one input (``baseline-96``, ``MP-gru2``, ``IAAN-finetuned-pblstm1``);
stage 5 trains every variant of the config on every fold of the protocol, ``n_runs`` times with
different seeds. Training follows Lakomkin 2018 / Yeh 2020: Adam, gradient-norm clipping, SortaGrad
in the first epoch, learning-rate annealing when the validation loss has not improved for
``anneal_patience`` epochs, stop when the learning rate falls below ``min_lr`` (or, optionally, after
``early_stop_patience`` epochs without a lower validation loss); the model with the lowest validation
loss is evaluated. Test speakers never enter training or model selection.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.epoch_loop import EpochCounterWithStopper
from torch.nn.utils.rnn import pad_sequence

from ser_modules.asr_training import seed_all
from ser_modules.data import LengthBucketBatchSampler
from ser_modules.dump import FeatureStore, read_stores
from ser_modules.fileio import ManifestError, StagedOutputs, atomic_path, write_csv, write_json
from ser_modules.folds import Fold
from ser_modules.jobs import fault_point
from ser_modules.models.ser import (
    IAAN, BiGRUBaseline, FineTuneMP, FineTuneRNN, LinearSVMReference, ProgressiveNet, WeightedLayerSum,
)

logger = logging.getLogger(__name__)
MODEL_TYPES = ("baseline", "mp", "rnn", "progressive", "iaan", "reference", "weighted")
NO_ASR_TYPES = ("baseline", "reference")
VARIANT_TRAINING_KEYS = ("max_epochs", "batch_size", "lr", "layer_weights_lr", "early_stop_patience",
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
        """Reads one mean-pooled vector per utterance (MP-x, Progressive net-x, weighted with the MP head;
        not with ``layer_norm``, which normalises every frame before the mean)."""
        return self.type in ("mp", "progressive") or (self.type == "weighted" and self.options.get("head", "mp") == "mp"
                                                      and not self.options.get("layer_norm", False))


# ----------------------------------------------------------------------------------------------
# Inputs


class SERInputs:
    """The stage-4 stores of every variant and fold, opened once per process.

    ``stores.json`` (written by stage 4) maps each ASR model key (``pretrained`` or
    ``finetuned/<fold>``) to its store; the handcrafted store holds the baseline features and their
    augmented copies (``mfcc_pitch``, ``mfcc_pitch@1``, ...). Nothing is cached here: datasets read
    their utterances from the stores, so memory does not grow with the number of jobs a worker runs.
    """

    def __init__(self, stores_json: str):
        self.info = read_stores(stores_json)
        self._stores: dict[str, FeatureStore] = {}

    def _store(self, folder: str) -> FeatureStore:
        if folder not in self._stores:
            self._stores[folder] = FeatureStore(folder)
        return self._stores[folder]

    def asr_store(self, asr: str, fold: str) -> FeatureStore:
        """The store of ASR model ``asr`` for ``fold`` (a shared model when it is not per fold)."""
        for key in (f"{asr}/{fold}", asr):
            if key in self.info["asr"]:
                return self._store(self.info["asr"][key]["folder"])
        raise ManifestError(f"no stage-4 store for ASR model {asr!r} (fold {fold}); stored: {sorted(self.info['asr'])}")

    def handcrafted_store(self) -> FeatureStore:
        if not self.info.get("handcrafted"):
            raise ManifestError("the baseline needs handcrafted features: set handcrafted: True in conf/dump.yaml")
        return self._store(self.info["handcrafted"]["folder"])

    def handcrafted_copies(self) -> list[str]:
        return self.handcrafted_store().layers

    def egemaps_store(self) -> FeatureStore:
        if not self.info.get("egemaps"):
            raise ManifestError("the reference variant needs eGeMAPS features: set egemaps: True in conf/dump.yaml "
                                "and rerun stage 4")
        return self._store(self.info["egemaps"]["folder"])

    def dim(self, spec: VariantSpec, fold: str) -> dict[str, int]:
        dims = {}
        if spec.uses_handcrafted:
            dims["handcrafted"] = self.handcrafted_store().dim("mfcc_pitch")
        if spec.type == "reference":
            dims["egemaps"] = self.egemaps_store().dim("egemaps")
        if spec.asr:
            dims["asr"] = self.asr_store(spec.asr, fold).dim(spec.layers[0])
        if spec.type == "weighted":
            dims["layers"] = len(spec.layers)
        return dims


class SERDataset(torch.utils.data.Dataset):
    """Examples of one split for one variant: tensors per utterance, label index, and for the
    baseline branch one of the augmented copies drawn per epoch (training only).

    Frame sequences are read from the stores per item; the mean-pooled ASR vectors that MP-x and
    Progressive net-x read (one vector per utterance) are read once when the dataset is made, from
    the pooled vectors stage 4 wrote (:meth:`~ser_modules.dump.FeatureStore.mean_pooled`).
    """

    def __init__(self, spec: VariantSpec, ids: list[str], labels: list[int], inputs: SERInputs, fold: str,
                 context: pd.DataFrame | None = None, train: bool = False, seed: int = 0):
        self.spec, self.ids, self.labels, self.inputs, self.fold = spec, ids, labels, inputs, fold
        self.train, self.seed, self.epoch = train, seed, 1
        self.asr = inputs.asr_store(spec.asr, fold) if spec.asr else None
        self.hand = inputs.handcrafted_store() if spec.uses_handcrafted else None
        self.copies = inputs.handcrafted_copies() if self.hand is not None else []
        self.egemaps = inputs.egemaps_store() if spec.type == "reference" else None
        self.pooled = {}
        if spec.pooled:  # the masked mean of one frame is the frame itself; weighted: the layers side by side
            vectors = np.concatenate([self.asr.mean_pooled(n, ids) for n in spec.layers], axis=1)  # [len(ids), D]
            self.pooled = dict(zip(ids, torch.from_numpy(vectors).unsqueeze(1)))  # [1, D] each
        if spec.type == "iaan":
            if context is None or not {"prev_same", "prev_other"} <= set(context.columns):
                raise ManifestError(f"variant {spec.name}: IAAN needs dialog context (prev_same/prev_other columns)")
            ctx = context.set_index("ID")
            self.context = {i: (ctx.at[i, "prev_same"], ctx.at[i, "prev_other"]) for i in ids}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _same_frames(self, utt: str) -> list[np.ndarray]:
        """The variant's layers of one utterance, which a weighted sum needs at one frame rate."""
        arrays = [self.asr.get(utt, n) for n in self.spec.layers]
        if len({a.shape[0] for a in arrays}) > 1:
            raise ManifestError(f"{self.asr.folder}: variant {self.spec.name}: layers {self.spec.layers} have "
                                f"{[a.shape[0] for a in arrays]} frames for {utt}; a weighted sum needs one frame rate")
        return arrays

    def __len__(self) -> int:
        return len(self.ids)

    def length(self, i: int) -> int:
        """Frames of example ``i`` (for length bucketing)."""
        if self.spec.type in ("rnn", "iaan") or (self.asr is not None and not self.spec.pooled):
            return self.asr.frames(self.ids[i], self.spec.layers[0])
        if self.hand is not None:
            return self.hand.frames(self.ids[i], "mfcc_pitch")
        return 1

    def _handcrafted(self, i: int, utt: str) -> torch.Tensor:
        layer = "mfcc_pitch"
        if self.train and len(self.copies) > 1:  # one random augmented copy (or the clean one) per epoch
            rng = np.random.default_rng([self.seed, self.epoch, i])
            layer = self.copies[int(rng.integers(len(self.copies)))]
        return torch.from_numpy(self.hand.get(utt, layer))

    def _context(self, utt: str | None) -> torch.Tensor:
        if not utt or utt not in self.asr:
            return torch.zeros(1, self.asr.dim(self.spec.layer))  # a missing context: one zero frame
        return torch.from_numpy(self.asr.get(utt, self.spec.layer))

    def __getitem__(self, i: int) -> dict:
        utt, t = self.ids[i], self.spec.type
        item = {"id": utt, "label": self.labels[i]}
        if self.spec.uses_handcrafted:
            item["feats"] = self._handcrafted(i, utt)
        if self.egemaps is not None:  # the reference's functionals: one vector per utterance
            item["egemaps"] = torch.from_numpy(self.egemaps.get(utt, "egemaps"))
        if self.spec.pooled:
            item["asr"] = self.pooled[utt]
        elif t in ("rnn", "iaan", "weighted"):
            item["asr"] = torch.from_numpy(np.concatenate(self._same_frames(utt), axis=1))
        if t == "iaan":
            prev, other = self.context[utt]
            item["prev"], item["other"] = self._context(prev), self._context(other)
        return item


def pad_sequences(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[T_i, D]`` tensors -> zero-padded ``[B, T_max, D]`` and the lengths ``[B]``."""
    return pad_sequence(seqs, batch_first=True), torch.tensor([s.shape[0] for s in seqs])


def collate(items: list[dict]) -> dict:
    batch = {"id": [x["id"] for x in items], "label": torch.tensor([x["label"] for x in items])}
    for key in ("feats", "asr", "prev", "other", "egemaps"):
        if key in items[0]:
            batch[key] = pad_sequences([x[key] for x in items])
    return batch


def model_blueprint(spec: VariantSpec, dims: dict[str, int], n_classes: int, dropout: float) -> tuple[type, dict]:
    """The SER model class of ``spec`` and its keyword arguments (a weighted sum's ``head`` is itself a
    ``(class, kwargs)`` pair): :func:`build_model` calls it, an export writes it as HyperPyYAML ``!new:``."""
    o = spec.options
    if spec.type == "baseline":
        return BiGRUBaseline, dict(input_size=dims["handcrafted"], hidden_size=spec.hidden,
                                   num_layers=o.get("num_layers", 2), n_classes=n_classes, dropout=dropout,
                                   frame_stack=o.get("frame_stack", 1))
    if spec.type == "mp":
        return FineTuneMP, dict(input_size=dims["asr"], n_classes=n_classes, dropout=dropout)
    if spec.type == "rnn":
        return FineTuneRNN, dict(input_size=dims["asr"], hidden_size=spec.hidden,
                                 bidirectional=o.get("bidirectional", True), n_classes=n_classes, dropout=dropout,
                                 frame_stack=o.get("frame_stack", 1))
    if spec.type == "progressive":
        return ProgressiveNet, dict(handcrafted_size=dims["handcrafted"], asr_size=dims["asr"], hidden_size=spec.hidden,
                                    num_layers=o.get("num_layers", 2), n_classes=n_classes, dropout=dropout,
                                    frame_stack=o.get("frame_stack", 1))
    if spec.type == "reference":
        return LinearSVMReference, dict(input_size=dims["egemaps"], n_classes=n_classes)
    if spec.type == "weighted":
        head = VariantSpec(spec.name, o.get("head", "mp"), spec.asr, spec.layer, spec.hidden, o)
        return WeightedLayerSum, dict(n_layers=dims["layers"], dim=dims["asr"],
                                      head=model_blueprint(head, dims, n_classes, dropout),
                                      layer_norm=bool(o.get("layer_norm", False)))
    return IAAN, dict(input_size=dims["asr"], hidden_size=spec.hidden, attention_size=o.get("attention_size", 16),
                      mlp_size=o.get("mlp_size", 64), n_classes=n_classes, dropout=dropout)


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
    if spec.type in ("mp", "rnn", "weighted"):
        return model(*seq("asr"))
    if spec.type == "progressive":
        return model(*seq("feats"), *seq("asr"))
    return model(*seq("asr"), *seq("prev"), *seq("other"))


# ----------------------------------------------------------------------------------------------
# Training


class PlateauAnnealer:
    """Multiply the learning rate by ``factor`` when the validation loss has not improved for
    ``patience`` epochs; ``done`` once it is below ``min_lr`` (Lakomkin 2018 stops at 1e-6)."""

    def __init__(self, lr: float, factor: float = 0.5, patience: int = 2, min_lr: float = 1e-6):
        self.lr, self.factor, self.patience, self.min_lr = lr, factor, patience, min_lr
        self.initial_lr = lr
        self.best, self.bad_epochs = float("inf"), 0

    def step(self, loss: float) -> float:
        if loss < self.best - 1e-6:
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.lr *= self.factor
                self.bad_epochs = 0
        return self.lr

    @property
    def done(self) -> bool:
        return self.lr < self.min_lr

    def state_dict(self) -> dict:
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.best, self.bad_epochs = state["lr"], state["best"], state["bad_epochs"]


def should_stop(history: list[dict], annealed_out: bool, patience: int | None, min_steps: int | None) -> bool:
    """Stop after this epoch? When the learning rate has annealed below ``min_lr`` or ``patience``
    epochs passed without a lower validation loss (None: never), but not before ``min_steps``
    optimizer steps (``history[-1]["steps"]``): a learned layer weighting needs that long to settle."""
    if min_steps and history[-1]["steps"] < min_steps:
        return False
    best_epoch = min(history, key=lambda h: h["valid_loss"])["epoch"]
    return bool(annealed_out or (patience and int(history[-1]["epoch"]) - best_epoch >= patience))


def param_groups(model: torch.nn.Module, lr: float, layer_weights_lr: float | None) -> list[dict]:
    """Adam's parameter groups: the layer logits of a weighted sum at ``layer_weights_lr`` (when given),
    everything else at ``lr``; ``initial_lr`` is what annealing scales."""
    logits = [p for n, p in model.named_parameters() if n.endswith("layer_logits")] if layer_weights_lr is not None else []
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in logits)]
    groups = [{"params": rest, "lr": lr, "initial_lr": lr}]
    if logits:
        groups.append({"params": logits, "lr": float(layer_weights_lr), "initial_lr": float(layer_weights_lr)})
    return groups


class SERBrain(sb.Brain):
    """Cross-entropy (label smoothing, optional class weights) on one variant; see module doc.

    Hundreds of small models train per experiment, so instead of SpeechBrain's checkpointer (which
    re-reads every checkpoint's metadata on each save) one file ``resume.pt`` holds the training
    state after every epoch (written atomically), and the best weights by validation loss are kept.
    A finished run deletes ``resume.pt`` (:func:`train_fold_run`); its best weights are ``model.pt``.
    """

    def compute_forward(self, batch, stage):
        return forward(self.modules.model, self.hparams.spec, batch, self.device)

    def compute_objectives(self, logits, batch, stage):
        labels = batch["label"].to(self.device)
        loss = F.cross_entropy(logits.float(), labels, weight=self.hparams.class_weights,
                               label_smoothing=self.hparams.label_smoothing)
        if stage != sb.Stage.TRAIN:
            self.outputs.append((batch["id"], labels.cpu(), logits.detach().float().softmax(-1).cpu()))
        return loss

    def on_fit_start(self):
        super().on_fit_start()
        self.best_state, self.best_loss = None, float("inf")
        path = self.hparams.resume_path
        if os.path.isfile(path):
            state = torch.load(path, map_location=self.device, weights_only=False)
            self.modules.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.hparams.annealer.load_state_dict(state["annealer"])
            self.hparams.epoch_counter.current = state["epoch"]
            self.hparams.epoch_counter.should_stop = state["should_stop"]
            self.hparams.history[:] = state["history"]
            self.best_state, self.best_loss = state["best_state"], state["best_loss"]
            logger.info("resumed %s after epoch %d", path, state["epoch"])

    def on_stage_start(self, stage, epoch=None):
        self.outputs = []
        if stage == sb.Stage.TRAIN:
            seed_all(self.hparams.seed * 1000 + int(epoch or 0))
            self.hparams.train_sampler.set_epoch(int(epoch or 1))
            self.hparams.train_set.set_epoch(int(epoch or 1))
            decay = self.hparams.annealer.lr / self.hparams.annealer.initial_lr  # annealing scales every group alike
            for group in self.optimizer.param_groups:
                group["lr"] = group.get("initial_lr", self.hparams.annealer.initial_lr) * decay  # (older resume.pt: one group)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        if stage != sb.Stage.VALID:
            return
        lr = self.hparams.annealer.lr
        self.hparams.annealer.step(stage_loss)
        steps = int(epoch) * len(self.hparams.train_sampler)  # optimizer steps so far
        self.hparams.history.append({"epoch": epoch, "steps": steps, "lr": lr, "train_loss": round(self.train_loss, 5),
                                     "valid_loss": round(stage_loss, 5), "valid_UA": round(self.balanced_accuracy(), 4)})
        if stage_loss < self.best_loss:
            self.best_loss = stage_loss
            self.best_state = {k: v.detach().clone() for k, v in self.modules.model.state_dict().items()}
        counter = self.hparams.epoch_counter
        counter.should_stop = should_stop(self.hparams.history, self.hparams.annealer.done,
                                          self.hparams.early_stop_patience, self.hparams.early_stop_min_steps)
        state = {"model": self.modules.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "annealer": self.hparams.annealer.state_dict(), "epoch": epoch, "should_stop": counter.should_stop,
                 "history": self.hparams.history, "best_state": self.best_state, "best_loss": self.best_loss}
        with atomic_path(self.hparams.resume_path) as tmp:
            torch.save(state, tmp)
        fault_point("epoch")

    def balanced_accuracy(self) -> float:
        from sklearn.metrics import balanced_accuracy_score

        labels = torch.cat([o[1] for o in self.outputs]).numpy()
        preds = torch.cat([o[2] for o in self.outputs]).argmax(-1).numpy()
        return float(balanced_accuracy_score(labels, preds))

    def predict(self, loader) -> pd.DataFrame:
        """Predictions on a loader with the current weights: id, label index, class probabilities."""
        self.modules.eval()
        self.outputs = []
        with torch.no_grad():
            for batch in loader:
                self.compute_objectives(self.compute_forward(batch, sb.Stage.TEST), batch, sb.Stage.TEST)
        ids = [i for o in self.outputs for i in o[0]]
        return pd.DataFrame({"ID": ids, "label": torch.cat([o[1] for o in self.outputs]).numpy()}), \
            torch.cat([o[2] for o in self.outputs]).numpy()


def class_weights(labels: list[int], n_classes: int, mode: str | None) -> torch.Tensor | None:
    """``balanced``: weights inversely proportional to class frequency (mean 1); else None."""
    if not mode or mode == "none":
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = counts.sum() / (n_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float)


def store_identity(store: FeatureStore) -> str:
    """A store as ``<name>/<key>``: its content key, the same wherever the experiment folder lives."""
    return "/".join(os.path.normpath(store.folder).split(os.sep)[-2:])


def run_key(spec: VariantSpec, fold: Fold, run: int, classes: list[str], inputs: SERInputs, hp: dict) -> dict:
    """What a (variant, fold, run) result is computed from: no paths, so a moved experiment is the same."""
    stores = [inputs.asr_store(spec.asr, fold.name)] if spec.asr else []
    if spec.uses_handcrafted:
        stores.append(inputs.handcrafted_store())
    if spec.type == "reference":
        stores.append(inputs.egemaps_store())
    # a weighted sum's own key does not change other variants: they keep their finished runs
    skip = {"output_folder"} | ({"layer_weights_lr"} if spec.type != "weighted" else set())
    hparams = {k: v for k, v in hp.items() if isinstance(v, (int, float, str)) and k not in skip}
    return {"variant": vars(spec), "hparams": hparams, "fold": [fold.train, fold.valid, fold.test],
            "stores": [store_identity(st) for st in stores], "classes": classes, "run": run}


def finished_predictions(staged: StagedOutputs) -> pd.DataFrame | None:
    """The ``predictions.csv`` of finished outputs of exactly ``staged``'s inputs (``attrs["finished_before"]``
    set), or None when they must be made."""
    path = os.path.join(staged.folder, "predictions.csv")
    if not (staged.done and os.path.isfile(path)):
        return None
    frame = pd.read_csv(path, keep_default_na=False, dtype={"ID": str})
    frame.attrs["finished_before"] = True
    return frame


def predictions_frame(ids: list[str], fold: str, run: int, label_of: dict, classes: list[str],
                      probs: np.ndarray) -> pd.DataFrame:
    """The rows of a ``predictions.csv``: ``ID, fold, run, true, predicted, p_<class>...`` (``probs``
    ``[len(ids), classes]``, rounded to 6 decimals)."""
    frame = pd.DataFrame({"ID": ids, "fold": fold, "run": run, "true": [label_of[i] for i in ids],
                          "predicted": [classes[i] for i in probs.argmax(axis=1)]})
    for j, c in enumerate(classes):
        frame[f"p_{c}"] = probs[:, j].round(6)
    return frame


def remove_resume_state(run_dir: str) -> None:
    """Delete a finished run's ``resume.pt`` (model, optimizer and best state: ~230 MB for a paper-size
    IAAN): only an unfinished run resumes, and ``model.pt`` holds the best weights."""
    path = os.path.join(run_dir, "resume.pt")
    if os.path.isfile(path):
        os.remove(path)


def train_fold_run(spec: VariantSpec, fold: Fold, run: int, manifest: pd.DataFrame, classes: list[str],
                   inputs: SERInputs, hp: dict, out_dir: str, device: str = "cpu") -> pd.DataFrame:
    """Train one variant on one fold with seed ``hp['seed'] + run``; write and return test predictions.

    A finished run of the same inputs is read back (``frame.attrs["finished_before"]``); otherwise the run trains in a work folder beside
    ``out_dir`` (resuming from its ``resume.pt`` after an interruption) that replaces ``out_dir`` only
    when complete (:class:`~ser_modules.fileio.StagedOutputs`), without its ``resume.pt``.
    """
    staged = StagedOutputs(out_dir, run_key(spec, fold, run, classes, inputs, hp))
    finished = finished_predictions(staged)
    if finished is not None:
        return finished
    out_dir = staged.begin()
    pred_path = os.path.join(out_dir, "predictions.csv")
    seed = int(hp["seed"]) + run
    seed_all(seed)
    # A variant may set its own epochs, batch size and learning rate (the demo gives cheap models more epochs).
    hp = {**hp, **{k: spec.options[k] for k in VARIANT_TRAINING_KEYS if k in spec.options}}
    label_of = dict(zip(manifest["ID"], manifest["emotion"]))
    index = {c: i for i, c in enumerate(classes)}
    dims = inputs.dim(spec, fold.name)
    if spec.type == "reference":
        model, test_ids, probs, history = fit_reference(spec, fold, [index[label_of[i]] for i in fold.train],
                                                        [index[label_of[i]] for i in fold.valid], inputs, dims,
                                                        len(classes), hp, seed)
        state = model.state_dict()
    else:
        model, test_ids, probs, history, state = train_neural(spec, fold, manifest, label_of, index, inputs, dims,
                                                              len(classes), hp, seed, out_dir, device)
    write_json(os.path.join(out_dir, "model.json"), {"variant": {"name": spec.name, "type": spec.type, "asr": spec.asr,
                                                                 "layer": spec.layer, "hidden": spec.hidden, **spec.options},
                                                     "dims": dims, "classes": classes, "dropout": hp["dropout"],
                                                     "fold": fold.name, "run": run, "seed": seed})
    with atomic_path(os.path.join(out_dir, "model.pt")) as tmp:
        torch.save(state, tmp)
    if hasattr(model, "layer_weights"):  # the weighted variant's learned layer weights, for stage 6
        with torch.no_grad():
            write_json(os.path.join(out_dir, "layer_weights.json"),
                       dict(zip(spec.layers, [round(float(w), 6) for w in model.layer_weights()])))
    frame = predictions_frame(test_ids, fold.name, run, label_of, classes, probs)
    write_json(os.path.join(out_dir, "history.json"), history)
    write_csv(pred_path, frame)
    remove_resume_state(out_dir)
    staged.publish()
    return frame


def labels_digest(ids: list[str], labels: list[str]) -> str:
    """What the predictions of a saved model on a corpus depend on besides the model and the stores."""
    from ser_modules.fileio import key_digest

    return key_digest({"labels": list(zip(ids, labels))})


def predict_saved_run(spec: VariantSpec, fold: str, run: int, run_dir: str, manifest: pd.DataFrame,
                      classes: list[str], inputs: SERInputs, out_dir: str, device: str = "cpu",
                      batch_size: int = 32) -> pd.DataFrame:
    """Score the saved model of one finished (variant, fold, run) (``run_dir``: ``model.json`` and
    ``model.pt`` of :func:`train_fold_run`) on the utterances of ``manifest`` (``ID``, ``emotion``, and the
    dialog context IAAN reads) stored in ``inputs``; no training. Writes ``out_dir/predictions.csv`` in the
    columns of a training run's and returns it; a rerun with the same model and stores reads it back
    (``frame.attrs["finished_before"]``)."""
    from ser_modules.fileio import file_digest, read_json

    if manifest.empty:
        raise ManifestError(f"no utterance to score the model of {run_dir} on")
    model_path = os.path.join(run_dir, "model.pt")
    if not os.path.isfile(model_path):
        raise ManifestError(f"{model_path}: no saved model of {spec.name} {fold} run{run} (finish stage 5's training)")
    stores = [inputs.asr_store(spec.asr, fold)] if spec.asr else []
    stores += [inputs.handcrafted_store()] if spec.uses_handcrafted else []
    stores += [inputs.egemaps_store()] if spec.type == "reference" else []
    ids = manifest["ID"].astype(str).tolist()
    labels = manifest["emotion"].astype(str).tolist()
    staged = StagedOutputs(out_dir, {"model": file_digest(model_path), "variant": vars(spec), "fold": fold, "run": run,
                                     "stores": [store_identity(st) for st in stores], "utterances": labels_digest(ids, labels),
                                     "classes": classes})
    finished = finished_predictions(staged)
    if finished is not None:
        return finished
    info = read_json(os.path.join(run_dir, "model.json"))
    if info["classes"] != classes:
        raise ManifestError(f"{run_dir}/model.json: classes {info['classes']}, the training corpus has {classes} "
                            "(rerun stage 5)")
    dims = inputs.dim(spec, fold)
    if dims != info["dims"]:
        raise ManifestError(f"{stores[0].folder if stores else run_dir}: inputs of {dims} values, the model of {run_dir} "
                            f"was trained on {info['dims']}")
    model = build_model(spec, info["dims"], len(classes), info["dropout"])
    model.load_state_dict(torch.load(model_path, map_location="cpu"))
    model.to(device).eval()
    index = {c: i for i, c in enumerate(classes)}
    dataset = SERDataset(spec, ids, [index[c] for c in labels], inputs, fold, manifest)
    sampler = LengthBucketBatchSampler([dataset.length(i) for i in range(len(dataset))], batch_size, shuffle=False)
    order, chunks = [], []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate):
            order += batch["id"]
            chunks.append(forward(model, spec, batch, device).float().softmax(-1).cpu().numpy())
    probs = np.concatenate(chunks)
    frame = predictions_frame(order, fold, run, dict(zip(ids, labels)), classes, probs)
    work = staged.begin()
    write_csv(os.path.join(work, "predictions.csv"), frame)
    staged.publish()
    return frame


def train_neural(spec, fold, manifest, label_of, index, inputs, dims, n_classes, hp, seed, out_dir, device):
    """Stage 5's neural training (see module doc); returns the best model, test ids, test class
    probabilities, the epoch history and the best state dict."""

    def dataset(ids, train):
        return SERDataset(spec, ids, [index[label_of[i]] for i in ids], inputs, fold.name, manifest, train, seed)

    train_set, valid_set, test_set = dataset(fold.train, True), dataset(fold.valid, False), dataset(fold.test, False)
    model = build_model(spec, dims, n_classes, hp["dropout"])
    sampler = LengthBucketBatchSampler([train_set.length(i) for i in range(len(train_set))], hp["batch_size"],
                                       sortagrad_epochs=hp["sortagrad_epochs"], seed=seed)

    def loader(ds, shuffle_sampler=None):
        bs = shuffle_sampler or LengthBucketBatchSampler([ds.length(i) for i in range(len(ds))], hp["batch_size"],
                                                         shuffle=False)
        return torch.utils.data.DataLoader(ds, batch_sampler=bs, collate_fn=collate)

    annealer = PlateauAnnealer(hp["lr"], hp["anneal_factor"], hp["anneal_patience"], hp["min_lr"])
    counter = EpochCounterWithStopper(hp["max_epochs"], hp["max_epochs"], 0, "min")
    history: list[dict] = []
    brain_hp = {"spec": spec, "seed": seed, "train_sampler": sampler, "train_set": train_set, "annealer": annealer,
                "epoch_counter": counter, "history": history, "label_smoothing": hp.get("label_smoothing", 0.0),
                "class_weights": class_weights(train_set.labels, n_classes, hp.get("class_weights")),
                "max_grad_norm": hp["max_grad_norm"], "noprogressbar": True,
                "early_stop_patience": hp.get("early_stop_patience"),
                "early_stop_min_steps": hp.get("early_stop_min_steps"),
                "resume_path": os.path.join(out_dir, "resume.pt")}
    if brain_hp["class_weights"] is not None:
        brain_hp["class_weights"] = brain_hp["class_weights"].to(device)
    # the groups are taken when the Brain builds its optimizer, from the model it has moved to its device
    brain = SERBrain(modules={"model": model},
                     opt_class=lambda params: torch.optim.Adam(param_groups(model, hp["lr"], hp.get("layer_weights_lr")),
                                                               lr=hp["lr"]),
                     hparams=brain_hp, run_opts={"device": device, "noprogressbar": True})
    brain.fit(counter, loader(train_set, sampler), loader(valid_set))
    model.load_state_dict(brain.best_state)  # the lowest validation loss is evaluated
    frame, probs = brain.predict(loader(test_set))
    return model, frame["ID"].tolist(), probs, history, brain.best_state


def fit_reference(spec, fold, train_labels, valid_labels, inputs, dims, n_classes, hp, seed):
    """The classical reference: eGeMAPS functionals, standardised, into a linear SVM (scikit-learn).

    The SVM's ``C`` is chosen from ``spec.options['C']`` (a list; default 1e-3 ... 1) by UA on the
    fold's validation speakers, then the SVM is refitted on training + validation speakers. The
    fitted scaler and SVM become a :class:`~ser_modules.models.ser.LinearSVMReference`; the class
    scores written are the softmax of its decision values (not calibrated probabilities).
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    store = inputs.egemaps_store()

    def features(ids):
        return np.stack([store.get(i, "egemaps")[0] for i in ids]).astype(np.float64)

    x_train, x_valid = features(fold.train), features(fold.valid)
    y_train, y_valid = np.asarray(train_labels), np.asarray(valid_labels)
    weight = "balanced" if hp.get("class_weights") == "balanced" else None
    grid = spec.options.get("C", [0.001, 0.01, 0.1, 1.0])
    grid = [float(c) for c in (grid if isinstance(grid, (list, tuple)) else [grid])]

    def fit(c, x, y):
        scaler = StandardScaler().fit(x)
        return scaler, LinearSVC(C=c, class_weight=weight, max_iter=20000, random_state=seed).fit(scaler.transform(x), y)

    history = []
    for c in grid if len(grid) > 1 and len(set(y_train)) > 1 else []:
        scaler, svm = fit(c, x_train, y_train)
        history.append({"C": c, "valid_UA": round(float(balanced_accuracy_score(y_valid, svm.predict(
            scaler.transform(x_valid)))), 4)})
    best = max(history, key=lambda h: (h["valid_UA"], -h["C"]))["C"] if history else grid[0]
    x_fit, y_fit = np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid])
    if len(set(y_fit)) > 1:
        scaler, svm = fit(best, x_fit, y_fit)
        coef, intercept, fitted = svm.coef_, svm.intercept_, svm.classes_
    else:  # one class in a tiny corpus's fold: nothing to separate (LinearSVC refuses), always that class
        scaler, fitted = StandardScaler().fit(x_fit), y_fit[:1]
        coef, intercept = np.zeros((1, x_fit.shape[1])), np.zeros(1)
    if len(fitted) == 2:  # a two-class SVM has one decision value d; [-d/2, d/2] has the same argmax
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    # Rows per class; a class absent from training gets a prohibitive bias and is never predicted.
    full_coef, full_intercept = np.zeros((n_classes, coef.shape[1])), np.full(n_classes, -1e4)
    full_coef[fitted], full_intercept[fitted] = coef, intercept
    model = LinearSVMReference(dims["egemaps"], n_classes)
    model.set_parameters(scaler.mean_, scaler.scale_, full_coef, full_intercept)
    with torch.no_grad():
        x_test = torch.from_numpy(features(fold.test).astype(np.float32)).unsqueeze(1)
        probs = model(x_test, torch.ones(len(fold.test), dtype=torch.long)).softmax(-1).numpy()
    history.append({"chosen_C": best, "fitted_on": "train+valid", "utterances": int(len(y_train) + len(y_valid))})
    return model, list(fold.test), probs, history
