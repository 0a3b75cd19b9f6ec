"""The linear probe baseline (no predictor), ``kind="linear"``.

Ŝ_Y = W · mean(visual tokens) + b, ignoring any query. With the mean over tokens being the
X-encoder's own global average pool, this is a CLIP-style linear alignment of the frozen image
feature to the text space; trained with the same loss and data it shows what the predictor adds.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import LinearPredictorConfig
from .base import Predictor, PredictorDims, QueryReader


class LinearPredictor(Predictor):
    """``kind="linear"``: visual (B, N, Dx) -> (B, D); the query is tokenized (the same
    interface as every kind, so the same batches serve) and then ignored."""

    Config = LinearPredictorConfig
    query_form = "none"
    lean_servable = False  # serving bundles store query states, which this kind ignores

    def __init__(self, cfg: LinearPredictorConfig, dims: PredictorDims,
                 query: QueryReader | None = None):
        super().__init__(cfg, dims, query)
        self.head = nn.Linear(dims.visual_dim, dims.embed_dim)

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None = None,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """visual (B, N, Dx) -> (B, D); ``query`` and ``query_mask`` are ignored."""
        return self.head(visual.mean(1))
