"""The VL-JEPA predictor: [visual tokens; query tokens] -> predicted target embedding Ŝ_Y.

Paper §3: a bidirectional transformer reads the projected visual tokens followed by the query
tokens, the outputs at non-pad positions are averaged, and a linear head maps the average to the
shared embedding space. As in I-JEPA and V-JEPA 2 the predictor is a narrow bottleneck: its
width is set on its own, well below the encoders'.

Every predictor offers one interface, which :class:`vljepa.model.VLJEPA` relies on:
``tokenize(texts) -> (ids (B, L), mask (B, L))`` and ``embed_query(ids) -> (B, L, Dq)``;
``forward(visual (B, N, Dx), query (B, L, Dq) | None, query_mask (B, L) | None) -> (B, D)``;
``fingerprint`` (a hash of pretrained weights it re-reads rather than saves, or None) and
``lr_mults`` (parameter-name prefix -> learning-rate multiplier).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PredictorConfig
from .bitlinear import BitLinear, TernaryEncoder
from .encoders import XEncoder, YEncoder, pool_tokens, pooled_grid, visual_slots
from .llm_predictor import LLMPredictor
from .queries import ContextualQuery, TokenTableQuery
from .text_predictor import TextPredictor

QUANT_MODES = ("none", "ternary")


class Predictor(nn.Module):
    """Bidirectional transformer predictor, reading the query through a query reader: the
    Y-encoder's tokenizer and token table (:class:`~vljepa.modules.queries.TokenTableQuery`,
    ``kind="transformer"``), or a frozen text encoder's contextual states
    (:class:`~vljepa.modules.queries.ContextualQuery`, ``kind="cached_text"``).

    Args:
        cfg: sizes (width W, depth, heads, MLP ratio, dropout, max query length, visual pooling,
            visual slots) and ``quant``: "none" (full precision) or "ternary" (BitNet b1.58: every linear layer
            but the head becomes a :class:`~vljepa.modules.bitlinear.BitLinear`, each after a
            norm).
        x_encoder: gives Dx (token width), N (token count) and the (h, w) grid of a CNN, which
            ``cfg.visual_pool > 1`` needs.
        y_encoder: gives the query tokenizer and token table (width Dq).
        embed_dim: D, the shared embedding space.
        query: the query reader; None: the Y-encoder's token table.
    Raises:
        ValueError: an unknown ``quant``, ``visual_pool > 1`` without a token grid, or a
            negative ``visual_slots``.
    """

    lr_mults: dict[str, float] = {}  # every parameter at the base learning rate

    def __init__(self, cfg: PredictorConfig, x_encoder: XEncoder, y_encoder: YEncoder,
                 embed_dim: int, query: TokenTableQuery | ContextualQuery | None = None):
        super().__init__()
        if cfg.quant not in QUANT_MODES:
            raise ValueError(f"predictor.quant must be one of {QUANT_MODES}, got {cfg.quant!r}")
        self.cfg = cfg
        self.grid = x_encoder.grid
        self.query = query or TokenTableQuery(y_encoder, cfg.max_query_len)
        self.fingerprint = self.query.fingerprint
        visual_dim, query_dim = x_encoder.dim, self.query.dim
        num_visual_tokens = x_encoder.num_tokens
        if cfg.visual_pool > 1:
            if self.grid is None:
                raise ValueError("predictor.visual_pool > 1 needs an X-encoder with a token grid")
            h, w = pooled_grid(self.grid, cfg.visual_pool)
            num_visual_tokens = h * w
        # optional learned slots after the pooling: (B, N', Dx) -> (B, M, H)
        self.slots, visual_dim, num_visual_tokens = visual_slots(cfg, visual_dim,
                                                                 num_visual_tokens)
        W = cfg.width
        # The input projections are quantised too (they hold a quarter of the weights); their
        # LayerNorm is the norm BitNet puts before each quantised input.
        Lin = BitLinear if cfg.quant == "ternary" else nn.Linear
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim), Lin(visual_dim, W))
        self.query_proj = nn.Sequential(nn.LayerNorm(query_dim), Lin(query_dim, W))
        self.visual_pos = nn.Parameter(torch.zeros(1, num_visual_tokens, W))
        self.query_pos = nn.Parameter(torch.zeros(1, cfg.max_query_len, W))
        nn.init.trunc_normal_(self.visual_pos, std=0.02)
        nn.init.trunc_normal_(self.query_pos, std=0.02)
        if cfg.quant == "ternary":
            self.blocks = TernaryEncoder(W, cfg.heads, int(W * cfg.mlp_ratio), cfg.dropout,
                                         cfg.depth)
        else:
            layer = nn.TransformerEncoderLayer(
                W, cfg.heads, int(W * cfg.mlp_ratio), cfg.dropout, activation="gelu",
                batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, cfg.depth, norm=nn.LayerNorm(W),
                                                enable_nested_tensor=False)
        self.head = nn.Linear(W, embed_dim)  # the output head stays full precision, as in BitNet

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B questions -> (ids (B, L) int64, mask (B, L) bool); see :class:`TokenTableQuery`."""
        return self.query.tokenize(texts)

    def embed_query(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> query token embeddings (B, L, Dq), detached from the token table."""
        return self.query.embed(ids)

    def pool_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, N, Dx) -> (B, N', Dx), the token grid average-pooled by ``cfg.visual_pool``; then,
        with ``cfg.visual_slots`` = M, (B, M, H) learned slots."""
        v = pool_tokens(visual, self.grid, self.cfg.visual_pool)
        return v if self.slots is None else self.slots(v)

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None,
                query_mask: torch.Tensor | None) -> torch.Tensor:
        """Predict Ŝ_Y.

        Args:
            visual: visual tokens (B, N, Dx) float.
            query: query token embeddings (B, L, Dq) float, L <= max_query_len; or None for a
                query-free prediction (captioning, the paper's VL-JEPA_BASE).
            query_mask: (B, L) bool, True at real tokens, False at padding.
        Returns:
            Ŝ_Y (B, D) float, not normalised (the loss and the retrieval normalise).
        """
        v = self.visual_proj(self.pool_visual(visual)) + self.visual_pos  # (B, N', W)
        B, Nv, _ = v.shape
        keep_v = torch.ones(B, Nv, dtype=torch.bool, device=v.device)
        if query is None:
            x, keep = v, keep_v
        else:
            L = query.shape[1]
            if L > self.cfg.max_query_len:
                raise ValueError(f"query has {L} tokens; the predictor takes at most "
                                 f"{self.cfg.max_query_len} (predictor.max_query_len)")
            q = self.query_proj(query) + self.query_pos[:, :L]  # (B, L, W)
            x = torch.cat([v, q], dim=1)  # (B, N' + L, W)
            keep = torch.cat([keep_v, query_mask.bool()], dim=1)
        x = self.blocks(x, src_key_padding_mask=~keep)  # bidirectional: no causal mask
        w = keep.unsqueeze(-1).to(x.dtype)
        pooled = (x * w).sum(1) / w.sum(1)  # mean over non-pad tokens, (B, W)
        return self.head(pooled)  # (B, D)


class LinearPredictor(nn.Module):
    """The linear probe baseline (no predictor): Ŝ_Y = W · mean(visual tokens) + b, ignoring any
    query.

    With the mean over tokens being the X-encoder's own global average pool, this is a CLIP-style
    linear alignment of the frozen image feature to the text space; trained with the same loss
    and data it shows what the predictor adds. It reads queries as :class:`Predictor` does (the
    same interface) and then ignores them.
    """

    fingerprint = None
    lr_mults: dict[str, float] = {}

    def __init__(self, cfg: PredictorConfig, x_encoder: XEncoder, y_encoder: YEncoder,
                 embed_dim: int):
        super().__init__()
        self.query = TokenTableQuery(y_encoder, cfg.max_query_len)
        self.head = nn.Linear(x_encoder.dim, embed_dim)

    tokenize = Predictor.tokenize
    embed_query = Predictor.embed_query

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None = None,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """visual (B, N, Dx) -> (B, D); ``query`` and ``query_mask`` are ignored."""
        return self.head(visual.mean(1))


def cached_text_predictor(cfg: PredictorConfig, x_encoder: XEncoder, y_encoder: YEncoder,
                          embed_dim: int) -> Predictor:
    """``kind="cached_text"``: the small :class:`Predictor` over a frozen text encoder's
    contextual query states (``cfg.text_model``, None: the Y-encoder's own), kept per question."""
    return Predictor(cfg, x_encoder, y_encoder, embed_dim,
                     ContextualQuery(cfg.text_model, y_encoder, cfg.max_query_len,
                                     cfg.text_state_layers))


PREDICTORS = {"transformer": Predictor, "cached_text": cached_text_predictor,
              "text": TextPredictor, "llm": LLMPredictor, "linear": LinearPredictor}


def build_predictor(cfg: PredictorConfig, x_encoder: XEncoder, y_encoder: YEncoder,
                    embed_dim: int) -> nn.Module:
    """The predictor named by ``cfg.kind``: "transformer" (over static word vectors),
    "cached_text" (over a frozen text encoder's contextual states), "text" (a pretrained text
    encoder's last layers), "llm" (the paper's, from a causal LM's last layers) or "linear" (the
    linear probe baseline).

    Raises ValueError for an unknown kind or a negative ``query_noise``."""
    if cfg.kind not in PREDICTORS:
        raise ValueError(f"unknown predictor kind {cfg.kind!r}; use one of {sorted(PREDICTORS)}")
    if cfg.query_noise < 0:
        raise ValueError(f"predictor.query_noise must be >= 0, got {cfg.query_noise}")
    return PREDICTORS[cfg.kind](cfg, x_encoder, y_encoder, embed_dim)
