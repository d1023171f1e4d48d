"""The ASR side of inference (:mod:`ser_modules.infer`): the ASR/upstream models the fold models read,
each loaded once, and the transcript decoder.

The transcript comes from the first fold's ASR model (the pretrained one, or that fold's adapted one),
decoded with the experiment's own ``beam_size`` and ``decode_ctc_weight`` (:func:`decoding_keys`) unless
they are given."""

from __future__ import annotations

import os

import torch

from ser_modules.asr.decoding import Transcriber
from ser_modules.asr.saved_models import load_asr_model
from ser_modules.inference.experiment import decoding_keys
from ser_modules.utils.fileio import ManifestError


class AsrModels:
    """The ASR/upstream models of an inference run, each loaded once on ``device``, and their input
    features of a batch of signals."""

    def __init__(self, device: str):
        self.device = device
        self._models: dict[str, tuple] = {}

    def model(self, path: str) -> tuple:
        """``(model, features, vocab, info)`` of the ASR model at ``path`` (:func:`load_asr_model`)."""
        if path not in self._models:
            self._models[path] = load_asr_model(path, self.device)
        return self._models[path]

    def features(self, wavs: list[torch.Tensor], path: str) -> tuple:
        """``(model, vocab, feats, frames)``: the ASR model at ``path`` and its features of the signals."""
        model, features, vocab, _ = self.model(path)
        lengths = torch.tensor([len(w) for w in wavs], device=self.device)
        padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(self.device)
        return (model, vocab, *features(padded, lengths))


class TranscriptDecoder:
    """The transcript of signals: the first fold's ASR model (``path``; None without one) decoded by
    ``decoder`` (greedy, beam or joint) with the experiment's decoding ``keys`` (``{key: (value, source)}``)."""

    def __init__(self, root: str, fold_asr: str | None, asr: AsrModels, decoder: str = "greedy",
                 beam_size: int | None = None, ctc_weight: float | None = None):
        self.root, self.asr, self.decoder = root, asr, decoder
        path = fold_asr or os.path.join(root, "asr", "model.pt")
        self.path = path if os.path.isfile(path) else None
        self.keys = decoding_keys(root, self.path)
        if beam_size is not None:
            self.keys["beam_size"] = (int(beam_size), "--beam-size")
        if ctc_weight is not None:
            self.keys["decode_ctc_weight"] = (float(ctc_weight), "--ctc-weight")
        beam, source = self.keys["beam_size"]
        if beam < 1:
            raise ManifestError(f"beam_size {beam} ({source}) must be at least 1")
        self._transcriber = None
        self._check_decoder()

    def _check_decoder(self) -> None:
        """:class:`ManifestError` for a decoder the transcript model lacks (before any file is read)."""
        if self.decoder == "greedy" or self.path is None:
            return
        transcriber = self.transcriber()
        if transcriber is not None and self.decoder not in transcriber.methods:
            raise ManifestError(f"{self.path}: --decoder {self.decoder} needs a LAS with a CTC head; this "
                                f"{type(transcriber.model).__name__} has none (use --decoder greedy or beam)")

    def transcriber(self) -> Transcriber | None:
        """The transcript ASR's decoder, built once with the decoding keys (None for an upstream, which has
        no vocabulary)."""
        if self._transcriber is None:
            model, _, vocab, _ = self.asr.model(self.path)
            if vocab is None:
                self._transcriber = False
            else:
                beam, (weight, weight_src) = self.keys["beam_size"][0], self.keys["decode_ctc_weight"]
                try:
                    self._transcriber = Transcriber(model, vocab, beam_size=int(beam), ctc_weight=float(weight))
                except ValueError as err:
                    raise ManifestError(f"{self.path}: {err} (decode_ctc_weight from {weight_src})") from err
        return self._transcriber or None

    def active(self) -> Transcriber | None:
        """The transcriber when there is a transcript model with a vocabulary, else None."""
        return self.transcriber() if self.path is not None else None

    @torch.no_grad()
    def transcribe(self, wavs: list[torch.Tensor]) -> list[str]:
        """Transcripts of 16 kHz mono signals by the transcript ASR alone ("" without one)."""
        transcriber = self.active()
        if transcriber is None:  # no ASR model, or a pretrained upstream without an output vocabulary
            return [""] * len(wavs)
        _, _, feats, frames = self.asr.features(wavs, self.path)
        return transcriber(feats, frames, self.decoder)

    @torch.no_grad()
    def texts(self, transcriber: Transcriber, wavs: list[torch.Tensor], decoded: tuple | None) -> list[str]:
        """Transcripts of a batch from ``decoded`` (the decoder's input, taken from the SER forward of
        the transcript model), or from the transcript model's own forward when SER did not read it."""
        if decoded is None:  # SER reads no layer of the transcript model (e.g. the baseline): its own forward
            _, _, feats, frames = self.asr.features(wavs, self.path)
            decoded = transcriber.encode(feats, frames)
        return transcriber.decode(*decoded, self.decoder)

    def summary(self) -> str:
        """Which model transcribed, with which decoder and keys (and where the keys came from)."""
        if self.path is None:
            return "transcripts: none (no ASR model in the experiment)"
        transcriber = self.transcriber()
        if transcriber is None:
            return "transcripts: none (a pretrained upstream has no vocabulary)"
        model = f"{type(transcriber.model).__name__} {os.path.relpath(self.path, self.root)}"
        if self.decoder == "greedy":
            return f"transcripts: greedy decoding ({model})"
        wanted = ["beam_size"] + (["decode_ctc_weight"] if self.decoder == "joint" else [])
        by_source: dict[str, list[str]] = {}
        for key in wanted:
            value, source = self.keys[key]
            by_source.setdefault(source, []).append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
        keys = "; ".join(" and ".join(items) + (" (default)" if src == "default" else f" from {src}")
                         for src, items in by_source.items())
        name = {"beam": "beam search", "joint": "joint CTC/attention beam search"}[self.decoder]
        return f"transcripts: {name}, {keys} ({model})"
