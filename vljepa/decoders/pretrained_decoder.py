"""A prefix-LM text decoder that starts from a pretrained BERT-style text encoder's weights.

The token-generating baseline's default decoder (:class:`CausalTextDecoder`) starts from random
weights, while VL-JEPA's predictor reads the question through a pretrained text encoder
(all-MiniLM-L6-v2 by default). For a comparison from the same pretrained start, this decoder *is*
that encoder's layers (all of them, trainable) run under a prefix-LM mask instead of their
bidirectional one:

    prefix: [projected visual tokens + learned positions; the query through the encoder's own
             embeddings (token + position + LayerNorm)]
    text:   [BOS] answer ... through the same embeddings, positions after the longest query
    mask:   prefix positions see the prefix; text position i sees the prefix and text <= i
    output: linear (W -> Dt), tied to the frozen token table, restricted to ``output_vocab``

Everything but the token table trains and is saved; the token table is the tokenizer's (the
Y-encoder's, the same tensor values as the encoder's word embeddings) and is rebuilt, not saved.
It subclasses :class:`CausalTextDecoder`, so loss, scoring and generation are the same code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.text_backbone import load_text_encoder
from .text_decoder import CausalTextDecoder


class PretrainedCausalDecoder(CausalTextDecoder):
    """:class:`CausalTextDecoder` whose embeddings and layers are a pretrained text encoder's.

    Args:
        name: the text encoder (sentence-transformers name, hub id or directory), BERT-style.
        token_table: (V, Dt) the tokenizer's token embeddings (frozen, not saved); V must be the
            encoder's vocabulary size.
        max_visual: visual prefix tokens it takes (they get learned positions).
        max_query: query tokens it takes (encoder positions 0 .. max_query - 1); text tokens take
            the positions after them.
        max_len, bos_id, eos_id, pad_id, output_vocab, dropout: as :class:`CausalTextDecoder`.
    Raises:
        ValueError: the encoder's vocabulary or position table does not fit.
    """

    def __init__(self, name: str, token_table: torch.Tensor, *, max_visual: int, max_query: int,
                 max_len: int, bos_id: int, eos_id: int, pad_id: int,
                 output_vocab: torch.Tensor | None = None, dropout: float = 0.0):
        nn.Module.__init__(self)
        encoder, _ = load_text_encoder(name, dropout)
        V, Dt = token_table.shape
        if encoder.config.vocab_size != V:
            raise ValueError(f"text encoder {name!r} has {encoder.config.vocab_size} tokens, the "
                             f"tokenizer's table {V}: the decoder needs the same tokenizer")
        if max_query + max_len > encoder.config.max_position_embeddings:
            raise ValueError(f"query {max_query} + text {max_len} tokens exceed {name!r}'s "
                             f"{encoder.config.max_position_embeddings} positions")
        self.name = name
        self.width = W = encoder.config.hidden_size
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.max_visual, self.max_query = max_visual, max_query
        self.max_prefix, self.max_len = max_visual + max_query, max_len
        self.register_buffer("table", token_table.detach().float(), persistent=False)
        self._register_output_vocab(V, output_vocab)
        emb = encoder.embeddings
        # The encoder's embeddings minus its word table (the frozen ``table`` holds those values).
        self.position_embeddings = emb.position_embeddings
        self.type_embedding = nn.Parameter(emb.token_type_embeddings.weight[0].detach().clone())
        self.embed_norm = emb.LayerNorm
        self.embed_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(encoder.encoder.layer)
        self.visual_pos = nn.Parameter(torch.zeros(1, max_visual, W))
        nn.init.trunc_normal_(self.visual_pos, std=0.02)
        self.tok_out = nn.Linear(W, Dt)
        self.out_bias = nn.Parameter(torch.zeros(len(self.output_vocab)))
        del encoder  # its pooler and word table are not used

    def embed_tokens(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """ids (B, L) -> (B, L, W): the encoder's token + position (from ``offset``) + type
        embeddings and LayerNorm, as it embeds a sentence."""
        pos = torch.arange(offset, offset + ids.shape[1], device=ids.device)
        x = F.embedding(ids, self.table) + self.position_embeddings(pos) + self.type_embedding
        return self.embed_drop(self.embed_norm(x))

    def prefix(self, visual: torch.Tensor, query_ids: torch.Tensor | None,
               query_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected visual tokens (B, N, W) + query ids / mask (B, L) -> prefix (B, N+L, W) and
        its mask (B, N+L) bool. Raises ValueError for more than ``max_visual`` / ``max_query``."""
        if visual.shape[1] > self.max_visual:
            raise ValueError(f"{visual.shape[1]} visual tokens; the decoder takes {self.max_visual}")
        v = visual + self.visual_pos[:, :visual.shape[1]]
        keep = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        if query_ids is None:
            return v, keep
        if query_ids.shape[1] > self.max_query:
            raise ValueError(f"{query_ids.shape[1]} query tokens; the decoder takes "
                             f"{self.max_query}")
        q = self.embed_tokens(query_ids)
        return torch.cat([v, q], 1), torch.cat([keep, query_mask.bool()], 1)

    def forward(self, prefix: torch.Tensor, prefix_mask: torch.Tensor, ids: torch.Tensor,
                ids_mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, L, V') over the output vocabulary, as
        :meth:`CausalTextDecoder.forward`; ``prefix`` comes from :meth:`prefix`."""
        B, P, _ = prefix.shape
        L = ids.shape[1]
        if P > self.max_prefix or L > self.max_len:
            raise ValueError(f"prefix {P} / text {L} tokens exceed the decoder's max_prefix "
                             f"{self.max_prefix} / max_len {self.max_len}")
        x = torch.cat([prefix, self.embed_tokens(ids, self.max_query)], 1)  # (B, P+L, W)
        blocked = torch.zeros(P + L, P + L, dtype=torch.bool, device=x.device)
        blocked[:, P:] = torch.triu(torch.ones(P + L, L, dtype=torch.bool, device=x.device), 1 - P)
        pad = ~torch.cat([prefix_mask.bool(), ids_mask.bool()], 1)  # (B, P+L)
        blocked = blocked[None] | pad[:, None, :]  # (B, T, T): True = may not attend
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill(
            blocked, torch.finfo(x.dtype).min)[:, None]  # additive (B, 1, T, T)
        for layer in self.layers:
            out = layer(x, mask)
            x = out[0] if isinstance(out, tuple) else out
        h = x[:, P:]
        return self.tok_out(h) @ self.table[self.output_vocab].T + self.out_bias  # (B, L, V')
