"""The VL-JEPA predictor: a small bidirectional transformer over [visual tokens; query states]
(paper §3), ``kind="transformer"`` (static word vectors) and ``kind="cached_text"`` (a frozen
text encoder's contextual states).

The visual tokens and the query states are projected to the width W and given learned
positions; the transformer reads them with no causal mask; the outputs at non-pad positions are
averaged and a linear head maps the average to the shared space. As in I-JEPA and V-JEPA 2 the
predictor is a narrow bottleneck: its width is set on its own, well below the encoders'.
With ``quant="ternary"`` every linear layer but the head is a BitNet b1.58
:class:`~vljepa.kernels.bitlinear.BitLinear`, each after a norm.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import CachedTextPredictorConfig, TransformerPredictorConfig
from ..kernels.bitlinear import BitLinear, TernaryEncoder
from .base import JointPredictor, PredictorDims, QueryReader, masked_mean
from .queries import ContextualQuery

# nn.TransformerEncoderLayer parameter names -> TernaryBlock names (same tensors, same layout:
# nn.MultiheadAttention's in_proj stacks q, k, v along the output dim, as TernaryBlock.qkv does).
_TERNARY_RENAMES = (("self_attn.in_proj_weight", "qkv.weight"),
                    ("self_attn.in_proj_bias", "qkv.bias"),
                    ("self_attn.out_proj.", "proj."), ("linear1.", "fc1."), ("linear2.", "fc2."))


class TransformerPredictor(JointPredictor):
    """``kind="transformer"``: the bidirectional transformer predictor over the Y-encoder's
    static word vectors of the query (its tokenizer and token table).

    Args:
        cfg: sizes (width W, depth, heads, MLP ratio, dropout, max query length, visual pooling
            and slots) and ``quant`` ("none" or "ternary").
        dims: Dx, N, the grid, D and Dq (the query states' width).
        query: the query reader (:meth:`query_reader`); None builds a predictor that takes
            query states only (a serving bundle stores them).
    Raises:
        ValueError: ``dims.query_dim`` is None; ``visual_pool > 1`` without a token grid.
    """

    Config = TransformerPredictorConfig
    query_form = "token_table"
    lean_servable = True

    def __init__(self, cfg: TransformerPredictorConfig, dims: PredictorDims,
                 query: QueryReader | None = None):
        super().__init__(cfg, dims, query)
        if dims.query_dim is None:
            raise ValueError(f"predictor kind {cfg.kind!r} needs dims.query_dim (the query "
                             "states' width)")
        W = cfg.width
        Lin = BitLinear if cfg.quant == "ternary" else nn.Linear
        # The input projections are quantised too (they hold a quarter of the weights); their
        # LayerNorm is the norm BitNet puts before each quantised input.
        num_visual = self.init_visual(cfg, dims, W, Lin)
        self.query_proj = nn.Sequential(nn.LayerNorm(dims.query_dim), Lin(dims.query_dim, W))
        self.visual_pos = nn.Parameter(torch.zeros(1, num_visual, W))
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
        self.head = nn.Linear(W, dims.embed_dim)  # the head stays full precision, as in BitNet

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None,
                query_mask: torch.Tensor | None) -> torch.Tensor:
        """visual (B, N, Dx), query states (B, L, Dq) or None, mask (B, L) -> Ŝ_Y (B, D).

        Raises ValueError when L > ``max_query_len``."""
        if query is not None:
            if query.shape[1] > self.cfg.max_query_len:
                raise ValueError(f"query has {query.shape[1]} tokens; the predictor takes at "
                                 f"most {self.cfg.max_query_len} (predictor.max_query_len)")
            query = self.query_proj(query) + self.query_pos[:, :query.shape[1]]  # (B, L, W)
        x, keep = self.joint_input(visual, query, query_mask)  # (B, N'+L, W), (B, N'+L)
        x = self.blocks(x, src_key_padding_mask=~keep)  # bidirectional: no causal mask
        return self.head(masked_mean(x, keep))  # (B, D)

    def describe(self) -> str:
        c = self.cfg
        return (f"`{c.kind}`, width {c.width}, depth {c.depth}, {c.heads} heads"
                + (", ternary (BitNet b1.58, packed)" if c.quant == "ternary" else ""))

    @staticmethod
    def ternary_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full-precision model's trained tensors renamed to a ternary twin's (latent) names
        (keys from the model root: ``predictor.blocks.layers.*``); other keys pass through."""
        out = {}
        for key, value in state.items():
            if key.startswith("predictor.blocks.layers."):
                for old, new in _TERNARY_RENAMES:
                    key = key.replace(old, new)
            out[key] = value
        return out


class CachedTextPredictor(TransformerPredictor):
    """``kind="cached_text"``: :class:`TransformerPredictor` reading the query as a frozen
    pretrained text encoder's contextual states (``cfg.text_model``, None: the Y-encoder's own),
    computed once per distinct question (:class:`~vljepa.predictors.queries.ContextualQuery`)."""

    Config = CachedTextPredictorConfig
    query_form = "cached_states"

    @classmethod
    def query_reader(cls, cfg: CachedTextPredictorConfig, y_encoder: nn.Module) -> ContextualQuery:
        return ContextualQuery(cfg.text_model, y_encoder, cfg.max_query_len,
                               cfg.text_state_layers)

    def describe(self) -> str:
        return super().describe() + f", query states of `{self.cfg.text_model or 'the Y-encoder'}`"
