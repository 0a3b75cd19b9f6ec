"""The predictor contract: what every predictor kind is, takes and gives (paper §3, "Predictor").

    visual tokens (B, N, Dx) ──pool, slots, LayerNorm, linear──► (B, N', W) ┐
    query ──reader: tokenize, embed──► query states (B, L, Dq) ──────────────┴─► [v; q] (B, N'+L, W)
    ──► bidirectional layers ──► mean over non-pad positions ──► linear head ──► Ŝ_Y (B, D)

One contract for every kind, in the style of timm's models:

- **Built from dims**, never from encoder objects: :class:`PredictorDims` holds the visual
  tokens' width, count and grid, the query states' width and the shared space's width, so a
  serving bundle, a test or an export builds a predictor without loading any encoder.
- **Config**: each kind has its own dataclass (:mod:`vljepa.config`, ``Config`` here), holding
  only the fields it reads; ``quant`` modes it cannot run are refused there.
- **Query**: the kind's :meth:`Predictor.query_reader` builds what turns questions into query
  states (``tokenize`` then ``embed``): the Y-encoder's token table, a frozen text encoder's
  cached states, or the kind's own pretrained layers. ``query_form`` says which.
- **Weights**: everything in the predictor's ``state_dict`` trains and is saved; pretrained parts
  it re-reads instead of saving are frozen non-persistent buffers, identified by ``fingerprint``
  so that a checkpoint refuses other weights. ``lr_mults`` sets slower learning rates.
- **What the kind knows** -- whether a lean serving bundle can rebuild it
  (``lean_servable``), which quantisation it runs (``Config.QUANT_MODES``), how the model card
  describes it (:meth:`Predictor.describe`) -- lives with the kind, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence

import torch
from torch import nn

from ..config import JointPredictorConfig, PredictorConfig
from .queries import TokenTableQuery
from .visual import pool_tokens, pooled_grid, visual_slots


@dataclass(frozen=True)
class PredictorDims:
    """The sizes a predictor is built from.

    Attributes:
        visual_dim: Dx, the width of the visual tokens (the X-encoder's output).
        num_visual_tokens: N, their count per image.
        grid: (h, w) of the token grid of a CNN X-encoder (h * w == N), or None for ViT-style
            tokens; ``visual_pool > 1`` needs it.
        embed_dim: D, the width of the shared embedding space (the head's output).
        query_dim: Dq, the width of the query states the kind's reader gives; None for kinds
            that read the query with their own pretrained layers or not at all.
    """

    visual_dim: int
    num_visual_tokens: int
    grid: tuple[int, int] | None
    embed_dim: int
    query_dim: int | None = None


class QueryReader(Protocol):
    """Turns questions into query states (see :mod:`vljepa.predictors.queries`)."""

    dim: int  # Dq
    fingerprint: str | None  # a hash of pretrained weights it re-reads, or None

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B strings -> (ids (B, L) int64, mask (B, L) bool, True at real tokens)."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64 -> query states (B, L, Dq) float32, no gradient."""


class Predictor(nn.Module):
    """The base of every predictor kind: ``forward(visual, query, query_mask) -> Ŝ_Y (B, D)``.

    Subclasses set ``Config`` (their config dataclass) and ``query_form``, and implement
    ``__init__(cfg, dims, query)`` and :meth:`forward`; the rest has defaults here.

    Attributes:
        query_form: how the kind reads the question: "token_table" (static word vectors from a
            token table), "cached_states" (a frozen pretrained encoder's contextual states,
            computed once per distinct question), or "none" (the query is ignored).
        lean_servable: every weight the kind needs is in its state_dict, so a serving bundle
            (:mod:`vljepa.serving`) rebuilds it from dims and stored query states alone.
        lr_mults: parameter-name prefix -> learning-rate multiplier (pretrained layers).
        fingerprint: a hash of the pretrained weights it re-reads rather than saves, or None.
    """

    Config: ClassVar[type[PredictorConfig]]
    query_form: ClassVar[str] = "token_table"
    lean_servable: ClassVar[bool] = False
    lr_mults: dict[str, float] = {}

    def __init__(self, cfg: PredictorConfig, dims: PredictorDims, query: QueryReader | None):
        super().__init__()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"{type(self).__name__} takes a {self.Config.__name__}, "
                            f"got {type(cfg).__name__}")
        self.cfg, self.dims = cfg, dims
        self.query = query

    @classmethod
    def query_reader(cls, cfg: PredictorConfig, y_encoder: nn.Module) -> QueryReader | None:
        """The reader this kind's queries go through, given the model's Y-encoder (default: the
        Y-encoder's tokenizer and token table); None for a kind that builds its own."""
        return TokenTableQuery(y_encoder, getattr(cfg, "max_query_len", 24))

    @classmethod
    def from_encoders(cls, cfg: PredictorConfig, dims: PredictorDims,
                      y_encoder: nn.Module | None) -> Predictor:
        """Build with the query reader made from the model's Y-encoder (:meth:`query_reader`);
        without one (None), a predictor that takes query states only."""
        reader = cls.query_reader(cfg, y_encoder) if y_encoder is not None else None
        if reader is not None and dims.query_dim is None:
            dims = PredictorDims(dims.visual_dim, dims.num_visual_tokens, dims.grid,
                                 dims.embed_dim, reader.dim)
        return cls(cfg, dims, reader)

    @property
    def fingerprint(self) -> str | None:
        return getattr(self.query, "fingerprint", None)

    # ---- the query: tokenize, then embed (detached from any pretrained table) ----

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B questions -> (ids (B, L) int64, mask (B, L) bool, True at real tokens).

        Raises RuntimeError when the predictor was built without a query reader (a serving
        bundle's: it stores the query states of its questions instead)."""
        return self._reader().tokenize(texts)

    def embed_query(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64 -> query states (B, L, Dq) float32, no gradient."""
        return self._reader().embed(ids)

    def _reader(self) -> QueryReader:
        if self.query is None:
            raise RuntimeError(f"this {type(self).__name__} has no query reader (built from "
                               "stored query states): pass query states to forward()")
        return self.query

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None,
                query_mask: torch.Tensor | None) -> torch.Tensor:
        """Predict Ŝ_Y.

        Args:
            visual: visual tokens (B, N, Dx) float.
            query: query states (B, L, Dq) float from :meth:`embed_query`, or None for a
                query-free prediction (captioning, the paper's VL-JEPA_BASE).
            query_mask: (B, L) bool, True at real tokens.
        Returns:
            Ŝ_Y (B, D) float, not normalised (the loss and the retrieval normalise).
        """
        raise NotImplementedError

    def describe(self) -> str:
        """The model card's one-line description of this predictor."""
        quant = ", ternary (BitNet b1.58, packed)" if self.cfg.quant == "ternary" else ""
        return f"`{self.cfg.kind}`{quant}"


class JointPredictor(Predictor):
    """The kinds that read [visual tokens; query states] jointly with bidirectional attention:
    the visual input (pooling, slots, projection to the width W, learned positions) and the mean
    over non-pad outputs, shared here."""

    def init_visual(self, cfg: JointPredictorConfig, dims: PredictorDims, width: int,
                    linear: type[nn.Module] = nn.Linear) -> int:
        """Create ``slots`` (or None) and ``visual_proj`` (LayerNorm, then ``linear`` to the width
        W) for the visual tokens; return N', their count after pooling and slots. (The caller
        creates its positions, so that parameters are created, and drawn, in its own order.)

        Raises ValueError for ``visual_pool > 1`` without a token grid."""
        n = dims.num_visual_tokens
        if cfg.visual_pool > 1:
            if dims.grid is None:
                raise ValueError("predictor.visual_pool > 1 needs an X-encoder with a token grid")
            h, w = pooled_grid(dims.grid, cfg.visual_pool)
            n = h * w
        # optional learned slots after the pooling: (B, N', Dx) -> (B, M, H)
        self.slots, visual_dim, n = visual_slots(cfg, dims.visual_dim, n, width)
        # The LayerNorm is also the norm BitNet puts before each quantised input.
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim), linear(visual_dim, width))
        return n

    def pool_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, N, Dx) -> (B, N', Dx), the token grid average-pooled by ``cfg.visual_pool``; then,
        with ``cfg.visual_slots`` = M, (B, M, H) learned slots."""
        v = pool_tokens(visual, self.dims.grid, self.cfg.visual_pool)
        return v if self.slots is None else self.slots(v)

    def project_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, N, Dx) -> (B, N', W): pooled (and slotted) visual tokens in the joint width."""
        return self.visual_proj(self.pool_visual(visual))

    def joint_input(self, visual: torch.Tensor, query: torch.Tensor | None,
                    query_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """[projected visual tokens; query] (B, N'+L, W) and its keep mask (B, N'+L) bool.

        ``query`` is already (B, L, W) (projected by the caller when its width differs).
        Raises ValueError when the query is longer than ``max_query_len``."""
        if self.training and self.cfg.visual_mixstyle and torch.rand(()) < self.cfg.visual_mixstyle:
            visual = mix_style(visual)  # (B, N, Dx), other styles' statistics
        v = self.project_visual(visual)  # (B, N', W)
        pos = getattr(self, "visual_pos", None)  # learned (1, N', W); none: the layers' own (RoPE)
        if pos is not None:
            v = v + pos
        if self.training and self.cfg.visual_token_drop:
            v = drop_tokens(v, self.cfg.visual_token_drop)  # (B, K, W), K ~ (1 - drop) N'
        keep = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        if query is None:
            return v, keep
        if query.shape[1] > self.cfg.max_query_len:
            raise ValueError(f"query has {query.shape[1]} tokens; the predictor takes at most "
                             f"{self.cfg.max_query_len} (predictor.max_query_len)")
        x = torch.cat([v, query.to(v.dtype)], 1)  # visual tokens before the query (paper §3)
        return x, torch.cat([keep, query_mask.to(v.device).bool()], 1)


def pretrained_layer_counts(depth: int, layers: int | None, train_layers: int | None,
                            field: str, model: str) -> tuple[int, int]:
    """(n, n_train) for a predictor built on the top of a ``depth``-layer pretrained stack: the
    top ``layers`` of it (all when None), of which the top ``train_layers`` train (all n when
    None). ``field`` names the config fields in errors ("llm" -> ``predictor.llm_layers``).

    Raises ValueError: n outside 1..depth, or n_train outside 0..n (naming the field and model).
    """
    n = depth if layers is None else layers
    if not 1 <= n <= depth:
        raise ValueError(f"predictor.{field}_layers must be in 1..{depth} for {model!r}, got {n}")
    n_train = n if train_layers is None else train_layers
    if not 0 <= n_train <= n:
        raise ValueError(f"predictor.{field}_train_layers must be in 0..{n} ({field}_layers), "
                         f"got {n_train}")
    return n, n_train


def drop_tokens(x: torch.Tensor, share: float) -> torch.Tensor:
    """Keep a random ``1 - share`` of the tokens of each row, in their order (FLIP's token
    masking, Li et al. 2023): x (B, N, W) -> (B, K, W), K = max(1, round((1 - share) N))."""
    B, N, W = x.shape
    k = max(1, round((1 - share) * N))
    idx = torch.rand(B, N, device=x.device).argsort(1)[:, :k].sort(1).values  # (B, K)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, W))


def mix_style(x: torch.Tensor, alpha: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """MixStyle (Zhou et al., ICLR 2021) over visual tokens x (B, N, Dx) -> (B, N, Dx): each row's
    per-channel token mean and standard deviation are replaced by ``lam`` of its own plus
    ``1 - lam`` of another row's (a random permutation of the batch), ``lam ~ Beta(alpha,
    alpha)`` per row; the paper's alpha 0.1. The statistics are not back-propagated through, as
    in the paper. A batch of one row is returned as it is."""
    B = x.shape[0]
    if B < 2:
        return x
    mu = x.mean(1, keepdim=True)  # (B, 1, Dx)
    sig = (x.var(1, keepdim=True) + eps).sqrt()
    mu, sig = mu.detach(), sig.detach()
    normed = (x - mu) / sig
    lam = torch.distributions.Beta(alpha, alpha).sample((B, 1, 1)).to(x.device, x.dtype)
    perm = torch.randperm(B, device=x.device)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return normed * sig_mix + mu_mix


def masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over the kept positions: x (B, T, W), keep (B, T) bool -> (B, W)."""
    w = keep.unsqueeze(-1).to(x.dtype)
    return (x * w).sum(1) / w.sum(1)
