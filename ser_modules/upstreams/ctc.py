"""An upstream fine-tuned with a CTC head on the emotion corpus's transcripts (stage 3 of
upstream_probe with ``adapt.ctc_head``), and loading it back.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ser_modules.upstreams.encoders import HFUpstream
from ser_modules.upstreams.loading import load_upstream
from ser_modules.utils.fileio import ManifestError


class CTCUpstream(nn.Module):
    """An HF upstream fine-tuned with CTC (stage 3 of upstream_probe, ``adapt.ctc_head``): a linear CTC
    head (the toolkit's character vocabulary, blank first, as DeepSpeech2) on its last layer.

    The convolutional feature encoder stays frozen (and in eval mode), as in wav2vec 2.0 fine-tuning;
    the transformer and the head train, with the model's own dropout and time masking in training
    mode. ``forward(wavs, samples) -> (logits [B, T, V], frames [B])`` is what :class:`CTCBrain` and the
    greedy CTC decoder read; ``layer_names`` / ``forward_layers`` are the upstream's (stage 4 dumps them).
    """

    is_ctc = True

    def __init__(self, upstream: HFUpstream, n_tokens: int):
        super().__init__()
        if not isinstance(upstream, HFUpstream):
            raise ManifestError(f"CTC adaptation needs a transformers upstream (a folder or an openai-whisper "
                                f"checkpoint), not a {type(upstream).__name__}")
        self.upstream = upstream
        self.layer_names, self.layer_sizes, self.win = upstream.layer_names, upstream.layer_sizes, upstream.win
        self.head = nn.Linear(upstream.layer_sizes[upstream.layer_names[-1]], int(n_tokens))
        frozen = {id(p) for p in self.feature_encoder().parameters()}
        for p in upstream.parameters():
            p.requires_grad = id(p) not in frozen

    def feature_encoder(self) -> nn.Module:
        """The convolutional front of the upstream (Whisper: its two convolutions and positions)."""
        m = self.upstream.model
        if self.upstream.whisper:
            return nn.ModuleList([m.conv1, m.conv2, m.embed_positions])
        return m.feature_extractor

    @property
    def frame_rate(self) -> float:
        return self.upstream.frame_rate

    def train(self, mode: bool = True):
        super().train(mode)  # the upstream's own train() keeps the HF model in eval mode
        if mode:
            self.upstream.model.train()
            self.feature_encoder().eval()
        return self

    def forward(self, wavs: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers_and_output(wavs, samples, [])[1]

    def layers_and_output(self, wavs: torch.Tensor, samples: torch.Tensor, layers=None) -> tuple[dict, tuple]:
        """One pass of the upstream for both ``forward_layers`` and ``forward``: ``({name: (hidden [B, T, D],
        frames [B])}, (logits [B, T, V], frames))`` (inference reads a SER layer and decodes from one pass)."""
        states = self.upstream.hidden_states(wavs, samples)
        frames = self.upstream.frames(samples).to(wavs.device)
        hidden = self.upstream.layers_of(states, samples, self.layer_names if layers is None else layers)
        return hidden, (self.head(states[-1][:, : int(frames.max())]), frames)

    def forward_layers(self, wavs: torch.Tensor, samples: torch.Tensor, layers: list[str]) -> dict:
        return self.upstream.forward_layers(wavs, samples, layers)


def load_adapted_upstream(source: str, weights: str, symbols: list[str], device: str = "cpu",
                          whisper_window: str | None = None):
    """``(CTCUpstream, front end, vocabulary)``: the upstream folder ``source`` with the adapted weights
    ``weights`` (a state dict of :class:`CTCUpstream`); ``symbols`` the vocabulary, blank first."""
    from ser_modules.data.text import CharVocabulary

    upstream, features = load_upstream(source, device, whisper_window=whisper_window)
    vocab = CharVocabulary(specials=symbols[:1], characters=symbols[1:])
    model = CTCUpstream(upstream, len(vocab))
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    except (RuntimeError, FileNotFoundError) as err:
        raise ManifestError(f"{weights}: cannot load the adapted upstream ({str(err).splitlines()[0]})") from err
    return model.to(device).eval(), features, vocab
