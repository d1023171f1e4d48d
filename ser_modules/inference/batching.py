"""One batch of inference (:mod:`ser_modules.infer`): the fold models' inputs of a batch of 16 kHz mono
signals computed as stage 5's collate does, their class probabilities averaged over the folds, and the
transcripts. Each ASR model runs once per batch: folds reading the same model share its layers, and when
SER reads the transcript model, the same forward also gives the transcript decoder its input."""

from __future__ import annotations

import os

import numpy as np
import torch

from ser_modules.data.features import EGeMAPSFunctionals, minimum_samples
from ser_modules.inference.asr import AsrModels, TranscriptDecoder
from ser_modules.inference.loading import FoldModel
from ser_modules.ser.dimensional import output_sizes, split_outputs
from ser_modules.ser.inputs import collate
from ser_modules.ser.variants import VariantSpec, forward, pool_layers
from ser_modules.utils.hparams import stage_values


class BatchPredictor:
    """Class probabilities (fold models averaged) and transcripts of batches of signals for one variant."""

    def __init__(self, root: str, folds: list[FoldModel], spec: VariantSpec, handcrafted: torch.nn.Module | None,
                 asr: AsrModels, transcript: TranscriptDecoder, device: str):
        self.root, self.folds, self.spec, self.handcrafted = root, folds, spec, handcrafted
        self.asr, self.transcript, self.device = asr, transcript, device
        self.egemaps = EGeMAPSFunctionals() if spec.type == "reference" else None
        self._dtype = self._min_samples = None

    def store_dtype(self) -> torch.dtype:
        """The precision stage 4 stored representations in (inference rounds the same way)."""
        if self._dtype is None:
            path = os.path.join(self.root, "dump", "hyperparams.yaml")
            self._dtype = getattr(torch, stage_values(path).get("dtype", "float16") if os.path.isfile(path) else "float16")
        return self._dtype

    def min_samples(self) -> int:
        """The shortest signal the variant's front ends hear: one analysis window of each."""
        if self._min_samples is None:
            fronts = [self.handcrafted] + ([self.asr.model(f.asr_path)[1] for f in self.folds if f.asr_path])
            self._min_samples = max(minimum_samples(f) for f in fronts if f is not None) if any(fronts) else 0
        return self._min_samples

    @torch.no_grad()
    def predict(self, wavs: list[torch.Tensor], contexts: list[tuple] | None = None,
                transcripts: bool = True) -> tuple[np.ndarray, list[str]]:
        """Class probabilities ``[N, n_classes]`` then, for a variant with attributes, their values in the
        original scale (``[N, C + A]``; ``C`` 0 for a dimensional variant), fold models averaged, and transcripts
        ("" without ``transcripts`` or a transcript model) of a batch; ``contexts``: per signal, the signals
        of its dialog context turns (IAAN) or ``(None, None)``."""
        transcriber = self.transcript.active() if transcripts else None
        probs, batches, decoded = [], {}, None
        for fold in self.folds:
            if fold.asr_path not in batches:  # folds reading the same ASR model share their inputs
                decode = transcriber is not None and fold.asr_path == self.transcript.path
                batches[fold.asr_path], out = self.inputs(wavs, fold, contexts, decode)
                decoded = out if decode else decoded
            outputs = forward(fold.ser, self.spec, batches[fold.asr_path], self.device).float()
            probs.append(self.fold_outputs(fold, outputs))
        texts = self.transcript.texts(transcriber, wavs, decoded) if transcriber is not None else [""] * len(wavs)
        return np.mean(probs, axis=0), texts

    def fold_outputs(self, fold: FoldModel, outputs: torch.Tensor) -> np.ndarray:
        """One fold model's last-layer ``outputs [N, C + A]`` as class probabilities (softmax) then attribute
        values in their original scale (the fold's training statistics)."""
        n_cls = output_sizes(self.spec.task, outputs.shape[1] - len(fold.attributes), len(fold.attributes))[0]
        parts = split_outputs(outputs, n_cls, fold.scaler)
        return np.concatenate([p for p in parts if p is not None], axis=1)

    @torch.no_grad()
    def inputs(self, wavs: list[torch.Tensor], fold: FoldModel, contexts: list[tuple] | None = None,
               decode: bool = False) -> tuple[dict, tuple | None]:
        """The model inputs of a batch of signals for one fold model (as in stage 5's collate), and with
        ``decode`` what the transcript decoder reads of the signals, from the same ASR forward (else None)."""
        items = [{"id": str(i), "label": 0} for i in range(len(wavs))]
        self._add_signal_features(items, wavs)
        if self.spec.reads_waveform:  # the fold model runs its frozen upstream itself
            for item, wav in zip(items, wavs):
                item["wav"] = wav
            return collate(items), None
        decoded = self._add_asr_layers(items, wavs, fold, contexts, decode) if self.spec.asr else None
        return collate(items), decoded

    def _add_signal_features(self, items: list[dict], wavs: list[torch.Tensor]) -> None:
        """The features computed from the signal itself: the baseline's handcrafted ones, the reference's eGeMAPS."""
        if self.spec.uses_handcrafted:
            for item, wav in zip(items, wavs):
                item["feats"] = self.handcrafted(wav)
        if self.egemaps is not None:
            for item, wav in zip(items, wavs):
                item["egemaps"] = self.egemaps(wav)

    def _add_asr_layers(self, items: list[dict], wavs: list[torch.Tensor], fold: FoldModel,
                        contexts: list[tuple] | None, decode: bool) -> tuple | None:
        """Each item's ASR layer (mean-pooled for a pooled variant) and, for IAAN, the layers of its context
        turns (``contexts``, or Nones); returns the transcript decoder's input with ``decode``."""
        contexts = contexts or [(None, None)] * len(wavs)
        extra = [c for pair in contexts for c in pair if c is not None] if self.spec.type == "iaan" else []
        seqs, decoded = self.layer(wavs + extra, fold.asr_path, len(wavs) if decode else 0)
        context_seqs = iter(seqs[len(wavs):])
        for i, item in enumerate(items):
            seq = seqs[i]
            item["asr"] = pool_layers(self.spec, seq) if self.spec.pooled else seq
            if self.spec.type == "iaan":  # a missing context turn is one zero frame, as in training
                zero = torch.zeros(1, seq.shape[1])
                prev, other = contexts[i]
                item["prev"] = next(context_seqs) if prev is not None else zero
                item["other"] = next(context_seqs) if other is not None else zero
        return decoded

    def layer(self, wavs: list[torch.Tensor], path: str, n_decode: int = 0) -> tuple[list[torch.Tensor], tuple | None]:
        """The SER variant's ASR layer of each signal (a weighted variant's layers side by side), rounded
        to the precision of the stage-4 stores; with ``n_decode``, also what the transcript decoder reads
        of the first ``n_decode`` signals (``(out, lengths)``, cropped to their longest), from the same
        forward of the model (else None)."""
        model, _, feats, frames = self.asr.features(wavs, path)
        decoded = None
        if n_decode:
            out, (dec, dec_lengths) = self.transcript.transcriber().encode_with_layers(feats, frames, self.spec.layers)
            dec_lengths = dec_lengths[:n_decode]
            decoded = (dec[:n_decode, : int(dec_lengths.max())], dec_lengths)
        else:
            out = model.forward_layers(feats, frames, self.spec.layers)
        hidden = torch.cat([out[n][0].to(self.store_dtype()).float() for n in self.spec.layers], dim=-1)
        hlen = out[self.spec.layers[0]][1]
        return [hidden[i, : int(hlen[i])].cpu() for i in range(len(wavs))], decoded
