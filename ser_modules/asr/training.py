"""Training an ASR model with its hparams (:func:`fit_asr`): run options, the length-bucketed batches of
each data-parallel process, and the best checkpoint by validation CER.
"""

from __future__ import annotations

import logging
import math
import os

import speechbrain as sb

from ser_modules.data.datasets import LengthBucketBatchSampler
from ser_modules.utils.fileio import write_json

logger = logging.getLogger(__name__)


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
    from ser_modules.data.datasets import asr_dataset, dataset_durations, loader_kwargs

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
    try:
        brain.fit(hparams["epoch_counter"], train, valid, train_loader_kwargs=loader_kwargs(sampler, workers),
                  valid_loader_kwargs=valid_kwargs)
    finally:  # a writer holds a thread until closed: a worker running many trainings must not keep them all
        if getattr(brain, "curves", None) is not None:
            brain.curves.close()
    return brain


def load_best(checkpointer, key: str = "CER") -> str | None:
    """Load the checkpoint with the lowest ``key`` into the checkpointer's recoverables; return its path."""
    ckpt = checkpointer.recover_if_possible(min_key=key)
    return None if ckpt is None else str(ckpt.path)
