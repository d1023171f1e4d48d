"""Training one SER variant on one fold: the SpeechBrain ``Brain`` and its schedule.

Training follows Lakomkin 2018 / Yeh 2020: Adam, gradient-norm clipping, SortaGrad in the first epoch,
learning-rate annealing when the validation loss has not improved for ``anneal_patience`` epochs
(:class:`PlateauAnnealer`), stop when the learning rate falls below ``min_lr`` (or, optionally, after
``early_stop_patience`` epochs without a lower validation loss); the model with the lowest validation
loss is evaluated. Test speakers never enter training or model selection.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.epoch_loop import EpochCounterWithStopper

from ser_modules.data.datasets import LengthBucketBatchSampler
from ser_modules.ser.dimensional import attribute_loss, mean_ccc, output_sizes
from ser_modules.ser.finetune import (
    attach_upstream_blocks,
    finetune_param_groups,
    upstream_path,
    warmup_factor,
    weighted_sum_of,
)
from ser_modules.ser.inputs import SERDataset, collate
from ser_modules.ser.variants import build_model, fit_input_statistics, forward
from ser_modules.utils.curves import Curves
from ser_modules.utils.fileio import save_torch
from ser_modules.utils.jobs import fault_point
from ser_modules.utils.seeding import seed_all

logger = logging.getLogger(__name__)


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
        groups.append({"params": logits, "lr": float(layer_weights_lr), "initial_lr": float(layer_weights_lr),
                       "layer_weights": True})
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
        """Cross-entropy on the class logits and/or the attribute loss (1 - CCC or MSE) on the attribute outputs
        of the model's last layer (classes first); a multitask loss adds ``task_weight`` x the attribute loss."""
        labels = batch["label"].to(self.device)
        outputs, n_cls = logits.float(), self.hparams.n_class_outputs
        loss, class_loss = outputs.new_zeros(()), None
        if n_cls:
            class_loss = F.cross_entropy(outputs[:, :n_cls], labels, weight=self.hparams.class_weights,
                                         label_smoothing=self.hparams.label_smoothing)
            loss = loss + class_loss
        if self.hparams.n_attribute_outputs:
            predicted, target = outputs[:, n_cls:], batch["target"].to(self.device)
            loss = loss + self.hparams.task_weight * attribute_loss(predicted, target, self.hparams.attribute_loss)
        if stage != sb.Stage.TRAIN:
            record = {"id": batch["id"], "label": labels.cpu()}
            if n_cls:
                record.update(probs=outputs[:, :n_cls].detach().softmax(-1).cpu(), class_loss=float(class_loss))
            if self.hparams.n_attribute_outputs:
                record.update(attributes=outputs[:, n_cls:].detach().cpu(), target=batch["target"].float())
            self.outputs.append(record)
        return loss

    def validation_loss(self, stage_loss: float) -> float:
        """The loss model selection and annealing read: the mean batch loss of a categorical variant; with
        attributes, the attribute loss over all validation utterances at once (a batch's CCC is not the set's)
        plus the mean class loss of a multitask one."""
        if not self.hparams.n_attribute_outputs:
            return stage_loss
        true = torch.cat([o["target"] for o in self.outputs])
        predicted = torch.cat([o["attributes"] for o in self.outputs])
        loss = self.hparams.task_weight * float(attribute_loss(predicted, true, self.hparams.attribute_loss))
        if self.hparams.n_class_outputs:
            loss += float(np.mean([o["class_loss"] for o in self.outputs]))
        return loss

    def validation_scores(self) -> dict:
        """``valid_UA`` (classes) and ``valid_CCC`` (mean over attributes) of the epoch's validation outputs."""
        scores = {}
        if self.hparams.n_class_outputs:
            scores["valid_UA"] = round(self.balanced_accuracy(), 4)
        if self.hparams.n_attribute_outputs:
            scores["valid_CCC"] = round(mean_ccc(torch.cat([o["target"] for o in self.outputs]).numpy(),
                                                 torch.cat([o["attributes"] for o in self.outputs]).numpy()), 4)
        return scores

    def on_fit_batch_start(self, batch, should_step):
        """Warm-up of a fine-tuned upstream's blocks: their learning rate grows linearly over ``warmup_steps``
        optimizer steps (counted from the epochs done, so a resumed run warms up as an uninterrupted one)."""
        warmup = getattr(self.hparams, "warmup_steps", None)
        if not warmup:
            return
        decay = self.hparams.annealer.lr / self.hparams.annealer.initial_lr
        for group in self.optimizer.param_groups:
            if group.get("upstream_blocks"):
                group["lr"] = group["initial_lr"] * decay * warmup_factor(self.steps_done + 1, warmup)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        self.steps_done += 1

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
        # optimizer steps so far (a fine-tuned top's warm-up); a Brain driven batch by batch (the benchmark) has no epochs
        counter = getattr(self.hparams, "epoch_counter", None)
        epoch = counter.current if counter is not None else 0
        self.steps_done = epoch * len(self.hparams.train_sampler) if epoch else 0
        # x axis: the epoch; a resumed run continues after the epoch its state holds
        logdir = getattr(self.hparams, "curves_dir", None)
        self.curves = Curves(logdir, resume_step=epoch if logdir else 0)

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
        stage_loss = self.validation_loss(stage_loss)
        self.hparams.annealer.step(stage_loss)
        steps = int(epoch) * len(self.hparams.train_sampler)  # optimizer steps so far
        self.hparams.history.append({"epoch": epoch, "steps": steps, "lr": lr, "train_loss": round(self.train_loss, 5),
                                     "valid_loss": round(stage_loss, 5), **self.validation_scores()})
        self.log_curves(epoch, lr, stage_loss)
        if stage_loss < self.best_loss:
            self.best_loss = stage_loss
            self.best_state = {k: v.detach().clone() for k, v in self.modules.model.state_dict().items()}
        counter = self.hparams.epoch_counter
        counter.should_stop = should_stop(self.hparams.history, self.hparams.annealer.done,
                                          self.hparams.early_stop_patience, self.hparams.early_stop_min_steps)
        state = {"model": self.modules.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "annealer": self.hparams.annealer.state_dict(), "epoch": epoch, "should_stop": counter.should_stop,
                 "history": self.hparams.history, "best_state": self.best_state, "best_loss": self.best_loss}
        save_torch(state, self.hparams.resume_path)
        fault_point("epoch")

    def log_curves(self, epoch: int, lr: float, valid_loss: float) -> None:
        """The epoch's scalars on the curves: losses, validation UA, learning rate(s), a weighted sum's weights."""
        if not getattr(self, "curves", None) or not self.curves.on:
            return
        last = self.hparams.history[-1]
        scalars = {"loss/train": self.train_loss, "loss/valid": valid_loss, "lr": lr,
                   **{f"{k[6:]}/valid": last[k] for k in ("valid_UA", "valid_CCC") if k in last}}
        for group in self.optimizer.param_groups:  # the layer weights' and a fine-tuned upstream's blocks' own groups
            for key in ("upstream_blocks", "layer_weights"):
                if group.get(key):
                    scalars[f"lr/{key}"] = group["lr"]
        summed = weighted_sum_of(self.modules.model)
        if summed is not None:
            with torch.no_grad():
                weights = summed.layer_weights().tolist()
            scalars.update({f"layer_weight/{n}": w for n, w in zip(self.hparams.spec.summed_layers, weights)})
        self.curves.log(epoch, scalars)

    def balanced_accuracy(self) -> float:
        from sklearn.metrics import balanced_accuracy_score

        labels = torch.cat([o["label"] for o in self.outputs]).numpy()
        preds = torch.cat([o["probs"] for o in self.outputs]).argmax(-1).numpy()
        return float(balanced_accuracy_score(labels, preds))

    def predict(self, loader) -> tuple[list[str], np.ndarray | None, np.ndarray | None]:
        """Predictions on a loader with the current weights: ids, class probabilities ``[N, C]`` and
        standardised attribute values ``[N, A]`` (None for a task without them)."""
        self.modules.eval()
        self.outputs = []
        with torch.no_grad():
            for batch in loader:
                self.compute_objectives(self.compute_forward(batch, sb.Stage.TEST), batch, sb.Stage.TEST)
        ids = [i for o in self.outputs for i in o["id"]]

        def stacked(key):
            return torch.cat([o[key] for o in self.outputs]).numpy() if key in self.outputs[0] else None

        return ids, stacked("probs"), stacked("attributes")


def class_weights(labels: list[int], n_classes: int, mode: str | None) -> torch.Tensor | None:
    """``balanced``: weights inversely proportional to class frequency (mean 1); else None."""
    if not mode or mode == "none":
        return None
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = counts.sum() / (n_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float)


def train_neural(spec, fold, manifest, label_of, index, inputs, dims, n_classes, hp, seed, out_dir, device,
                 targets: dict | None = None):
    """Stage 5's neural training (see module doc); ``targets``: utterance -> standardised attribute values
    of a variant that predicts them. Returns the best model, test ids, test class probabilities (None
    without classes), standardised test attribute predictions (None without attributes), the epoch
    history and the best state dict."""

    def dataset(ids, train):
        return SERDataset(spec, ids, [index[label_of[i]] for i in ids], inputs, fold.name, manifest, train, seed,
                          targets)

    n_attributes = len(next(iter(targets.values()))) if targets else 0
    n_class_outputs, n_attribute_outputs = output_sizes(spec.task, n_classes, n_attributes)
    train_set, valid_set, test_set = dataset(fold.train, True), dataset(fold.valid, False), dataset(fold.test, False)
    model = build_model(spec, dims, n_classes, hp["dropout"], n_attributes)
    if spec.finetuned:  # the upstream's top blocks, initialised with its weights
        attach_upstream_blocks(model, upstream_path(inputs.stores_json, spec.asr, fold.name))
    if spec.options.get("asr_norm", "none") == "train":  # standardised with the training utterances' statistics
        fit_input_statistics(model, torch.cat([train_set.pooled[i] for i in train_set.ids]))
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
                "n_class_outputs": n_class_outputs, "n_attribute_outputs": n_attribute_outputs,
                "warmup_steps": hp.get("warmup_steps") if spec.finetuned else None,
                "attribute_loss": hp.get("attribute_loss", "ccc"), "task_weight": float(hp.get("task_weight", 1.0)),
                "max_grad_norm": hp["max_grad_norm"], "noprogressbar": True,
                "early_stop_patience": hp.get("early_stop_patience"),
                "early_stop_min_steps": hp.get("early_stop_min_steps"),
                "resume_path": os.path.join(out_dir, "resume.pt"), "curves_dir": hp.get("curves_dir")}
    if brain_hp["class_weights"] is not None:
        brain_hp["class_weights"] = brain_hp["class_weights"].to(device)
    # the groups are taken when the Brain builds its optimizer, from the model it has moved to its device
    brain = SERBrain(modules={"model": model},
                     opt_class=lambda params: torch.optim.Adam(
                         finetune_param_groups(model, hp["lr"], hp.get("upstream_lr"), hp.get("layer_weights_lr"))
                         or param_groups(model, hp["lr"], hp.get("layer_weights_lr")), lr=hp["lr"]),
                     hparams=brain_hp, run_opts={"device": device, "noprogressbar": True})
    try:
        brain.fit(counter, loader(train_set, sampler), loader(valid_set))
    finally:  # a writer holds a thread until closed: a stage-5 worker runs hundreds of trainings
        if getattr(brain, "curves", None) is not None:
            brain.curves.close()
    model.load_state_dict(brain.best_state)  # the lowest validation loss is evaluated
    test_ids, probs, attributes = brain.predict(loader(test_set))
    return model, test_ids, probs, attributes, history, brain.best_state
