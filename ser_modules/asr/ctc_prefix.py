"""The CTC prefix score of joint CTC/attention decoding (Watanabe et al. 2017, Algorithm 2), computed
as SpeechBrain's :class:`~speechbrain.decoders.ctc.CTCPrefixScore` does over the full vocabulary, with
fewer and cheaper tensor operations per frame.

SpeechBrain's per-frame recursion stacks four ``[B*beam, V]`` tensors and reduces a size-2 dimension
with ``logsumexp``; here each frame is two ``logaddexp`` calls written in place, the sum over first-emission
frames is one matrix product per utterance (:meth:`FastCTCPrefixScore.prefix_mass`), the per-hypothesis
Python loops are one indexed assignment, and the inflated posteriors are built once per search instead of
once per output token. On stage 3 of the las_adapt demo the prefix score was 34% of the stage's CPU time
(``py-spy``); the scores equal SpeechBrain's up to float rounding (``tests/test_asr_training.py``).
Partial scoring (candidates) and attention windows are left to SpeechBrain's implementation.
"""

from __future__ import annotations

import torch
from speechbrain.decoders.ctc import CTCPrefixScore
from speechbrain.decoders.scorer import CTCScorer as SpeechBrainCTCScorer


class FastCTCPrefixScore(CTCPrefixScore):
    """:class:`CTCPrefixScore` with a faster full-vocabulary step; same constructor and states."""

    _inflated: tuple[int, torch.Tensor] | None = None

    def inflated_posteriors(self, beam_size: int) -> torch.Tensor:
        """``[2, T, B*beam, V]`` non-blank and blank log posteriors, one copy per hypothesis."""
        if self._inflated is None or self._inflated[0] != beam_size:
            x = self.x.unsqueeze(3).expand(-1, -1, -1, beam_size, -1)
            self._inflated = (beam_size, x.reshape(2, self.max_enc_len, -1, self.vocab_size).contiguous())
        return self._inflated[1]

    def prefix_mass(self, r_sum: torch.Tensor, r_blank: torch.Tensor, last: torch.Tensor, start: int, end: int,
                    beam_size: int) -> torch.Tensor:
        """``log sum_{t=start}^{end-1} exp(phi[t-1] + x[t, c])`` ``[n_bh, V]``: the prefix extended by ``c``
        first emitted at frame ``t``. ``phi[t-1]`` is ``r_sum[t-1]`` for every ``c`` but the last token, where
        it is the blank-ending ``r_blank[t-1]``; so the sum is one matrix product per utterance (float64,
        each hypothesis scaled by its largest term) and one gather, instead of exp and log of a
        ``[T, n_bh, V]`` tensor."""
        n_bh, V = r_sum.shape[1], self.vocab_size
        if end <= start:
            return torch.full((n_bh, V), self.minus_inf, device=self.device)
        logp = self.x[0, start:end].double()  # [t, B, V]: log p_t(c) of each utterance
        phi = r_sum[start - 1:end - 1].double()  # [t, n_bh]
        scale = phi.max(dim=0).values  # [n_bh]
        weights = (phi - scale).exp().T.reshape(self.batch_size, beam_size, -1)  # [B, beam, t]
        mass = torch.bmm(weights, logp.exp().transpose(0, 1)).reshape(n_bh, V)  # [n_bh, V]
        psi = (mass.log() + scale[:, None]).clamp_min(self.minus_inf)
        hyps = torch.arange(n_bh, device=self.device)
        own = r_blank[start - 1:end - 1].double() + logp[:, hyps // beam_size, last]  # [t, n_bh]
        psi[hyps, last] = torch.logsumexp(own, dim=0).clamp_min(self.minus_inf)
        return psi.to(r_sum.dtype)

    @torch.no_grad()
    def forward_step(self, inp_tokens, states, candidates=None, attn=None):
        if candidates is not None or (self.ctc_window_size and attn is not None):
            return super().forward_step(inp_tokens, states, candidates, attn)
        n_bh, V, T = inp_tokens.size(0), self.vocab_size, self.max_enc_len
        beam_size = n_bh // self.batch_size
        self.prefix_length += 1
        self.num_candidates = V
        if states is None:
            r_prev = torch.full((T, 2, self.batch_size, beam_size), self.minus_inf, device=self.device)
            r_prev[:, 1] = torch.cumsum(self.x[0, :, :, self.blank_index], 0).unsqueeze(2)
            r_prev = r_prev.view(-1, 2, n_bh)
            psi_prev = torch.zeros(n_bh, V, device=self.device)
        else:
            r_prev, psi_prev = states
        x = self.inflated_posteriors(beam_size)
        hyps = torch.arange(n_bh, device=self.device)

        r = torch.full((T, 2, n_bh, V), self.minus_inf, device=self.device)
        if self.prefix_length == 0:
            r[0, 0] = x[0, 0]
        r_sum = torch.logaddexp(r_prev[:, 0], r_prev[:, 1])  # [T, n_bh]
        phi = r_sum.unsqueeze(2).repeat(1, 1, V)
        phi[:, hyps, inp_tokens] = r_prev[:, 1]  # a repeated last token continues only from a blank
        start, end = max(1, self.prefix_length), T
        for t in range(start, end):
            torch.logaddexp(r[t - 1, 0], phi[t - 1], out=r[t, 0])
            torch.logaddexp(r[t - 1, 0], r[t - 1, 1], out=r[t, 1])
            r[t].add_(x[:, t])
        psi = torch.logaddexp(self.prefix_mass(r_sum, r_prev[:, 1], inp_tokens, start, end, beam_size), r[start - 1, 0])
        psi[:, self.eos_index] = r_sum[self.last_frame_index.repeat_interleave(beam_size), hyps]
        if self.eos_index != self.blank_index:
            psi[:, self.blank_index] = self.minus_inf  # blank is never emitted in joint scoring
        return psi - psi_prev, (r, psi, None)


class CTCScorer(SpeechBrainCTCScorer):
    """SpeechBrain's ``CTCScorer`` whose prefix score is :class:`FastCTCPrefixScore`. The class name must
    stay ``CTCScorer``: ``ScorerBuilder`` keys its weights by it and blocks the blank for ``ctc`` only."""

    def reset_mem(self, x, enc_lens):
        self.ctc_score = FastCTCPrefixScore(self.softmax(self.ctc_fc(x)), enc_lens, self.blank_index,
                                            self.eos_index, self.ctc_window_size)
