"""Greedy and beam-search transcription for the CTC (DeepSpeech2) and attention (LAS) models.

Beam search uses SpeechBrain's searchers: ``CTCBeamSearcher`` for CTC and ``S2SRNNBeamSearcher`` /
``S2SRNNGreedySearcher`` for the LAS speller (SpeechBrain's ``AttentionalRNNDecoder``). A LAS with a
CTC head also decodes ``joint``: beam search on ``(1 - w) x attention + w x CTC prefix`` scores
(Watanabe et al. 2017, ESPnet's default), which keeps the speller from looping or stopping early,
the typical failures of attention decoding on mismatched speech.
"""

from __future__ import annotations

import torch
from speechbrain.decoders.ctc import CTCBeamSearcher
from speechbrain.decoders.scorer import ScorerBuilder
from speechbrain.decoders.seq2seq import S2SRNNBeamSearcher, S2SRNNGreedySearcher

from ser_modules.asr.ctc_prefix import CTCScorer
from ser_modules.data.text import CharVocabulary
from ser_modules.models.ds2 import DeepSpeech2
from ser_modules.models.las import ListenAttendSpell


def ctc_greedy(logits: torch.Tensor, lengths: torch.Tensor, vocab: CharVocabulary, blank: int = 0) -> list[str]:
    """Best path: argmax per frame, repeats collapsed, blanks dropped, spaces at the ends and runs of
    spaces (two space symbols split by a blank) reduced as in the references. ``logits [B, T, V]``."""
    best = logits.argmax(dim=-1).cpu()
    texts = []
    for seq, n in zip(best, lengths.cpu().tolist()):
        seq = seq[:n].tolist()
        ids = [s for i, s in enumerate(seq) if s != blank and (i == 0 or s != seq[i - 1])]
        texts.append(" ".join(vocab.decode(ids).split()))  # a space emitted at an edge or twice is no word boundary
    return texts


METHODS = ("greedy", "beam", "joint")


class Transcriber:
    """Transcribe feature batches with a trained model: ``method`` is ``greedy``, ``beam`` or (a LAS
    with a CTC head) ``joint``, a beam search weighting the CTC prefix score by ``ctc_weight``."""

    def __init__(self, model: torch.nn.Module, vocab: CharVocabulary, beam_size: int = 10,
                 max_decode_ratio: float = 1.0, ctc_weight: float = 0.5):
        self.model, self.vocab, self.beam_size = model, vocab, beam_size
        self._joint = None
        self.methods = ("greedy", "beam")  # what this model decodes; a LAS with a CTC head adds joint
        self.is_ctc = isinstance(model, DeepSpeech2) or getattr(model, "is_ctc", False)  # or a CTCUpstream
        if not self.is_ctc and not isinstance(model, ListenAttendSpell):
            raise TypeError(f"cannot transcribe with a {type(model).__name__}")
        if self.is_ctc:
            self._beam = CTCBeamSearcher(blank_index=0, vocab_list=vocab.symbols, space_token=" ",
                                         beam_size=beam_size)
        else:
            common = dict(bos_index=model.bos_index, eos_index=model.eos_index, min_decode_ratio=0.0,
                          max_decode_ratio=max_decode_ratio)
            self._greedy = S2SRNNGreedySearcher(model.embedding, model.speller, model.output, **common)
            self._beam = S2SRNNBeamSearcher(model.embedding, model.speller, model.output, beam_size=beam_size,
                                            **common)
            if model.ctc_output is not None:
                if not 0.0 < ctc_weight < 1.0:
                    raise ValueError(f"joint decoding needs a CTC weight in (0, 1), got {ctc_weight}")
                # The CTC head's blank is index 0 (<pad>), as in training (asr_training.LASBrain).
                scorer = ScorerBuilder(full_scorers=[CTCScorer(model.ctc_output, 0, model.eos_index)],
                                       weights={"ctc": ctc_weight})
                self._joint = S2SRNNBeamSearcher(model.embedding, model.speller, model.output,
                                                 beam_size=beam_size, scorer=scorer, **common)
                self.methods = METHODS

    def check(self, method: str) -> None:
        """ValueError unless this model decodes with ``method``."""
        if method not in METHODS:
            raise ValueError(f"unknown decoding method {method!r}: one of {', '.join(METHODS)}")
        if method not in self.methods:
            raise ValueError(f"joint CTC/attention decoding needs a LAS with a CTC head; this "
                             f"{type(self.model).__name__} has none (decode with greedy or beam)")

    @torch.no_grad()
    def __call__(self, feats: torch.Tensor, frames: torch.Tensor, method: str = "greedy") -> list[str]:
        self.check(method)
        return self.decode(*self.encode(feats, frames), method)

    @torch.no_grad()
    def encode(self, feats: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's forward pass that :meth:`decode` reads, ``(out, lengths)``: the CTC logits
        ``[B, T, V]`` of a CTC model, the listener output ``[B, T/4, D]`` of a LAS."""
        if self.is_ctc:
            return self.model(feats, frames)
        return self.model.listener(feats, frames)

    @torch.no_grad()
    def encode_with_layers(self, feats: torch.Tensor, frames: torch.Tensor, layers: list[str]) -> tuple[dict, tuple]:
        """One forward pass for both the hidden ``layers`` (``{name: (hidden, lengths)}``, as the model's
        ``forward_layers`` gives them) and what :meth:`decode` reads (as :meth:`encode` gives it)."""
        if hasattr(self.model, "layers_and_output"):  # DeepSpeech2, ListenAttendSpell, a CTC-adapted upstream
            return self.model.layers_and_output(feats, frames, layers)
        raise TypeError(f"{type(self.model).__name__} gives no hidden layers with its decoder input in one pass")

    @torch.no_grad()
    def decode(self, out: torch.Tensor, lengths: torch.Tensor, method: str = "greedy") -> list[str]:
        """Transcripts of a batch from what :meth:`encode` gave: ``out`` (CTC logits or listener output,
        padded) and its valid ``lengths``."""
        self.check(method)
        if self.is_ctc:
            if method == "greedy":
                return ctc_greedy(out, lengths, self.vocab)
            log_probs = out.float().log_softmax(dim=-1)
            hyps = self._beam(log_probs, lengths.float() / out.shape[1])
            return [h[0].text.strip() if h else "" for h in hyps]
        enc = out[:, : int(lengths.max())]  # no all-padding frames: the CTC scorer masks up to the longest
        searcher = {"greedy": self._greedy, "beam": self._beam, "joint": self._joint}[method]
        hyps, *_ = searcher(enc, lengths.float() / enc.shape[1])
        return [self.vocab.decode([int(t) for t in h if int(t) != self.model.eos_index]) for h in hyps]
