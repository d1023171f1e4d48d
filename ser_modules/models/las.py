"""Listen, Attend and Spell of Yeh et al. 2020 (layout of the authors' TensorFlow ``char_ver`` code,
with real LSTM cells).

Listener: ``MFCC-39 [B, T, 39]`` -> BLSTM -> FC(tanh) -> 2 x (:class:`PyramidalBLSTM` -> FC(tanh)),
256 units per direction, FC 1024 -> 512, time reduced 4x. Speller: SpeechBrain's
``AttentionalRNNDecoder`` (2-layer LSTM, content-based attention ``u^T tanh(W_h h + W_s s)``
masked over padded encoder frames), input ``[previous-token embedding; previous context]``.
An optional CTC head on the listener output gives joint CTC-attention training.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from speechbrain.nnet.linear import Linear as SBLinear
from speechbrain.nnet.RNN import AttentionalRNNDecoder

from ser_modules.features import length_mask
from ser_modules.models import requested_layers
from ser_modules.models.rnn import MaskedRNN


def concat_frame_pairs(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, T, D]`` -> ``[B, ceil(T/2), 2D]``: frames 2t and 2t+1 side by side.

    An odd length is padded with one zero frame, so the new length is ``ceil(L/2)``.
    """
    b, t, d = x.shape
    if t % 2:
        x = torch.nn.functional.pad(x, (0, 0, 0, 1))
        t += 1
    return x.reshape(b, t // 2, 2 * d), (lengths + 1).div(2, rounding_mode="floor")


class PyramidalBLSTM(nn.Module):
    """A BLSTM followed by frame-pair concatenation (halves time).

    ``x [B, T, input_size]``, ``lengths [B]`` -> ``[B, ceil(T/2), 4 * hidden_size]``, ``ceil(lengths/2)``.
    Padded frames are zero before pairing, so pairing with padding equals padding to even length.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.blstm = MaskedRNN("lstm", input_size, hidden_size, bidirectional=True)
        self.output_size = 4 * hidden_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return concat_frame_pairs(self.blstm(x, lengths), lengths)


class Listener(nn.Module):
    """BLSTM -> FC -> pBLSTM -> FC -> pBLSTM -> FC (every FC with tanh); named layer outputs.

    Layer names: ``blstm`` (after the first FC, full frame rate), ``pblstm1`` (T/2), ``pblstm2`` (T/4).
    The FC layers are plain ``nn.Linear`` modules ``fc0``, ``fc1``, ``fc2`` so that SVD factorisation
    can replace them (:mod:`ser_modules.models.lowrank`).
    """

    layer_names = ["blstm", "pblstm1", "pblstm2"]

    def __init__(self, input_size: int = 39, hidden_size: int = 256, fc_size: int = 512, dropout: float = 0.0):
        super().__init__()
        self.blstm = MaskedRNN("lstm", input_size, hidden_size, bidirectional=True)
        self.fc0 = nn.Linear(2 * hidden_size, fc_size)
        self.pblstm1 = PyramidalBLSTM(fc_size, hidden_size)
        self.fc1 = nn.Linear(self.pblstm1.output_size, fc_size)
        self.pblstm2 = PyramidalBLSTM(fc_size, hidden_size)
        self.fc2 = nn.Linear(self.pblstm2.output_size, fc_size)
        self.dropout = nn.Dropout(dropout)
        self.output_size = fc_size
        self.layer_sizes = dict.fromkeys(self.layer_names, fc_size)

    def _fc(self, fc: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.tanh(fc(x))) * length_mask(lengths, x.shape[1]).unsqueeze(-1)

    def forward_layers(self, feats: torch.Tensor, lengths: torch.Tensor, layers=None) -> dict:
        """``{name: (hidden [B, T', fc_size], lengths [B])}`` for the requested layers (default all)."""
        wanted, last = requested_layers(layers, self.layer_names, "listener")
        out = {}
        x = self._fc(self.fc0, self.blstm(feats, lengths), lengths)
        out["blstm"] = (x, lengths)
        for i, (pblstm, fc) in enumerate(((self.pblstm1, self.fc1), (self.pblstm2, self.fc2)), 1):
            if i > last:
                break
            x, lengths = pblstm(x, lengths)
            x = self._fc(fc, x, lengths)
            out[f"pblstm{i}"] = (x, lengths)
        return {name: out[name] for name in wanted}

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_layers(feats, lengths, ["pblstm2"])["pblstm2"]

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            lengths = (lengths + 1).div(2, rounding_mode="floor")
        return lengths


class ListenAttendSpell(nn.Module):
    """Listener + attention speller (+ optional CTC head).

    Vocabulary convention: index 0 = ``<blank>`` (CTC blank and padding), 1 = ``<sos>``, 2 = ``<eos>``,
    then the characters (:class:`ser_modules.text.CharVocabulary` with these specials).
    """

    def __init__(self, n_input: int = 39, listener_hidden: int = 256, fc_size: int = 512, speller_hidden: int = 512,
                 speller_layers: int = 2, attention_dim: int = 512, embedding_dim: int = 256, n_symbols: int = 31,
                 ctc_head: bool = False, dropout: float = 0.0, bos_index: int = 1, eos_index: int = 2):
        super().__init__()
        self.listener = Listener(n_input, listener_hidden, fc_size, dropout)
        self.embedding = nn.Embedding(n_symbols, embedding_dim)
        self.speller = AttentionalRNNDecoder(
            rnn_type="lstm", attn_type="content", hidden_size=speller_hidden, attn_dim=attention_dim,
            num_layers=speller_layers, enc_dim=fc_size, input_size=embedding_dim, dropout=dropout,
        )
        self.output = SBLinear(input_size=speller_hidden, n_neurons=n_symbols)
        self.ctc_output = nn.Linear(fc_size, n_symbols) if ctc_head else None
        self.bos_index, self.eos_index, self.n_symbols = bos_index, eos_index, n_symbols
        self.layer_names = list(Listener.layer_names)
        self.layer_sizes = dict(self.listener.layer_sizes)

    def set_dropout(self, p: float) -> None:
        """Change every dropout probability (fine-tuning uses 0.1)."""
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
        self.speller.dropout = p

    def forward_layers(self, feats, lengths, layers=None) -> dict:
        return self.listener.forward_layers(feats, lengths, layers)

    def spell(self, enc: torch.Tensor, enc_lengths: torch.Tensor, tokens_bos: torch.Tensor,
              teacher_forcing: float = 1.0) -> torch.Tensor:
        """Speller logits ``[B, L, n_symbols]`` for decoder inputs ``tokens_bos [B, L]`` (``<sos>`` first).

        With ``teacher_forcing < 1`` each step feeds the model's own previous prediction instead of
        the reference token with probability ``1 - teacher_forcing`` (scheduled sampling).
        """
        self.speller.attn.reset()
        c = enc.new_zeros(enc.shape[0], self.speller.attn_dim)
        hs, logits = None, []
        inp = tokens_bos[:, 0]
        for t in range(tokens_bos.shape[1]):
            dec_out, hs, c, _ = self.speller.forward_step(self.embedding(inp), hs, c, enc, enc_lengths)
            step = self.output(dec_out)
            logits.append(step)
            if t + 1 < tokens_bos.shape[1]:
                inp = tokens_bos[:, t + 1]
                if teacher_forcing < 1.0:
                    own = torch.rand(inp.shape[0], device=inp.device) >= teacher_forcing
                    inp = torch.where(own, step.argmax(dim=-1).detach(), inp)
        return torch.stack(logits, dim=1)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, tokens_bos: torch.Tensor,
                teacher_forcing: float = 1.0) -> dict:
        """Returns ``logits [B, L, V]``, ``enc [B, T/4, fc]``, ``enc_lengths`` and, with a CTC head,
        ``ctc_logits [B, T/4, V]``."""
        enc, enc_lengths = self.listener(feats, lengths)
        out = {"enc": enc, "enc_lengths": enc_lengths,
               "logits": self.spell(enc, enc_lengths, tokens_bos, teacher_forcing)}
        if self.ctc_output is not None:
            out["ctc_logits"] = self.ctc_output(enc)
        return out
