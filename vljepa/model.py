"""VLJEPA: the network, from visual tokens and questions to the shared embedding space.

    image ──X-encoder (frozen)──► visual tokens (B, N, Dx) ─┐
    question ──tokenizer──► query tokens (B, L) ────────────┴─► predictor ─► Ŝ_Y (B, D)
    target text ──Y-encoder──► (B, Dy) ──y_head──► S_Y (B, D)

Answering is discriminative (paper §3, inference): embed the candidate answers with the
Y-encoder and pick the one whose S_Y is nearest (cosine) to Ŝ_Y. No tokens are generated.

The class is put together from three files, one job each: this one is the network (encoders +
predictor + heads: tensors in, tensors out, the loss and the optimizer groups);
:mod:`vljepa.api` is what users call (images and texts in, unit vectors and answers out); and
:mod:`vljepa.hub` is persistence (save_pretrained / from_pretrained / push_to_hub / the card).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .api import VLJEPAInterface
from .config import ModelConfig, YDecoderConfig
from .decoders.y_decoder import YDecoder
from .encoders import XEncoder, YEncoder
from .hub import PretrainedMixin
from .inputs import check_texts
from .losses import gather_ids, gather_with_grad, get_loss, init_logit_scale
from .predictors import PredictorDims, create_predictor
from .predictors.queries import add_query_noise


def weight_decay_groups(module: nn.Module, lr: float, weight_decay: float,
                        skip: tuple[str, ...] = ("x_encoder.", "y_encoder."),
                        lr_mults: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``module``'s trainable parameters outside ``skip``: weights at
    ``weight_decay``; norms, biases and positional embeddings (1-D tensors, names ending in
    "pos") without decay, as in GPT-2 / timm. ``lr_mults`` (name prefix -> multiplier) puts
    matching parameters at ``lr * multiplier`` (pretrained layers that should move slowly)."""
    groups: dict[tuple[float, bool], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad or name.startswith(skip):
            continue
        mult = next((m for prefix, m in (lr_mults or {}).items() if name.startswith(prefix)), 1.0)
        no_decay = p.ndim < 2 or name.endswith("pos")
        groups.setdefault((mult, no_decay), []).append(p)
    groups.setdefault((1.0, False), [])
    groups.setdefault((1.0, True), [])
    return [{"params": ps, "lr": lr * mult, "weight_decay": 0.0 if no_decay else weight_decay}
            for (mult, no_decay), ps in sorted(groups.items())]


class VLJEPA(VLJEPAInterface, PretrainedMixin, nn.Module):
    """A VL-JEPA model (arXiv 2512.10942 §3): the network here, the user API from
    :class:`~vljepa.api.VLJEPAInterface`, persistence from :class:`~vljepa.hub.PretrainedMixin`.

    Build it with :func:`vljepa.create_model` or load it with :func:`vljepa.load`.
    All public embeddings are L2-normalised float32 of width D = ``config.embed_dim``.
    """

    def __init__(self, config: ModelConfig | dict):
        super().__init__()
        self.config = config = ModelConfig.from_dict(config)
        self.x_encoder = XEncoder(config.x_encoder)
        self.y_encoder = YEncoder(config.y_encoder)
        dims = PredictorDims(self.x_encoder.dim, self.x_encoder.num_tokens, self.x_encoder.grid,
                             config.embed_dim)
        self.predictor = create_predictor(config.predictor, dims, self.y_encoder)
        self.y_head = nn.Linear(self.y_encoder.dim, config.embed_dim)
        if config.y_encoder.head_lr_mult == 0:
            self.y_head.requires_grad_(False)
        self.logit_scale = nn.Parameter(torch.tensor(init_logit_scale(config.loss.temperature)),
                                        requires_grad=config.loss.learn_temperature)
        self.loss_fn = get_loss(config.loss.kind)
        # answer()'s default candidates: the training answer vocabulary, saved with the model
        self.answers: list[str] | None = None
        # what training knows for the model card: datasets, metrics, recipe (hub.model_card)
        self.card: dict[str, Any] = {}
        self.y_decoder: YDecoder | None = None
        if config.y_decoder is not None:
            self.y_decoder = YDecoder(config.y_decoder, self.y_encoder, config.embed_dim)

    def add_y_decoder(self, config: YDecoderConfig | dict | None = None) -> YDecoder:
        """Give the model a (new, untrained) Y-decoder; its config is saved with the model.
        Raises RuntimeError if it already has one."""
        if self.y_decoder is not None:
            raise RuntimeError("this model already has a Y-decoder")
        cfg = YDecoderConfig(**dict(config or {})) if not isinstance(config, YDecoderConfig) \
            else config
        self.config.y_decoder = cfg
        self.y_decoder = YDecoder(cfg, self.y_encoder, self.config.embed_dim).to(self.device)
        return self.y_decoder

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # ---- building blocks used by training (features may come from the cache) ----

    def tokenize_queries(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B questions -> (ids (B, L) int64, mask (B, L) bool), L <= predictor.max_query_len.

        Raises ValueError for an empty question, TypeError for a non-string.
        """
        return self.predictor.tokenize(check_texts(queries, "questions"))

    def forward(self, visual: torch.Tensor, query_ids: torch.Tensor | None = None,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Visual tokens (B, N, Dx) + query ids/mask (B, L) -> Ŝ_Y (B, D), not normalised.

        Query token embeddings come from the predictor's own query reader (the Y-encoder's
        token table, or for an LLM predictor the LM's), detached, so the predictor starts from
        pretrained lexical knowledge and never moves the table itself. In training mode they get
        ``predictor.query_noise`` (:func:`~vljepa.predictors.queries.add_query_noise`).
        """
        query = None
        if query_ids is not None and self.predictor.query_form != "none":
            query = self.predictor.embed_query(query_ids.to(self.device))  # (B, L, Dq)
            if self.training:  # predictor.query_noise, for every kind that reads the query
                query = add_query_noise(query, self.config.predictor.query_noise)
            query_mask = query_mask.to(self.device)
        return self.predictor(visual.to(self.device, torch.float32), query, query_mask)

    def target_embed(self, texts: Sequence[str]) -> torch.Tensor:
        """B target texts -> S_Y (B, D), not normalised. Gradients reach the Y-encoder only when
        it is trainable; the head always trains."""
        return self.y_head(self.y_encoder(check_texts(texts, "target texts")).to(self.device))

    def loss(self, pred: torch.Tensor, target: torch.Tensor,
             target_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The configured objective (InfoNCE by default) between Ŝ_Y and S_Y, (B, D) each."""
        scale = self.logit_scale.exp().clamp(max=100.0)  # CLIP's cap on 1/temperature
        if self.config.loss.kind == "infonce" and self.config.loss.gather:
            # negatives from every rank (a no-op in one process): open_clip's gather_with_grad
            pred, target = gather_with_grad(pred), gather_with_grad(target)
            target_ids = gather_ids(target_ids)
        return self.loss_fn(pred, target, scale, target_ids)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: predictor and heads at ``lr`` (a predictor's pretrained layers at
        its ``lr_mults``, the Y-side head at ``y_encoder.head_lr_mult``); norms, biases,
        positional embeddings and the logit scale without weight decay; a trainable Y-encoder at
        ``lr * lr_mult``."""
        mults = {f"predictor.{k}": m for k, m in self.predictor.lr_mults.items()}
        mults["y_head."] = self.config.y_encoder.head_lr_mult
        groups = weight_decay_groups(self, lr, weight_decay, lr_mults=mults)
        y_params = [p for p in self.y_encoder.parameters() if p.requires_grad]
        if y_params:
            groups.append({"params": y_params, "lr": lr * self.config.y_encoder.lr_mult,
                           "weight_decay": weight_decay})
        return groups

    # ---- save / load: config.json + model.safetensors (vljepa.hub) ----

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold: all but the frozen encoders' (the X-encoder, and
        the Y-encoder unless it trains), detached, on the CPU."""
        frozen = ["x_encoder."]
        if not self.config.y_encoder.trainable:
            frozen.append("y_encoder.")
        out, seen = {}, set()
        for k, v in self.state_dict().items():
            if k.startswith(tuple(frozen)):
                continue
            if v.numel() and (v.data_ptr(), v.shape) in seen:
                continue  # an alias (e.g. the Y-encoder's token table): saved once, first name
            seen.add((v.data_ptr(), v.shape))
            out[k] = v.detach().cpu().contiguous()
        return out

    def load_trained(self, state: dict[str, torch.Tensor], source: str) -> VLJEPA:
        """Load trained tensors (:meth:`trained_state_dict`'s keys) into this model.

        Raises ValueError naming the tensors missing, unexpected or of the wrong shape, and
        ``source`` (the file they came from)."""
        expected = self.trained_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong:
            raise ValueError(f"{source} does not fit this model config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
        self.load_state_dict(state, strict=False)
        return self

