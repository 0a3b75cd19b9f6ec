"""How a predictor reads visual tokens: average pooling of the token grid and learned slots.

Both run before the predictor's joint transformer, on visual tokens (B, N, Dx) from the
X-encoder (or the feature cache).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pooled_grid(grid: tuple[int, int] | None, k: int) -> tuple[int, int] | None:
    """The (h, w) token grid after :func:`pool_tokens` by ``k`` (ceil mode); None stays None."""
    return None if grid is None else (-(-grid[0] // k), -(-grid[1] // k))


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int] | None, k: int) -> torch.Tensor:
    """Average-pool a token grid by ``k``: (B, N, Dx) -> (B, N', Dx), N' = ceil(h/k) * ceil(w/k).

    ``k = 1`` returns ``tokens`` as is. Raises ValueError for ``k > 1`` without a grid (ViT-style
    tokens have no 2-D layout to pool).
    """
    if k == 1:
        return tokens
    if grid is None:
        raise ValueError("predictor.visual_pool > 1 needs an X-encoder with a token grid")
    B, N, Dx = tokens.shape
    x = F.avg_pool2d(tokens.transpose(1, 2).reshape(B, Dx, *grid), k, ceil_mode=True)
    return x.flatten(2).transpose(1, 2)


class VisualSlots(nn.Module):
    """Learned attention pooling of N visual tokens into M slots: (B, N, Dx) -> (B, M, H).

    Each token goes through LayerNorm, a linear map to H and GELU; each slot takes a softmax over
    the N tokens of a linear score of those features and returns their weighted mean (an
    attention pool with M learned queries, as in Perceiver / Flamingo's resampler, reduced to one
    linear score per slot). The cost per token is O(Dx H + H M), so hundreds of narrow
    early-stage tokens cost less than a few tokens through the predictor's transformer, which
    then reads only the M slots.

    Args:
        visual_dim: Dx. width: H. slots: M >= 1.
    Raises:
        ValueError: ``slots`` < 1.
    """

    def __init__(self, visual_dim: int, width: int, slots: int):
        super().__init__()
        if slots < 1:
            raise ValueError(f"VisualSlots needs at least 1 slot, got {slots}")
        self.norm = nn.LayerNorm(visual_dim)
        self.proj = nn.Linear(visual_dim, width)
        self.score = nn.Linear(width, slots)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        """visual (B, N, Dx) float -> slots (B, M, H) float."""
        h = F.gelu(self.proj(self.norm(visual)))  # (B, N, H)
        attn = self.score(h).softmax(dim=1)  # (B, N, M): each slot's weights over the tokens
        return attn.transpose(1, 2) @ h  # (B, M, H)


def visual_slots(cfg, visual_dim: int, num_tokens: int, width: int
                 ) -> tuple[VisualSlots | None, int, int]:
    """The predictor's :class:`VisualSlots` for ``cfg`` (a joint predictor config), or None when
    ``cfg.visual_slots`` is 0; with the width and count of the tokens it outputs
    ``(module, Dx', N')`` (unchanged without slots). The slots' width is
    ``cfg.visual_slot_dim``, or the predictor's ``width`` when that is None.

    Raises ValueError for a negative ``visual_slots``."""
    if cfg.visual_slots < 0:
        raise ValueError(f"predictor.visual_slots must be >= 0, got {cfg.visual_slots}")
    if not cfg.visual_slots:
        return None, visual_dim, num_tokens
    H = cfg.visual_slot_dim or width
    return VisualSlots(visual_dim, H, cfg.visual_slots), H, cfg.visual_slots
