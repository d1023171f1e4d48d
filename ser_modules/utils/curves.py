"""Training curves a researcher can watch while a run trains: TensorBoard event files.

Every training writes its scalars to ``<exp>/tensorboard/<stage>/<model>/...`` (:func:`curves_dir`):
stage 2's ASR pretraining, stage 3's adaptation per fold and stage, stage 5 per variant, fold and run.
``tensorboard --logdir <exp>/tensorboard`` shows them live. The text logs (``train_log.txt``,
``history.json``) are written as before; the curves come on top.

- Only the main process writes (under DDP the other ranks hold no writer).
- A resumed training passes the step it resumes after as ``resume_step``: the writer then marks every
  later step of the killed run as purged, so TensorBoard shows each step once (the events the killed run
  wrote after its last checkpoint are dropped, the resumed run writes them again).
- ``tensorboard`` is an optional extra (``pip install -e '.[tensorboard]'``); without it one log line says
  the curves are off and how to turn them on, and training goes on.
"""

from __future__ import annotations

import logging
import math
import os

logger = logging.getLogger(__name__)

CURVES_FOLDER = "tensorboard"

_told_off = False  # the "curves are off" line is said once per process


def curves_dir(exp_dir: str, stage: str, *parts: str) -> str:
    """``<exp>/tensorboard/<stage>/<parts...>``: where one training's event files go."""
    return os.path.join(exp_dir, CURVES_FOLDER, stage, *[str(p) for p in parts if p not in (None, "")])


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _main_process() -> bool:
    from speechbrain.utils.distributed import if_main_process

    return if_main_process()


class Curves:
    """The scalars of one training in ``logdir``: :meth:`log` ``(step, {tag: value})``. A no-op when
    ``logdir`` is None, in a process other than the main one, or without the ``tensorboard`` package."""

    def __init__(self, logdir: str | None, resume_step: int = 0):
        global _told_off
        self.writer = None
        if logdir is None or not _main_process():
            return
        if not tensorboard_available():
            if not _told_off:
                logger.info("training curves off: pip install tensorboard (or pip install -e '.[tensorboard]') "
                            "to watch them with tensorboard --logdir <exp>/%s", CURVES_FOLDER)
                _told_off = True
            return
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(logdir, exist_ok=True)
        # purge_step: TensorBoard hides the folder's earlier events at steps after the one resumed from (those a
        # killed run wrote after its last checkpoint; all of them for a run that starts over), so no step shows twice
        self.writer = SummaryWriter(logdir, purge_step=int(resume_step or 0) + 1)

    @property
    def on(self) -> bool:
        return self.writer is not None

    def log(self, step: int, scalars: dict) -> None:
        """One value per tag at ``step`` (None and non-finite values are left out), flushed at once, so a
        watcher sees it while the training goes on."""
        if self.writer is None:
            return
        for tag, value in scalars.items():
            if value is None:
                continue
            value = float(value)
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, int(step))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_curves(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files in ``logdir`` as TensorBoard shows them (purged
    steps dropped); needs the ``tensorboard`` package."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
