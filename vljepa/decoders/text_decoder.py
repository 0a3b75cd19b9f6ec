"""A small causal transformer that writes text after a prefix of vectors (a prefix LM).

Used by the token-generating VLM baseline (vljepa/baseline.py, LLaVA-style: the prefix is the
projected visual tokens and the query tokens) and usable as a Y-decoder (the prefix is a few
vectors mapped from one Y-space embedding).

Vocabulary: the token ids of an existing tokenizer (the Y-encoder's WordPiece). Input and output
embeddings are tied to that tokenizer's frozen token table (V, Dt), through a projection each way
(Dt -> W in, W -> Dt out), so the trainable parameters do not grow with the vocabulary; the table
itself is not saved (it is rebuilt with the encoder). ``output_vocab`` restricts the softmax to
the token ids a corpus uses, which keeps CPU training fast and generation on topic.

Attention: prefix positions see the whole prefix; text positions see the prefix and the earlier
text (the prefix-LM mask of T5 / LLaVA-style decoders). Sequences are ``[BOS] text [EOS]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def corpus_vocab(ids: torch.Tensor, mask: torch.Tensor, bos_id: int) -> list[int]:
    """The token ids a tokenised corpus uses ((B, L) ids and mask), BOS left out (never
    emitted): the ``output_vocab`` of a decoder that writes that corpus."""
    return sorted(set(ids[mask].tolist()) - {bos_id})


class CausalTextDecoder(nn.Module):
    """Prefix-conditioned causal text decoder.

    Args:
        token_table: (V, Dt) float, the tokenizer's token embeddings; kept frozen, not saved.
        width, depth, heads, mlp_ratio, dropout: transformer sizes (W = width).
        max_prefix, max_len: the longest prefix P and text L (BOS/EOS included) it takes.
        bos_id, eos_id, pad_id: special token ids of the tokenizer.
        output_vocab: token ids the decoder may emit (1-D int64); None: the whole vocabulary.
            EOS is always included.
    """

    def __init__(self, token_table: torch.Tensor, *, width: int = 256, depth: int = 3,
                 heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 max_prefix: int = 64, max_len: int = 32, bos_id: int, eos_id: int, pad_id: int,
                 output_vocab: torch.Tensor | None = None):
        super().__init__()
        V, Dt = token_table.shape
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.max_prefix, self.max_len = max_prefix, max_len
        self.register_buffer("table", token_table.detach().float(), persistent=False)
        self._register_output_vocab(V, output_vocab)
        self.tok_in = nn.Linear(Dt, width)
        self.pos = nn.Parameter(torch.zeros(1, max_prefix + max_len, width))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(width),
                                            enable_nested_tensor=False)
        self.tok_out = nn.Linear(width, Dt)
        self.out_bias = nn.Parameter(torch.zeros(len(self.output_vocab)))

    def _register_output_vocab(self, V: int, output_vocab: torch.Tensor | None) -> None:
        """Buffers ``output_vocab`` (sorted token ids the decoder may emit, EOS included; None:
        all V) and ``out_index`` (V,): token id -> row of the output softmax (-1: not
        emittable). Saved: they define the model."""
        if output_vocab is None:
            output_vocab = torch.arange(V)
        output_vocab = torch.unique(torch.cat([torch.as_tensor(output_vocab).long(),
                                               torch.tensor([self.eos_id])]))
        out_index = torch.full((V,), -1, dtype=torch.long)
        out_index[output_vocab] = torch.arange(len(output_vocab))
        self.register_buffer("output_vocab", output_vocab)
        self.register_buffer("out_index", out_index)

    # ---- forward ----

    def forward(self, prefix: torch.Tensor, prefix_mask: torch.Tensor, ids: torch.Tensor,
                ids_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits over the output vocabulary.

        Args:
            prefix: (B, P, W) float; prefix_mask: (B, P) bool, True at real positions.
            ids: (B, L) int64 token ids, starting with BOS; ids_mask: (B, L) bool.
        Returns:
            (B, L, V') float: position i scores the token at i + 1 (V' = len(output_vocab)).
        Raises:
            ValueError: P or L above max_prefix / max_len.
        """
        B, P, _ = prefix.shape
        L = ids.shape[1]
        if P > self.max_prefix or L > self.max_len:
            raise ValueError(f"prefix {P} / text {L} tokens exceed the decoder's max_prefix "
                             f"{self.max_prefix} / max_len {self.max_len}")
        x = torch.cat([prefix, self.tok_in(F.embedding(ids, self.table))], 1)  # (B, P+L, W)
        x = x + self.pos[:, :P + L]
        # prefix-LM mask: True = may not attend. Text position i sees the prefix and text <= i.
        mask = torch.zeros(P + L, P + L, dtype=torch.bool, device=x.device)
        mask[:, P:] = torch.triu(torch.ones(P + L, L, dtype=torch.bool, device=x.device), 1 - P)
        pad = ~torch.cat([prefix_mask.bool(), ids_mask.bool()], 1)  # (B, P+L)
        h = self.blocks(x, mask=mask, src_key_padding_mask=pad)[:, P:]  # (B, L, W)
        return self.tok_out(h) @ self.table[self.output_vocab].T + self.out_bias  # (B, L, V')

    def _targets(self, ids: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L-1) rows of the output softmax, -100 at padding."""
        tgt = self.out_index[ids[:, 1:]]
        if ((tgt < 0) & ids_mask[:, 1:]).any():
            bad = ids[:, 1:][(tgt < 0) & ids_mask[:, 1:]].unique()[:5].tolist()
            raise ValueError(f"target token ids {bad} are outside the decoder's output_vocab")
        return tgt.masked_fill(~ids_mask[:, 1:].bool(), -100)

    def loss(self, prefix: torch.Tensor, prefix_mask: torch.Tensor, ids: torch.Tensor,
             ids_mask: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats, scalar float32) over the real tokens after BOS.

        Args: as :meth:`forward` (prefix (B, P, W), prefix_mask (B, P), ids / ids_mask (B, L)).
        Raises ValueError for a target token outside ``output_vocab``, or lengths over the
        decoder's maxima."""
        logits = self(prefix, prefix_mask, ids[:, :-1], ids_mask[:, :-1])  # (B, L-1, V')
        return F.cross_entropy(logits.flatten(0, 1).float(), self._targets(ids, ids_mask).flatten())

    def sequence_logprob(self, prefix: torch.Tensor, prefix_mask: torch.Tensor,
                         ids: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        """(B,) float32: the sum of log p(token) over each sequence's real tokens after BOS
        (nats). Arguments and errors as :meth:`loss`."""
        logits = self(prefix, prefix_mask, ids[:, :-1], ids_mask[:, :-1]).float()
        tgt = self._targets(ids, ids_mask)
        lp = -F.cross_entropy(logits.transpose(1, 2), tgt.clamp(min=0), reduction="none")
        return (lp * (tgt >= 0)).sum(1)

    # ---- generation ----

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, prefix_mask: torch.Tensor,
                 max_new_tokens: int = 24, num_beams: int = 1) -> list[list[int]]:
        """Greedy (``num_beams=1``) or beam search decoding.

        Returns B lists of token ids, without BOS and EOS. Generation stops at EOS or after
        ``max_new_tokens`` (capped at ``max_len - 1``). Beam scores are summed log-probabilities
        divided by length (so a beam is not favoured for stopping early).
        """
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        steps = min(max_new_tokens, self.max_len - 1)
        B, K = prefix.shape[0], num_beams
        prefix = prefix.repeat_interleave(K, 0)
        prefix_mask = prefix_mask.repeat_interleave(K, 0)
        ids = torch.full((B * K, 1), self.bos_id, dtype=torch.long, device=prefix.device)
        score = torch.zeros(B, K, device=prefix.device)
        score[:, 1:] = -float("inf")  # all beams start identical: keep one
        done = torch.zeros(B * K, dtype=torch.bool, device=prefix.device)
        length = torch.zeros(B * K, device=prefix.device)
        for _ in range(steps):
            logp = self(prefix, prefix_mask, ids, torch.ones_like(ids, dtype=torch.bool))[:, -1]
            logp = logp.float().log_softmax(-1)  # (B*K, V')
            V = logp.shape[1]
            eos_row = int(self.out_index[self.eos_id])
            # finished beams only extend with EOS at no cost
            logp[done] = -float("inf")
            logp[done, eos_row] = 0.0
            cand = (score.view(-1, 1) + logp).view(B, K * V)
            top, idx = cand.topk(K, dim=1)  # (B, K)
            beam = idx // V + torch.arange(B, device=idx.device).unsqueeze(1) * K
            tok = self.output_vocab[idx % V]
            beam, tok = beam.view(-1), tok.view(-1)
            ids = torch.cat([ids[beam], tok.unsqueeze(1)], 1)
            length = length[beam] + (~done[beam]).float()
            done = done[beam] | (tok == self.eos_id)
            score = top
            if done.all():
                break
        norm = (score.view(-1) / length.clamp(min=1)).view(B, K)
        best = norm.argmax(1) + torch.arange(B, device=norm.device) * K
        out = []
        for row in ids[best, 1:].tolist():
            out.append(row[:row.index(self.eos_id)] if self.eos_id in row else row)
        return out
