"""SpeechBrain ``Brain`` classes training the ASR models, and ASR evaluation (WER/CER tables).

:class:`CTCBrain` trains DeepSpeech2 with CTC; :class:`LASBrain` trains Listen-Attend-Spell with
label-smoothed cross-entropy (plus optional CTC on the listener). Both compute features on the
device, re-seed every epoch from ``(seed, epoch)`` so a resumed run repeats an uninterrupted one,
keep the best checkpoint by validation CER next to the latest, and stop when validation CER has
not improved for ``patience`` epochs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random

import numpy as np
import pandas as pd
import speechbrain as sb
from speechbrain.augment.time_domain import SpeedPerturb
import torch
import torch.nn.functional as F
from speechbrain.utils import epoch_loop
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from speechbrain.utils.metric_stats import ErrorRateStats
from tqdm import tqdm

from ser_modules.data import LengthBucketBatchSampler
from ser_modules.decoding import Transcriber, ctc_greedy
from ser_modules.fileio import TrainingDiverged, atomic_path, write_csv, write_json
from ser_modules.jobs import fault_point

logger = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


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


def absolute_lengths(relative: torch.Tensor, max_len: int) -> torch.Tensor:
    """SpeechBrain's relative lengths -> integer lengths."""
    return torch.round(relative * max_len).long().clamp(min=1)


def append_error_stats(cer: ErrorRateStats, wer: ErrorRateStats, ids, hyps: list[str], refs: list[str]) -> None:
    """Add hypotheses to character- and word-level error statistics."""
    cer.append(ids, [list(h) for h in hyps], [list(r) for r in refs])
    wer.append(ids, [h.split() for h in hyps], [r.split() for r in refs])


@register_checkpoint_hooks
class RandomState:
    """The random generators' state (torch, CUDA, NumPy, Python) saved with every checkpoint. An
    epoch starts from a seed of its own; a run resumed from a checkpoint taken inside an epoch takes
    back the state of that moment (:meth:`restore_pending`, at its first batch), so speed
    perturbation and dropout draw what an uninterrupted run draws."""

    def __init__(self):
        self.pending = None

    @mark_as_saver
    def _save(self, path):
        torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        self.pending = None if end_of_epoch else torch.load(path, weights_only=False)

    def restore_pending(self) -> None:
        if self.pending is None:
            return
        state, self.pending = self.pending, None
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["random"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


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
        self.on_fit_batch_end(batch, outputs, loss, should_step)
        return loss.detach().cpu()

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


# ----------------------------------------------------------------------------------------------
# Evaluation tables


ASR_RESULT_COLUMNS = ["model", "stage", "corpus", "split", "decoder", "WER", "CER", "utterances", "checkpoint"]


@torch.no_grad()
def evaluate_asr(model: torch.nn.Module, features: torch.nn.Module, dataset, vocab, device: str, out_dir: str,
                 tag: str, methods=("greedy",), batch_size: int = 16, beam_size: int = 10,
                 ctc_weight: float = 0.5, num_workers: int = 0) -> dict[str, dict]:
    """Transcribe ``dataset`` (an :func:`ser_modules.data.asr_dataset`) with each decoding method
    (``joint`` weights CTC by ``ctc_weight``); write per-utterance alignments ``wer_<tag>_<method>.txt``
    and return ``{method: {WER, CER, n}}``."""
    from ser_modules.data import dataset_durations, make_loader

    model.eval()
    transcriber = Transcriber(model, vocab, beam_size=beam_size, ctc_weight=ctc_weight)
    sampler = LengthBucketBatchSampler(dataset_durations(dataset), batch_size, shuffle=False)
    loader = make_loader(dataset, sampler, num_workers)
    results = {}
    for method in methods:
        ids, refs, hyps = [], [], []
        for batch in tqdm(loader, desc=f"decoding {tag} ({method})", leave=False):
            wavs, rel = batch.sig
            wavs = wavs.to(device)
            feats, frames = features(pad_to_multiple(wavs, PAD_QUANTUM), absolute_lengths(rel.to(device), wavs.shape[1]))
            hyps += transcriber(feats, frames, method)
            ids += batch.id
            refs += batch.transcript
        path = os.path.join(out_dir, f"wer_{tag}_{method}.txt")
        results[method] = error_rates(ids, refs, hyps, path)
        write_csv(os.path.join(out_dir, f"hyp_{tag}_{method}.csv"),
                  pd.DataFrame({"ID": ids, "reference": refs, "hypothesis": hyps}))
        logger.info("%s %s: WER %.2f CER %.2f (%d utterances) -> %s", tag, method, results[method]["WER"],
                    results[method]["CER"], len(ids), path)
    return results


def error_rates(ids: list[str], refs: list[str], hyps: list[str], alignments_path: str | None = None) -> dict:
    """WER and CER (percent) of hypotheses against references; optionally write the word alignments."""
    cer, wer = ErrorRateStats(), ErrorRateStats()
    append_error_stats(cer, wer, ids, hyps, refs)
    if alignments_path:
        with atomic_path(alignments_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            wer.write_stats(f)
    return {"WER": round(wer.summarize("error_rate"), 2), "CER": round(cer.summarize("error_rate"), 2),
            "utterances": len(ids)}


def update_asr_results(path: str, rows: list[dict], scope: dict | None = None) -> pd.DataFrame:
    """Insert or replace rows (key: model, stage, corpus, split, decoder) of ``asr_results.csv``.

    ``scope`` (column -> value) names the rows a stage owns: those of them not in ``rows`` are
    removed, so a decoder or adaptation stage no longer configured leaves no stale score behind."""
    key = ["model", "stage", "corpus", "split", "decoder"]
    old = pd.read_csv(path, keep_default_na=False, dtype=str) if os.path.isfile(path) else pd.DataFrame(columns=ASR_RESULT_COLUMNS)
    if scope:
        owned = pd.Series(True, index=old.index)
        for column, value in scope.items():
            owned &= old[column] == str(value)
        old = old[~owned]
    new = pd.DataFrame(rows, columns=ASR_RESULT_COLUMNS).astype(str)
    merged = pd.concat([old[~old.set_index(key).index.isin(new.set_index(key).index)], new], ignore_index=True)
    write_csv(path, merged)
    return merged


def score_pretrained(hparams: dict, model: torch.nn.Module, features: torch.nn.Module, device: str, out_dir: str,
                     corpus: str, checkpoint: str | None) -> tuple[list[dict], dict]:
    """Stage 2's scores of the pretrained model on the ASR corpus's dev and test splits, with each of
    ``hparams["decoders"]``: ``(rows of asr_results.csv, {split: {decoder: scores}})``."""
    from ser_modules.data import asr_dataset

    vocab = hparams["vocab"]
    bos, eos = getattr(model, "bos_index", None), getattr(model, "eos_index", None)
    rows, summary = [], {}
    for split, csv in (("dev", hparams["valid_csv"]), ("test", hparams["test_csv"])):
        res = evaluate_asr(model, features, asr_dataset(csv, vocab, bos, eos), vocab, device, out_dir, split,
                           hparams["decoders"], hparams.get("eval_batch_size", 16), hparams.get("beam_size", 10),
                           hparams.get("decode_ctc_weight", 0.5), hparams.get("num_workers", 0))
        for method, r in res.items():
            rows.append({"model": hparams["model_name"], "stage": "pretrained", "corpus": corpus, "split": split,
                         "decoder": method, **r, "checkpoint": os.path.join("asr", checkpoint) if checkpoint else ""})
        summary[split] = res
    return rows, summary


# ----------------------------------------------------------------------------------------------
# Training driver shared by stage 2 (pretraining) and stage 3 (adaptation)


def run_options(device: str, precision: str = "fp32", noprogressbar: bool = False) -> dict:
    """SpeechBrain run options for ``device``; DDP uses gloo on CPU and NCCL on GPU."""
    return {"device": device, "precision": precision, "distributed_backend": "gloo" if device == "cpu" else "nccl",
            "noprogressbar": noprogressbar}


def train_batches(durations: list[float], hparams: dict, world: int) -> LengthBucketBatchSampler:
    """The training batch sampler of one data-parallel process, logging the effective global batch.

    ``batch_size`` is the global batch in utterances, split over the ``world`` processes
    (``ceil(batch_size / world)`` each, so the global batch is rounded up to a multiple of ``world``);
    ``batch_seconds`` instead fills each process's batch with up to that much padded audio
    (ESPnet's ``batch_bins``), so a GPU's batch does not shrink as GPUs are added."""
    common = {"shuffle": True, "sortagrad_epochs": hparams.get("sortagrad_epochs", 1), "seed": hparams["seed"]}
    seconds = hparams.get("batch_seconds")
    if seconds:
        sampler = LengthBucketBatchSampler(durations, max_seconds=float(seconds), **common)
        per_batch = len(durations) / max(1, len(sampler))
        logger.info("batches of at most %.0f s of padded audio per process: %d batches of %.1f utterances on average "
                    "(%.0f s of speech); %d process(es): an effective global batch of %.1f utterances", seconds,
                    len(sampler), per_batch, sum(durations) / max(1, len(sampler)), world, per_batch * world)
        return sampler
    per_process = max(1, math.ceil(hparams["batch_size"] / world))
    logger.info("batch_size %d over %d process(es): %d utterances each per step, an effective global batch of %d",
                hparams["batch_size"], world, per_process, per_process * world)
    return LengthBucketBatchSampler(durations, per_process, **common)


def fit_asr(hparams: dict, run_opts: dict, brain_class=None, start_json: str | None = None) -> sb.Brain:
    """Train ``hparams['model']`` on ``train_csv`` / ``valid_csv``, resuming from the checkpointer
    (mid-epoch at the next batch after a checkpoint taken inside an epoch).
    With ``start_json``, the model is first scored on ``valid_csv`` (``brain.start_stats``), written to
    ``start_json`` before any update, so that a run interrupted later resumes knowing its start.

    Hparams used: ``brain_class``, ``vocab``, ``model``, ``opt_class``, ``checkpointer``,
    ``epoch_counter``, ``batch_size`` or ``batch_seconds``, ``sortagrad_epochs``, ``seed``,
    ``num_workers`` (audio decoding processes per training process), ``train_csv``, ``valid_csv``
    and what the Brain needs (see :class:`ASRBrain`).
    """
    from ser_modules.data import asr_dataset, dataset_durations, loader_kwargs

    sb.utils.distributed.ddp_init_group(run_opts)
    vocab, model = hparams["vocab"], hparams["model"]
    bos = getattr(model, "bos_index", None)
    eos = getattr(model, "eos_index", None)
    train = asr_dataset(hparams["train_csv"], vocab, bos, eos)
    valid = asr_dataset(hparams["valid_csv"], vocab, bos, eos)
    sampler = train_batches(dataset_durations(train), hparams, int(os.environ.get("WORLD_SIZE", 1)))
    hparams["train_sampler"] = sampler
    # The sampler orders batches itself: keep SpeechBrain's DDP wrapper from shuffling them again.
    hparams.setdefault("sorting", "ascending")
    brain_class = brain_class or hparams["brain_class"]
    brain = brain_class(modules={"model": model}, opt_class=hparams["opt_class"], hparams=hparams,
                        run_opts=run_opts, checkpointer=hparams["checkpointer"])
    eval_sampler = LengthBucketBatchSampler(dataset_durations(valid), hparams.get("eval_batch_size", hparams["batch_size"]),
                                            shuffle=False)
    workers = hparams.get("num_workers", 0)
    valid_kwargs = loader_kwargs(eval_sampler, workers)
    if start_json:  # the validation scores of the model before any update (no checkpoint exists yet)
        brain.evaluate(valid, test_loader_kwargs=dict(valid_kwargs), progressbar=False)  # evaluate edits its kwargs
        brain.start_stats = dict(brain.last_stats)
        write_json(start_json, brain.start_stats)
    brain.fit(hparams["epoch_counter"], train, valid, train_loader_kwargs=loader_kwargs(sampler, workers),
              valid_loader_kwargs=valid_kwargs)
    return brain


def load_best(checkpointer, key: str = "CER") -> str | None:
    """Load the checkpoint with the lowest ``key`` into the checkpointer's recoverables; return its path."""
    ckpt = checkpointer.recover_if_possible(min_key=key)
    return None if ckpt is None else str(ckpt.path)
