"""The Y-decoder: a light text decoder from the shared embedding space back to text (paper §3).

VL-JEPA answers discriminative questions without text; the Y-decoder is only called when text is
needed (captions, open answers, the selective decoding of streams in vljepa/selective.py):

    Ŝ_Y or S_Y (B, D) ──unit norm──► linear ──► P prefix vectors (B, P, W)
    prefix ──► causal text decoder (vljepa/decoders/text_decoder.py) ──► "[BOS] text [EOS]"

It trains on text (vljepa/training/lightning_modules.py, LitYDecoder): texts t go through the frozen
Y-encoder and head, and the decoder learns ``decode(S_Y(t)) ≈ t``, so any text corpus serves.
Predicted embeddings Ŝ_Y live in the same space but near, not on, their targets, so the corpus
can also hold the frozen model's own predictions on training images paired with their answers
or captions (``data.predictions``); then ``decode(predict(image, query))`` writes the answer.
The vocabulary is the Y-encoder's tokenizer (its frozen token table is tied to the decoder's
input and output, so the decoder's parameters do not grow with the vocabulary).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import YDecoderConfig
from .text_decoder import CausalTextDecoder


class YDecoder(nn.Module):
    """Shared-space embedding (B, D) -> text.

    Args:
        config: :class:`vljepa.config.YDecoderConfig` (sizes, prefix length, output vocabulary).
        y_encoder: the model's :class:`vljepa.encoders.YEncoder`; only its tokenizer and frozen
            token table are used (not owned: not saved with the decoder).
        embed_dim: D, the shared space's width.
    """

    def __init__(self, config: YDecoderConfig, y_encoder, embed_dim: int):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        self._tokenizer = getattr(y_encoder.model, "tokenizer", None)
        if self._tokenizer is None:
            raise ValueError(f"the Y-decoder needs a Hugging Face tokenizer to write text; the "
                             f"{y_encoder.cfg.backend!r} Y-encoder has none (use a "
                             "sentence-transformers Y-encoder)")
        self._tokenize = y_encoder.tokenize
        bos, eos, pad = special_ids(self._tokenizer)
        self.to_prefix = nn.Linear(embed_dim, config.prefix_tokens * config.width)
        vocab = None if config.output_vocab is None else torch.tensor(config.output_vocab)
        self.decoder = CausalTextDecoder(
            y_encoder.token_embedding.weight, width=config.width, depth=config.depth,
            heads=config.heads, mlp_ratio=config.mlp_ratio, dropout=config.dropout,
            max_prefix=config.prefix_tokens, max_len=config.max_len, bos_id=bos, eos_id=eos,
            pad_id=pad, output_vocab=vocab)

    def prefix(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) embeddings -> prefix (B, P, W) float32 and its mask (B, P) bool (all True).

        Embeddings are L2-normalised first: S_Y and Ŝ_Y are compared by cosine, so only their
        direction carries meaning. Raises ValueError on a wrong shape or non-finite values.
        """
        e = check_embeddings(embeddings, self.embed_dim)
        e = F.normalize(e.to(self.to_prefix.weight.device, torch.float32), dim=-1)
        p = self.to_prefix(e).view(len(e), self.config.prefix_tokens, self.config.width)
        return p, torch.ones(p.shape[:2], dtype=torch.bool, device=p.device)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> ``[BOS] text [EOS]`` ids (B, L) int64 and mask (B, L) bool, L <= max_len."""
        return self._tokenize(list(texts), self.config.max_len)

    def loss(self, embeddings: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Mean next-token cross-entropy (nats, scalar) of ``texts`` given their embeddings."""
        ids, mask = self.tokenize(texts)
        p, pm = self.prefix(embeddings)
        return self.decoder.loss(p, pm, ids.to(p.device), mask.to(p.device))

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor, max_new_tokens: int = 24,
               num_beams: int = 1) -> list[str]:
        """(B, D) embeddings -> B strings, greedy (``num_beams=1``) or beam search, at most
        ``max_new_tokens`` tokens (capped by ``max_len``)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        p, pm = self.prefix(embeddings)
        ids = self.decoder.generate(p, pm, max_new_tokens, num_beams)
        return self._tokenizer.batch_decode(ids, skip_special_tokens=True)


def special_ids(tokenizer) -> tuple[int, int, int]:
    """(BOS, EOS, PAD) ids of a Hugging Face tokenizer: BERT-style [CLS]/[SEP] when it has them,
    else bos/eos; PAD defaults to 0."""
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no BOS/CLS or EOS/SEP token")
    return bos, eos, tokenizer.pad_token_id or 0


def check_embeddings(embeddings, dim: int) -> torch.Tensor:
    """A (B, D) float tensor with B >= 1 and finite values, else ValueError / TypeError naming the
    problem (a NaN embedding would otherwise decode to confident nonsense)."""
    if not isinstance(embeddings, torch.Tensor):
        embeddings = torch.as_tensor(embeddings)
    if embeddings.ndim == 1:
        raise ValueError(f"embeddings must be (B, {dim}); got one vector of shape "
                         f"{tuple(embeddings.shape)}: add a batch dimension (e[None])")
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise ValueError(f"embeddings must be (B, {dim}), got shape {tuple(embeddings.shape)}")
    if len(embeddings) == 0:
        raise ValueError("no embeddings given (B = 0)")
    if not embeddings.is_floating_point():
        raise TypeError(f"embeddings must be floating point, got {embeddings.dtype}")
    bad = ~torch.isfinite(embeddings).all(1)
    if bad.any():
        raise ValueError(f"embeddings hold NaN or inf values (rows {bad.nonzero().flatten()[:5].tolist()})")
    return embeddings
