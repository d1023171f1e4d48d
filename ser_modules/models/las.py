"""Listen, Attend and Spell of Yeh et al. 2020 (layout of the authors' TensorFlow ``char_ver`` code,
with real LSTM cells).

Listener (paper, section 2.2): ``MFCC-39 [B, T, 39]`` -> BLSTM -> 2 x (:class:`PyramidalBLSTM` ->
FC(tanh)), 256 units per direction, FC 1024 -> 512, time reduced 4x. The authors' code also has an
FC(tanh) after the first BLSTM: ``blstm_fc=True`` adds it (off in the paper config). Speller: SpeechBrain's
``AttentionalRNNDecoder`` (2-layer LSTM, content-based attention ``u^T tanh(W_h h + W_s s)``
masked over padded encoder frames), input ``[previous-token embedding; previous context]``.
An optional CTC head on the listener output gives joint CTC-attention training.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from speechbrain.nnet.linear import Linear as SBLinear
from speechbrain.nnet.RNN import AttentionalRNNDecoder

from ser_modules.data.features import length_mask, stack_frames
from ser_modules.models import requested_layers
from ser_modules.models.activations import tanh
from ser_modules.models.flops import linear_flops, module_linear_flops, total
from ser_modules.models.rnn import MaskedRNN


def _lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.nn.LSTMCell``'s update from its gate pre-activations ``[B, 4H]`` (order i, f, g, o)."""
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class PyramidalBLSTM(nn.Module):
    """A BLSTM followed by frame-pair concatenation (:func:`~ser_modules.data.features.stack_frames`, halves time).

    ``x [B, T, input_size]``, ``lengths [B]`` -> ``[B, ceil(T/2), 4 * hidden_size]``, ``ceil(lengths/2)``.
    Padded frames are zero before pairing, so pairing with padding equals padding to even length.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.blstm = MaskedRNN("lstm", input_size, hidden_size, bidirectional=True)
        self.output_size = 4 * hidden_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stack_frames(self.blstm(x, lengths), lengths, 2)


class Listener(nn.Module):
    """BLSTM [-> FC] -> pBLSTM -> FC -> pBLSTM -> FC (every FC with tanh); named layer outputs.

    Layer names: ``blstm`` (full frame rate; after ``fc0`` when ``blstm_fc``), ``pblstm1`` (T/2),
    ``pblstm2`` (T/4). The FC layers after the pyramidal BLSTMs, ``fc1`` and ``fc2`` (1024 -> 512 at
    paper size), are the ones SVD factorisation replaces (:mod:`ser_modules.models.lowrank`).
    """

    layer_names = ["blstm", "pblstm1", "pblstm2"]

    def __init__(self, input_size: int = 39, hidden_size: int = 256, fc_size: int = 512, dropout: float = 0.0,
                 blstm_fc: bool = False):
        super().__init__()
        self.blstm = MaskedRNN("lstm", input_size, hidden_size, bidirectional=True)
        self.fc0 = nn.Linear(2 * hidden_size, fc_size) if blstm_fc else None
        blstm_size = fc_size if blstm_fc else 2 * hidden_size
        self.pblstm1 = PyramidalBLSTM(blstm_size, hidden_size)
        self.fc1 = nn.Linear(self.pblstm1.output_size, fc_size)
        self.pblstm2 = PyramidalBLSTM(fc_size, hidden_size)
        self.fc2 = nn.Linear(self.pblstm2.output_size, fc_size)
        self.dropout = nn.Dropout(dropout)
        self.output_size = fc_size
        self.layer_sizes = {"blstm": blstm_size, "pblstm1": fc_size, "pblstm2": fc_size}

    def _fc(self, fc: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.dropout(tanh(fc(x))) * length_mask(lengths, x.shape[1]).unsqueeze(-1)

    def forward_layers(self, feats: torch.Tensor, lengths: torch.Tensor, layers=None) -> dict:
        """``{name: (hidden [B, T', D], lengths [B])}`` for the requested layers (default all)."""
        wanted, last = requested_layers(layers, self.layer_names, "listener")
        out = {}
        x = self.blstm(feats, lengths)
        x = self._fc(self.fc0, x, lengths) if self.fc0 is not None else self.dropout(x)
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

    def forward_flops(self, frames) -> int:
        """Forward FLOPs for utterances of ``frames`` feature frames each (:mod:`~ser_modules.models.flops`)."""
        frames = torch.as_tensor(frames).reshape(-1)
        half = (frames + 1).div(2, rounding_mode="floor")
        quarter = self.output_lengths(frames)
        flops = self.blstm.forward_flops(frames)
        if self.fc0 is not None:
            flops += module_linear_flops(self.fc0, total(frames))
        flops += self.pblstm1.blstm.forward_flops(frames) + module_linear_flops(self.fc1, total(half))
        flops += self.pblstm2.blstm.forward_flops(half) + module_linear_flops(self.fc2, total(quarter))
        return flops


class ListenAttendSpell(nn.Module):
    """Listener + attention speller (+ optional CTC head).

    Vocabulary convention: index 0 = ``<blank>`` (CTC blank and padding), 1 = ``<sos>``, 2 = ``<eos>``,
    then the characters (:class:`ser_modules.data.text.CharVocabulary` with these specials).
    """

    def __init__(self, n_input: int = 39, listener_hidden: int = 256, fc_size: int = 512, speller_hidden: int = 512,
                 speller_layers: int = 2, attention_dim: int = 512, embedding_dim: int = 256, n_symbols: int = 31,
                 ctc_head: bool = False, dropout: float = 0.0, bos_index: int = 1, eos_index: int = 2,
                 blstm_fc: bool = False):
        super().__init__()
        self.listener = Listener(n_input, listener_hidden, fc_size, dropout, blstm_fc)
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

    def layers_and_output(self, feats: torch.Tensor, lengths: torch.Tensor, layers=None) -> tuple[dict, tuple]:
        """One listener pass for both :meth:`forward_layers` ``(feats, lengths, layers)`` and the listener
        output the speller, its beam searches and the CTC head read: ``({name: (hidden, lengths)},
        (enc [B, T/4, fc], enc_lengths))``, each equal to what ``forward_layers`` and ``listener`` return."""
        names = list(self.layer_names if layers is None else layers)
        out = self.listener.forward_layers(feats, lengths, list(dict.fromkeys([*names, "pblstm2"])))
        return {name: out[name] for name in names}, out["pblstm2"]

    def forward_flops(self, frames, tokens) -> int:
        """Forward FLOPs (teacher-forced) for utterances of ``frames`` feature frames and ``tokens``
        decoder steps each (:mod:`~ser_modules.models.flops`)."""
        frames = torch.as_tensor(frames).reshape(-1)
        tokens = torch.as_tensor(tokens).reshape(-1)
        enc = self.listener.output_lengths(frames)
        flops = self.listener.forward_flops(frames)
        sp, attn = self.speller, self.speller.attn
        hidden, steps, enc_dim = sp.hidden_size, total(tokens), attn.mlp_enc.in_features
        rnn_in = self.embedding.embedding_dim + sp.attn_dim
        per_step = 4 * hidden * (rnn_in + hidden) + (sp.num_layers - 1) * 4 * hidden * 2 * hidden
        per_step += hidden * sp.attn_dim + (hidden + sp.attn_dim) * hidden + hidden * self.n_symbols
        flops += 2 * per_step * steps
        # Keys and projected values once per utterance (see spell); energies and context at every
        # step over the valid frames.
        flops += 2 * linear_flops(enc_dim, sp.attn_dim, total(enc))
        flops += 2 * 2 * sp.attn_dim * int((enc * tokens).sum())
        if self.ctc_output is not None:
            flops += linear_flops(self.ctc_output.in_features, self.n_symbols, total(enc))
        return flops

    def spell(self, enc: torch.Tensor, enc_lengths: torch.Tensor, tokens_bos: torch.Tensor,
              teacher_forcing: float = 1.0) -> torch.Tensor:
        """Speller logits ``[B, L, n_symbols]`` for decoder inputs ``tokens_bos [B, L]`` (``<sos>`` first).

        With ``teacher_forcing < 1`` each step feeds the model's own previous prediction instead of
        the reference token with probability ``1 - teacher_forcing`` (scheduled sampling).

        The arithmetic of SpeechBrain's ``AttentionalRNNDecoder.forward_step`` (which beam search
        uses), arranged for training speed: what does not depend on the previous step runs once for
        all steps (the embeddings' share of the first LSTM layer's input product, the attention keys,
        the context projection applied to the encoder frames instead of to each context, and, under
        teacher forcing, the output layers), and each LSTM layer is one product with ``[input; h]``.
        This halves the operations inside the time loop, which dominate the speller's cost on a CPU.
        """
        sp, attn = self.speller, self.speller.attn
        cells = sp.rnn.rnn_cells
        batch, steps = tokens_bos.shape
        emb_dim, hidden = self.embedding.embedding_dim, sp.hidden_size
        keys = attn.mlp_enc(enc)  # [B, T, A]
        values = attn.mlp_out(enc)  # the context projection commutes with the attention average
        mask = torch.zeros(enc.shape[:2], dtype=enc.dtype, device=enc.device)
        mask = mask.masked_fill(~length_mask(enc_lengths, enc.shape[1]), float("-inf"))
        w_first = cells[0].weight_ih  # [4H, E + A]: the input is [embedding; previous context]
        first_bias = cells[0].bias_ih + cells[0].bias_hh
        embedded = torch.nn.functional.linear(sp.drop(self.embedding(tokens_bos)), w_first[:, :emb_dim], first_bias)
        w_first_recurrent = torch.cat([w_first[:, emb_dim:], cells[0].weight_hh], 1).t()
        upper = [(torch.cat([c.weight_ih, c.weight_hh], 1).t(), c.bias_ih + c.bias_hh) for c in cells[1:]]
        h = [enc.new_zeros(batch, hidden) for _ in cells]
        c = [enc.new_zeros(batch, hidden) for _ in cells]
        context = enc.new_zeros(batch, sp.attn_dim)
        sampling = teacher_forcing < 1.0
        tops, contexts, logits = [], [], []
        embedded_steps = embedded.unbind(1)  # one backward node for all steps, not a zero-filled copy per step
        for t in range(steps):
            pre = embedded_steps[t]
            if sampling and t > 0:
                own = torch.rand(batch, device=enc.device) >= teacher_forcing
                fed = torch.where(own, logits[-1].argmax(dim=-1).detach(), tokens_bos[:, t])
                pre = torch.nn.functional.linear(sp.drop(self.embedding(fed)), w_first[:, :emb_dim], first_bias)
            h[0], c[0] = _lstm_cell(torch.addmm(pre, torch.cat([sp.drop(context), h[0]], 1), w_first_recurrent), c[0])
            x = h[0]
            for k, (weight, bias) in enumerate(upper, 1):
                h[k], c[k] = _lstm_cell(torch.addmm(bias, torch.cat([sp.rnn.dropout_layers[k - 1](x), h[k]], 1), weight),
                                        c[k])
                x = h[k]
            scores = attn.mlp_attn(tanh(keys + attn.mlp_dec(x).unsqueeze(1))).squeeze(-1)
            alpha = torch.softmax(scores * attn.scaling + mask, dim=-1)
            context = torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
            if sampling:  # the next step may feed this step's prediction
                logits.append(self.output(sp.proj(torch.cat([context, x], 1))))
            else:
                tops.append(x)
                contexts.append(context)
        if sampling:
            return torch.stack(logits, dim=1)
        return self.output(sp.proj(torch.cat([torch.stack(contexts, 1), torch.stack(tops, 1)], -1)))

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
