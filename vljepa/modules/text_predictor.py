"""The language-aware predictor: the last layers of a pretrained bidirectional text encoder read
[visual tokens; query] (``predictor.kind="text"``; paper §3 at CPU scale).

The paper's predictor is the last 8 layers of Llama-3.2-1B with the causal mask removed, so it
starts out understanding language and only learns to bring vision in. Here the encoder is, by
default, the Y-encoder's own all-MiniLM-L6-v2 (6 bidirectional layers, width 384, trained for
paraphrase similarity):

    query ──its tokenizer──► ids (B, L) ──token + position embeddings, first (depth - N) layers
        (frozen; kept per distinct question)──► (B, L, W)                                     ┐
    visual tokens (B, N, Dx) ──pool, LayerNorm, linear, + learned positions──► (B, N', W)    ┴►
    [v; q] (B, N'+L, W) ──last N layers (pretrained, bidirectional, padding mask)──► mean over
    non-pad tokens ──linear head──► Ŝ_Y (B, D)

The frozen parts (token table, position embeddings, the lower layers) are non-persistent
buffers: not trained, not saved, re-read from the pretrained encoder when a model is loaded and
checked by fingerprint, as the frozen X- and Y-encoders are. The cheaper option for small CPUs,
``kind="cached_text"`` (the small predictor over the frozen encoder's contextual states), is
:class:`vljepa.modules.queries.ContextualQuery` feeding :class:`vljepa.modules.predictor.Predictor`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import PredictorConfig
from .encoders import XEncoder, YEncoder, pool_tokens, pooled_grid, visual_slots
from .queries import (QueryStates, bert_tokenize, freeze_unsaved, load_text_encoder, run_layers,
                      weights_fingerprint)


class TextPredictor(nn.Module):
    """``kind="text"``: the last ``cfg.text_layers`` layers of a pretrained text encoder read
    [visual tokens; query] bidirectionally (see the module docstring).

    Args:
        cfg: ``text_model`` (None: the Y-encoder's, read again from its package: these layers
            train, the Y-encoder's stay as they are), ``text_layers`` (None: all),
            ``text_train_layers`` (how many of those, from the top, train; None: all),
            ``text_lr_mult``, ``max_query_len``, ``visual_pool``, ``visual_slots``, ``dropout``.
            Width and heads are the text encoder's.
        x_encoder: gives Dx, N (before pooling) and the CNN token grid (h, w).
        y_encoder: names the default text encoder.
        embed_dim: D, the shared space.
    Raises:
        ValueError: ``text_layers`` / ``text_train_layers`` out of range, ``visual_pool > 1``
            without a grid, or a non-BERT-style text encoder. RuntimeError: it cannot be loaded.
    """

    def __init__(self, cfg: PredictorConfig, x_encoder: XEncoder, y_encoder: YEncoder,
                 embed_dim: int):
        super().__init__()
        visual_dim, num_visual_tokens, grid = x_encoder.dim, x_encoder.num_tokens, x_encoder.grid
        name = cfg.text_model or (y_encoder.cfg.name
                                  if y_encoder.cfg.backend == "sentence-transformers" else None)
        if not name:
            raise ValueError("predictor.kind=text needs predictor.text_model (the Y-encoder is "
                             "not a sentence-transformers model)")
        if cfg.visual_pool > 1 and grid is None:
            raise ValueError("predictor.visual_pool > 1 needs an X-encoder with a token grid")
        encoder, self.tokenizer = load_text_encoder(name, cfg.dropout)
        layers = list(encoder.encoder.layer)
        depth = len(layers)
        n = depth if cfg.text_layers is None else cfg.text_layers
        if not 1 <= n <= depth:
            raise ValueError(f"predictor.text_layers must be in 1..{depth} for {name!r}, got {n}")
        n_train = n if cfg.text_train_layers is None else cfg.text_train_layers
        if not 0 <= n_train <= n:
            raise ValueError(f"predictor.text_train_layers must be in 0..{n} (text_layers), "
                             f"got {n_train}")
        self.cfg, self.grid = cfg, grid
        self.lr_mults = {"layers.": cfg.text_lr_mult}  # the pretrained layers' learning rate
        # The lower layers see the query alone, as in pretraining, and never change: memoised.
        self.query_states = QueryStates(encoder.embeddings, layers[:depth - n],
                                        self.tokenizer.pad_token_id)
        self.layers = nn.ModuleList(layers[depth - n:])
        for layer in self.layers[:n - n_train]:  # frozen joint layers: not trained, not saved
            freeze_unsaved(layer)
        # what is re-read from the package, not saved: checked against the checkpoint's record
        frozen = nn.ModuleList([self.query_states, *self.layers[:n - n_train]])
        self.fingerprint = weights_fingerprint(name, frozen)
        self.width = W = encoder.config.hidden_size
        if cfg.visual_pool > 1:
            h, w = pooled_grid(grid, cfg.visual_pool)
            num_visual_tokens = h * w
        self.slots, visual_dim, num_visual_tokens = visual_slots(cfg, visual_dim,
                                                                 num_visual_tokens)
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, W))
        # the text encoder's position table covers the query; the visual tokens learn their own
        self.visual_pos = nn.Parameter(torch.zeros(1, num_visual_tokens, W))
        nn.init.trunc_normal_(self.visual_pos, std=0.02)
        self.head = nn.Linear(W, embed_dim)
        del encoder  # its pooler (and any unused part) is dropped

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions -> (ids (B, L) int64, mask (B, L) bool) with the text encoder's tokenizer,
        L <= max_query_len."""
        return bert_tokenize(self.tokenizer, texts, self.cfg.max_query_len)

    def embed_query(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> frozen query states (B, L, W): embeddings + the lower layers, memoised."""
        return self.query_states(ids)

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
            query: query states (B, L, W) from :meth:`embed_query`, or None (query-free).
            query_mask: (B, L) bool, True at real tokens.
        Returns:
            Ŝ_Y (B, D) float, not normalised.
        Raises:
            ValueError: the query is longer than ``max_query_len``.
        """
        v = self.visual_proj(self.pool_visual(visual)) + self.visual_pos  # (B, N', W)
        keep = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        x = v
        if query is not None:
            if query.shape[1] > self.cfg.max_query_len:
                raise ValueError(f"query has {query.shape[1]} tokens; the predictor takes at "
                                 f"most {self.cfg.max_query_len} (predictor.max_query_len)")
            x = torch.cat([v, query.to(v.dtype)], 1)  # visual tokens before the query
            keep = torch.cat([keep, query_mask.bool()], 1)
        x = run_layers(self.layers, x, keep)  # (B, N'+L, W), bidirectional
        w = keep.unsqueeze(-1).to(x.dtype)
        return self.head((x * w).sum(1) / w.sum(1))  # mean over non-pad tokens -> (B, D)
