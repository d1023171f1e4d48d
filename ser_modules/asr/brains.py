"""SpeechBrain ``Brain`` classes training the ASR models.

:class:`CTCBrain` trains DeepSpeech2 with CTC; :class:`LASBrain` trains Listen-Attend-Spell with
label-smoothed cross-entropy (plus optional CTC on the listener). Both compute features on the
device, re-seed every epoch from ``(seed, epoch)`` so a resumed run repeats an uninterrupted one,
keep the best checkpoint by validation CER next to the latest, and stop when validation CER has
not improved for ``patience`` epochs (:class:`EpochCounterWithStopper`).
"""

from __future__ import annotations

import json
import logging

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.augment.time_domain import SpeedPerturb
from speechbrain.utils import epoch_loop
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.metric_stats import ErrorRateStats

from ser_modules.asr.decoding import Transcriber, ctc_greedy
from ser_modules.data.datasets import absolute_lengths
from ser_modules.utils.curves import Curves
from ser_modules.utils.fileio import TrainingDiverged
from ser_modules.utils.jobs import fault_point
from ser_modules.utils.seeding import RandomState, seed_all

logger = logging.getLogger(__name__)


# Batches are padded to a multiple of half a second: with a few distinct tensor shapes, CPU memory
# does not fragment (with every length distinct, glibc's heap grew and steps slowed by half).
PAD_QUANTUM = 8000


def pad_to_multiple(x: torch.Tensor, quantum: int, dim: int = 1) -> torch.Tensor:
    """Zero-pad ``dim`` of ``x`` up to a multiple of ``quantum``."""
    extra = -x.shape[dim] % quantum
    if not extra:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, extra]
    return torch.nn.functional.pad(x, pad)


def append_error_stats(cer: ErrorRateStats, wer: ErrorRateStats, ids, hyps: list[str], refs: list[str]) -> None:
    """Add hypotheses to character- and word-level error statistics."""
    cer.append(ids, [list(h) for h in hyps], [list(r) for r in refs])
    wer.append(ids, [h.split() for h in hyps], [r.split() for r in refs])


@register_checkpoint_hooks
class EpochCounterWithStopper(epoch_loop.EpochCounterWithStopper):
    """SpeechBrain's epoch counter with early stopping, whose stopping state is checkpointed.

    SpeechBrain 1.1's class does not register its own save/load hooks, so its checkpoints keep only
    the epoch: a resumed run forgot its best epoch and score and could stop too early or too late.
    Here they are saved; on recovery the stop decision is taken again with the current ``limit_to_stop``
    (patience), so raising the patience (or ``limit``) continues a run that had stopped."""

    @mark_as_saver
    def _save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"current_epoch": self.current, "best_epoch": self.best_limit, "best_score": self.best_score}, f)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        state = json.loads(text) if text.startswith("{") else {"current_epoch": int(text)}  # SpeechBrain's own file
        self.current = int(state["current_epoch"]) - (0 if end_of_epoch else 1)
        self.best_limit = int(state.get("best_epoch", self.best_limit))
        self.best_score = float(state.get("best_score", self.best_score))
        self.should_stop = self.current > self.limit_warmup and self.best_limit > 0 and \
            self.current - self.best_limit >= self.limit_to_stop


def all_ranks_finite(loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every data-parallel process (each must skip the same batches)."""
    finite = torch.isfinite(loss.detach()).all().to(torch.int32).reshape(1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())


class ASRBrain(sb.Brain):
    """Shared training logic; subclasses implement ``compute_forward`` and the loss.

    Expected ``hparams``: ``features`` (module), ``vocab``, ``seed``, ``lr``, ``lr_decay``,
    ``epoch_counter`` (``EpochCounterWithStopper``), ``train_sampler`` (set by the stage).
    Optional: ``ckpt_interval_minutes`` / ``ckpt_interval_steps`` (SpeechBrain's checkpoints inside
    an epoch, from which a resumed run continues at the next batch).

    A training batch whose loss is not finite (on any process) is skipped: no gradient, no update (its
    batch-norm statistics undone), a warning naming its utterances and a count per epoch, so one bad
    batch cannot poison the weights. More than ``nonfinite_patience`` (SpeechBrain's run option) such
    batches in a row mean the weights diverged: training stops with one line (:class:`TrainingDiverged`).
    """

    FRONT_END_KEYS = ("features", "speed_perturb", "spec_augment")  # modules of hparams run on the batches

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Only ``modules`` go to the device with the Brain: the front end's buffers (the STFT window,
        # the MFCC filterbank) must follow, or a GPU batch meets a CPU window in torch.stft.
        for key in self.FRONT_END_KEYS:
            module = getattr(self.hparams, key, None)
            if isinstance(module, torch.nn.Module):
                module.to(self.device)
            if isinstance(module, SpeedPerturb):  # it resamples on its own `device` (CPU by default)
                module.device = self.device

    def on_fit_start(self):
        self.random_state = RandomState()
        if self.checkpointer is not None:  # optional: checkpoints written before it existed still load
            self.checkpointer.add_recoverable("random_state", self.random_state, optional_load=True)
        super().on_fit_start()  # recovers the latest checkpoint, if any
        # the curves' x axis is the optimizer step (restored with the checkpoint): a resumed run continues its curves
        self.curves = Curves(getattr(self.hparams, "curves_dir", None), resume_step=self.optimizer_step)

    def fit_batch(self, batch):
        """SpeechBrain's training step, except that a non-finite loss skips the batch (see class doc)."""
        if hasattr(self, "random_state"):
            # Resumed inside this epoch: the generators of the checkpoint's moment, taken back here and not
            # when the epoch starts, because making the epoch's batch iterator draws from torch's generator.
            self.random_state.restore_pending()
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        # The forward pass updates batch-norm statistics (torch's or the models' masked ones, which are not
        # _BatchNorm): a skipped batch must leave every buffer of the model as it was.
        buffers = [(b, b.detach().clone()) for b in self.modules.buffers()]
        with self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            if not all_ranks_finite(loss):
                with torch.no_grad():
                    for buffer, before in buffers:
                        buffer.copy_(before)
                self.skipped_batches += 1
                self.skipped_in_a_row += 1
                logger.warning("epoch %s: the loss of a training batch is not finite (utterances %s): batch skipped, "
                               "no update (%d skipped in this epoch)", self.hparams.epoch_counter.current,
                               ", ".join(list(batch.id)[:4]) + (", ..." if len(batch.id) > 4 else ""),
                               self.skipped_batches)
                self.zero_grad(set_to_none=True)
                if self.skipped_in_a_row > self.nonfinite_patience:  # every batch fails: the weights diverged
                    raise TrainingDiverged(f"epoch {self.hparams.epoch_counter.current}: {self.skipped_in_a_row} "
                                           "training batches in a row had a non-finite loss: training diverged (a "
                                           "lower learning rate may help); the checkpoints written so far stay")
                return loss.detach().cpu()  # not finite: SpeechBrain's running average leaves it out
            self.skipped_in_a_row = 0
            scaled_loss = self.scaler.scale(loss / self.grad_accumulation_factor)
            scaled_loss.backward()
        if should_step:
            self.optimizers_step()
            self.log_step(loss)
        self.on_fit_batch_end(batch, outputs, loss, should_step)
        return loss.detach().cpu()

    def log_step(self, loss: torch.Tensor) -> None:
        """Every ``curves_every_steps`` optimizer steps (a key; none: per epoch only), the batch's loss and the
        learning rate on the curves: long epochs show before they end."""
        every = getattr(self.hparams, "curves_every_steps", None)
        curves = getattr(self, "curves", None)
        if every and curves is not None and curves.on and self.optimizer_step % int(every) == 0:
            curves.log(self.optimizer_step, {"step/loss_train": float(loss.detach()),
                                             "step/lr": self.optimizer.param_groups[0]["lr"]})

    def _save_intra_epoch_ckpt(self):
        super()._save_intra_epoch_ckpt()
        fault_point("step_checkpoint")

    def features(self, batch, stage):
        wavs, rel = batch.sig
        wavs = wavs.to(self.device)
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "speed_perturb", None) is not None:
            wavs = self.hparams.speed_perturb(wavs)  # one speed per batch: relative lengths unchanged
        samples = absolute_lengths(rel.to(self.device), wavs.shape[1])
        feats, frames = self.hparams.features(pad_to_multiple(wavs, PAD_QUANTUM), samples)
        if stage == sb.Stage.TRAIN and getattr(self.hparams, "spec_augment", None) is not None:
            feats = self.hparams.spec_augment(feats, frames)  # masks inside each utterance's frames
        return feats, frames

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            seed_all(self.hparams.seed * 1000 + int(epoch or 0))
            self.skipped_batches = self.skipped_in_a_row = 0
            sampler = getattr(self.hparams, "train_sampler", None)
            if sampler is not None:
                sampler.set_epoch(int(epoch or 1))
            lr = self.hparams.lr / (self.hparams.lr_decay ** (int(epoch or 1) - 1))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        else:
            self.cer_stats = ErrorRateStats()
            self.wer_stats = ErrorRateStats()

    def record_hypotheses(self, ids, hyps: list[str], refs: list[str]) -> None:
        append_error_stats(self.cer_stats, self.wer_stats, ids, hyps, refs)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            if self.skipped_batches:
                logger.warning("epoch %s: %d training batch(es) with a non-finite loss skipped", epoch,
                               self.skipped_batches)
            return
        stats = {"loss": round(stage_loss, 4), "CER": round(self.cer_stats.summarize("error_rate"), 2),
                 "WER": round(self.wer_stats.summarize("error_rate"), 2)}
        self.last_stats = stats
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats={"loss": round(self.train_loss, 4), "skipped_batches": getattr(self, "skipped_batches", 0)},
                valid_stats=stats)
            if getattr(self, "curves", None) is not None:
                self.curves.log(self.optimizer_step, {
                    "epoch": epoch, "lr": lr, "loss/train": self.train_loss, "loss/valid": stage_loss,
                    "CER/valid": stats["CER"], "WER/valid": stats["WER"],
                    "skipped_batches/train": getattr(self, "skipped_batches", 0)})
            key = getattr(self.hparams, "select_on", "CER")  # the validation error rate that picks checkpoints
            self.hparams.epoch_counter.update_metric(stats[key])
            self.checkpointer.save_and_keep_only(meta={"CER": stats["CER"], "WER": stats["WER"], "epoch": epoch},
                                                 min_keys=[key], num_to_keep=1)
            fault_point("epoch")


class CTCBrain(ASRBrain):
    """DeepSpeech2 + CTC (loss summed over each utterance, averaged over the batch, as deepspeech.pytorch)."""

    def compute_forward(self, batch, stage):
        feats, frames = self.features(batch, stage)
        logits, out_lengths = self.modules.model(feats, frames)
        return logits, out_lengths

    def compute_objectives(self, predictions, batch, stage):
        logits, out_lengths = predictions
        tokens, token_rel = batch.tokens
        tokens = tokens.to(self.device)
        token_lengths = absolute_lengths(token_rel.to(self.device), tokens.shape[1])
        log_probs = logits.float().log_softmax(dim=-1).transpose(0, 1)  # [T, B, V]
        loss = F.ctc_loss(log_probs, tokens, out_lengths, token_lengths, blank=0, reduction="sum",
                          zero_infinity=True) / tokens.shape[0]
        if stage != sb.Stage.TRAIN:
            self.record_hypotheses(batch.id, ctc_greedy(logits, out_lengths, self.hparams.vocab), batch.transcript)
        return loss


class LASBrain(ASRBrain):
    """Listen-Attend-Spell: label-smoothed cross-entropy on the speller (teacher forcing probability
    ``teacher_forcing``), plus ``ctc_weight`` x CTC on the listener when the model has a CTC head."""

    def compute_forward(self, batch, stage):
        feats, frames = self.features(batch, stage)
        tokens_bos, _ = batch.tokens_bos
        tf = self.hparams.teacher_forcing if stage == sb.Stage.TRAIN else 1.0
        out = self.modules.model(feats, frames, tokens_bos.to(self.device), teacher_forcing=tf)
        if stage != sb.Stage.TRAIN:
            out["feats"], out["frames"] = feats, frames
        return out

    def compute_objectives(self, predictions, batch, stage):
        tokens_eos, eos_rel = batch.tokens_eos
        tokens_eos = tokens_eos.to(self.device)
        log_probs = predictions["logits"].float().log_softmax(dim=-1)
        loss = sb.nnet.losses.nll_loss(log_probs, tokens_eos, length=eos_rel.to(self.device),
                                       label_smoothing=self.hparams.label_smoothing)
        weight = getattr(self.hparams, "ctc_weight", 0.0)
        if weight > 0 and "ctc_logits" not in predictions:
            raise ValueError(f"ctc_weight is {weight} but the model has no CTC head: set ctc_head: True")
        if weight > 0:
            tokens, token_rel = batch.tokens
            tokens = tokens.to(self.device)
            ctc = F.ctc_loss(predictions["ctc_logits"].float().log_softmax(-1).transpose(0, 1), tokens,
                             predictions["enc_lengths"], absolute_lengths(token_rel.to(self.device), tokens.shape[1]),
                             blank=0, reduction="mean", zero_infinity=True)
            loss = (1 - weight) * loss + weight * ctc
        if stage != sb.Stage.TRAIN:  # validation decodes with valid_decoder (greedy unless configured)
            hyps = self.transcriber(predictions["feats"], predictions["frames"],
                                    getattr(self.hparams, "valid_decoder", "greedy"))
            self.record_hypotheses(batch.id, hyps, batch.transcript)
        return loss

    def on_stage_start(self, stage, epoch=None):
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.transcriber = Transcriber(self.modules.model.module if hasattr(self.modules.model, "module")
                                           else self.modules.model, self.hparams.vocab,
                                           beam_size=getattr(self.hparams, "beam_size", 10),
                                           ctc_weight=getattr(self.hparams, "decode_ctc_weight", 0.5))
