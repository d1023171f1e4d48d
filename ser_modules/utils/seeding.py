"""Random generators: seeding them all at once, and their state saved with every checkpoint."""

from __future__ import annotations

import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


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
