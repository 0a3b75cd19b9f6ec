"""The VL-JEPA predictor: [visual tokens; query tokens] -> predicted target embedding Ŝ_Y.

Paper §3: a bidirectional transformer reads the projected visual tokens followed by the query
tokens, the outputs at non-pad positions are averaged, and a linear head maps the average to the
shared embedding space. As in I-JEPA and V-JEPA 2 the predictor is a narrow bottleneck: its
width is set on its own, well below the encoders'.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PredictorConfig
from .ternary import BitLinear, TernaryEncoder

QUANT_MODES = ("none", "ternary")


class Predictor(nn.Module):
    """Bidirectional transformer predictor.

    Args:
        cfg: sizes (width W, depth, heads, MLP ratio, dropout, max query length, visual pooling)
            and ``quant``: "none" (full precision) or "ternary" (BitNet b1.58: every linear layer
            but the head becomes a :class:`~vljepa.ternary.BitLinear`, each after a norm).
        visual_dim: Dx, the X-encoder's token width.
        num_visual_tokens: N, the X-encoder's token count (before pooling).
        grid: the (h, w) token grid of a CNN X-encoder, needed for ``cfg.visual_pool > 1``.
        query_dim: width of the query token embeddings (the Y-encoder's token table).
        embed_dim: D, the shared embedding space.
    """

    def __init__(self, cfg: PredictorConfig, visual_dim: int, num_visual_tokens: int,
                 grid: tuple[int, int] | None, query_dim: int, embed_dim: int):
        super().__init__()
        if cfg.quant not in QUANT_MODES:
            raise ValueError(f"predictor.quant must be one of {QUANT_MODES}, got {cfg.quant!r}")
        self.cfg = cfg
        self.grid = grid
        if cfg.visual_pool > 1:
            if grid is None:
                raise ValueError("predictor.visual_pool > 1 needs an X-encoder with a token grid")
            h, w = (-(-g // cfg.visual_pool) for g in grid)  # ceil mode
            num_visual_tokens = h * w
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

    def pool_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, N, Dx) -> (B, N', Dx), average-pooling the token grid by ``cfg.visual_pool``."""
        k = self.cfg.visual_pool
        if k == 1:
            return visual
        B, N, Dx = visual.shape
        h, w = self.grid
        x = visual.transpose(1, 2).reshape(B, Dx, h, w)
        x = F.avg_pool2d(x, k, ceil_mode=True)
        return x.flatten(2).transpose(1, 2)

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
    """The no-predictor baseline: Ŝ_Y = W · mean(visual tokens) + b, ignoring any query.

    With the mean over tokens being the X-encoder's own global average pool, this is a CLIP-style
    linear alignment of the frozen image feature to the text space; trained with the same loss
    and data it shows what the predictor adds.
    """

    def __init__(self, visual_dim: int, embed_dim: int):
        super().__init__()
        self.head = nn.Linear(visual_dim, embed_dim)

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None = None,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """visual (B, N, Dx) -> (B, D); ``query`` and ``query_mask`` are ignored."""
        return self.head(visual.mean(1))


def build_predictor(cfg: PredictorConfig, visual_dim: int, num_visual_tokens: int,
                    grid: tuple[int, int] | None, query_dim: int, embed_dim: int) -> nn.Module:
    """The predictor named by ``cfg.kind``: "transformer" (VL-JEPA), "llm" (the paper's, from a
    causal LM's last layers) or "linear" (baseline)."""
    if cfg.kind == "llm":
        from .llm_predictor import LLMPredictor
        return LLMPredictor(cfg, visual_dim, grid, embed_dim)
    if cfg.kind == "transformer":
        return Predictor(cfg, visual_dim, num_visual_tokens, grid, query_dim, embed_dim)
    if cfg.kind == "linear":
        return LinearPredictor(visual_dim, embed_dim)
    raise ValueError(f"unknown predictor kind {cfg.kind!r}; use 'transformer', 'llm' or 'linear'")
