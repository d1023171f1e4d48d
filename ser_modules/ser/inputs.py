"""SER inputs: the stage-4 stores of every variant and fold, and the datasets over them.

:class:`SERInputs` opens the stores of ``stores_<protocol>.json`` once per process; a
:class:`SERDataset` reads one split's utterances from them per item (frame sequences) or once
(the mean-pooled vectors MP-x and Progressive net-x read), so memory does not grow with the number of
jobs a worker runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.nn.utils.rnn import pad_sequence

from ser_modules.data.datasets import read_utterance
from ser_modules.dump.corpus_dump import read_stores
from ser_modules.dump.store import FeatureStore
from ser_modules.ser.variants import VariantSpec
from ser_modules.utils.fileio import ManifestError

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
        self.stores_json = stores_json  # beside it the experiment's saved upstreams (fine-tuned tops read their blocks)
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
    the pooled vectors stage 4 wrote (:meth:`~ser_modules.dump.store.FeatureStore.mean_pooled`).
    """

    def __init__(self, spec: VariantSpec, ids: list[str], labels: list[int], inputs: SERInputs, fold: str,
                 context: pd.DataFrame | None = None, train: bool = False, seed: int = 0,
                 targets: dict[str, np.ndarray] | None = None):
        self.spec, self.ids, self.labels, self.inputs, self.fold = spec, ids, labels, inputs, fold
        self.targets = targets  # utterance -> its standardised attribute values [A] (dimensional tasks)
        self.train, self.seed, self.epoch = train, seed, 1
        self.asr = inputs.asr_store(spec.asr, fold) if spec.asr else None
        self.hand = inputs.handcrafted_store() if spec.uses_handcrafted else None
        self.copies = inputs.handcrafted_copies() if self.hand is not None else []
        self.egemaps = inputs.egemaps_store() if spec.type == "reference" else None
        self.pooled = {}
        if spec.pooled:  # the masked mean of one frame is the frame itself; weighted: the layers side by side
            vectors = np.concatenate([self.asr.mean_pooled(n, ids, normalised=spec.normalised) for n in spec.layers],
                                     axis=1)  # [len(ids), n_layers * D]
            self.pooled = dict(zip(ids, torch.from_numpy(vectors).unsqueeze(1)))  # [1, D] each
        if spec.reads_waveform:
            if context is None or "wav" not in context.columns:
                raise ManifestError(f"variant {spec.name}: finetune_input: waveform needs the manifest's wav column")
            rows = context.set_index("ID")
            self.audio = {i: tuple(rows.loc[i].get(c, "") for c in ("wav", "seg_start", "seg_end")) for i in ids}
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
        # a normalised weighted sum read frames before it had a pooled path: bucketed by frames, its batches stay the same
        if self.spec.type in ("rnn", "iaan") or self.spec.normalised or (self.asr is not None and not self.spec.pooled):
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
        if self.targets is not None:
            item["target"] = torch.as_tensor(self.targets[utt], dtype=torch.float32)
        if self.spec.uses_handcrafted:
            item["feats"] = self._handcrafted(i, utt)
        if self.egemaps is not None:  # the reference's functionals: one vector per utterance
            item["egemaps"] = torch.from_numpy(self.egemaps.get(utt, "egemaps"))
        if self.spec.reads_waveform:  # the signal itself; the model runs the upstream
            item["wav"] = read_utterance(*self.audio[utt])
        elif self.spec.pooled:
            item["asr"] = self.pooled[utt]
        elif t in ("rnn", "iaan", "weighted") or self.spec.finetuned:  # frames
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
    if "target" in items[0]:  # attribute values [B, A]
        batch["target"] = torch.stack([x["target"] for x in items])
    for key in ("feats", "asr", "prev", "other", "egemaps", "wav"):
        if key in items[0]:
            batch[key] = pad_sequences([x[key] for x in items])
    return batch
