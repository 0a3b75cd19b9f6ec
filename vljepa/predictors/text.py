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
:class:`vljepa.predictors.queries.ContextualQuery` feeding :class:`vljepa.predictors.transformer.Predictor`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import TextPredictorConfig
from ..encoders.text_backbone import load_text_encoder, position_bias, run_layers
from ..encoders.weights import freeze_unsaved, weights_fingerprint
from .base import JointPredictor, PredictorDims, masked_mean, pretrained_layer_counts
from .queries import QueryStates, bert_tokenize


class TextPredictor(JointPredictor):
    """``kind="text"``: the last ``cfg.text_layers`` layers of a pretrained text encoder read
    [visual tokens; query] bidirectionally (see the module docstring).

    Args:
        cfg: ``text_model`` (a sentence-transformers name, hub id or dir; None: the Y-encoder's,
            given by :meth:`from_encoders` as ``text_model`` -- read again from its package:
            these layers train, the Y-encoder's stay as they are), ``text_layers``
            (None: all), ``text_train_layers`` (how many of those, from the top, train; None:
            all), ``text_lr_mult``, ``max_query_len``, visual pooling and slots, ``dropout``.
            Width and heads are the text encoder's.
        dims: Dx, N, the grid and D (``query_dim`` is the encoder's width, not needed).
        query: unused (this kind reads the query with its own lower layers).
        text_model: the encoder to load when ``cfg.text_model`` is None (the network passes the
            Y-encoder's sentence-transformers name).
    Raises:
        ValueError: no text model; ``text_layers`` / ``text_train_layers`` out of range,
            ``visual_pool > 1`` without a grid, or a non-BERT-style text encoder.
        RuntimeError: it cannot be loaded.
    """

    Config = TextPredictorConfig
    query_form = "cached_states"

    def __init__(self, cfg: TextPredictorConfig, dims: PredictorDims, query=None,
                 text_model: str | None = None):
        super().__init__(cfg, dims, None)
        name = cfg.text_model or text_model
        if not name:
            raise ValueError("predictor.kind=text needs predictor.text_model (the Y-encoder is "
                             "not a sentence-transformers model)")
        if cfg.visual_pool > 1 and dims.grid is None:
            raise ValueError("predictor.visual_pool > 1 needs an X-encoder with a token grid")
        self.text_model = name
        encoder, self.tokenizer = load_text_encoder(name, cfg.dropout)
        layers = list(encoder.encoder.layer)
        depth = len(layers)
        n, n_train = pretrained_layer_counts(depth, cfg.text_layers, cfg.text_train_layers, "text",
                                             name)
        self.lr_mults = {"layers.": cfg.text_lr_mult}  # the pretrained layers' learning rate
        # The lower layers see the query alone, as in pretraining, and never change: memoised.
        bias = position_bias(encoder)  # MPNet's, shared by every layer; None for BERT-style
        self.query_states = QueryStates(encoder.embeddings, layers[:depth - n],
                                        self.tokenizer.pad_token_id, bias=bias)
        self._bias = bias
        self.layers = nn.ModuleList(layers[depth - n:])
        for layer in self.layers[:n - n_train]:  # frozen joint layers: not trained, not saved
            freeze_unsaved(layer)
        # what is re-read from the package, not saved: checked against the checkpoint's record
        frozen = nn.ModuleList([self.query_states, *self.layers[:n - n_train]])  # (bias inside)
        self._fingerprint = weights_fingerprint(name, frozen)
        self.width = W = encoder.config.hidden_size
        num_visual = self.init_visual(cfg, dims, W)
        # the text encoder's position table covers the query; the visual tokens learn their own
        self.visual_pos = nn.Parameter(torch.zeros(1, num_visual, W))
        nn.init.trunc_normal_(self.visual_pos, std=0.02)
        self.head = nn.Linear(W, dims.embed_dim)
        del encoder  # its pooler (and any unused part) is dropped

    @classmethod
    def from_encoders(cls, cfg: TextPredictorConfig, dims: PredictorDims,
                      y_encoder: nn.Module | None) -> TextPredictor:
        """The query goes through this predictor's own frozen lower layers; the Y-encoder only
        names the default text encoder (its sentence-transformers model)."""
        st = y_encoder is not None and y_encoder.cfg.backend == "sentence-transformers"
        return cls(cfg, dims, None, text_model=y_encoder.cfg.name if st else None)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions -> (ids (B, L) int64, mask (B, L) bool) with the text encoder's tokenizer,
        L <= max_query_len."""
        return bert_tokenize(self.tokenizer, texts, self.cfg.max_query_len)

    def embed_query(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> frozen query states (B, L, W): embeddings + the lower layers, memoised."""
        return self.query_states(ids)

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None,
                query_mask: torch.Tensor | None) -> torch.Tensor:
        """visual (B, N, Dx), query states (B, L, W) or None, mask (B, L) -> Ŝ_Y (B, D), not
        normalised. Raises ValueError when L > ``max_query_len``."""
        x, keep = self.joint_input(visual, query, query_mask)  # (B, N'+L, W)
        x = run_layers(self.layers, x, keep, self._bias)  # bidirectional
        return self.head(masked_mean(x, keep))  # (B, D)

    def describe(self) -> str:
        c = self.cfg
        return (f"`text`, the last {c.text_layers or 'all'} layers of `{self.text_model}`, "
                f"width {self.width}")
