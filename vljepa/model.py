"""VLJEPA: the whole model, from images and questions to the shared embedding space.

    image ──X-encoder (frozen)──► visual tokens (B, N, Dx) ─┐
    question ──tokenizer──► query tokens (B, L) ────────────┴─► predictor ─► Ŝ_Y (B, D)
    target text ──Y-encoder──► (B, Dy) ──y_head──► S_Y (B, D)

Answering is discriminative (paper §3, inference): embed the candidate answers with the
Y-encoder and pick the one whose S_Y is nearest (cosine) to Ŝ_Y. No tokens are generated.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .encoders import XEncoder, YEncoder
from .images import load_image
from .losses import get_loss, init_logit_scale
from .predictor import Predictor


def check_texts(texts: Sequence[str], what: str) -> list[str]:
    """Raise a clear error for a non-list, a non-string or an empty/blank string."""
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, got a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{what}[{i}] is empty")
    return out


class VLJEPA(nn.Module):
    """A VL-JEPA model (arXiv 2512.10942 §3).

    Build it with :func:`vljepa.create_model` or load it with :func:`vljepa.load`.
    All public embeddings are L2-normalised float32 of width D = ``config.embed_dim``.
    """

    def __init__(self, config: ModelConfig | dict):
        super().__init__()
        self.config = config = ModelConfig.from_dict(config)
        self.x_encoder = XEncoder(config.x_encoder)
        self.y_encoder = YEncoder(config.y_encoder)
        self.predictor = Predictor(config.predictor, self.x_encoder.dim, self.x_encoder.num_tokens,
                                   self.x_encoder.grid, self.y_encoder.vocab_dim, config.embed_dim)
        self.y_head = nn.Linear(self.y_encoder.dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(init_logit_scale(config.loss.temperature)),
                                        requires_grad=config.loss.learn_temperature)
        self.loss_fn = get_loss(config.loss.kind)

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # ---- building blocks used by training (features may come from the cache) ----

    def tokenize_queries(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B questions -> (ids (B, L) int64, mask (B, L) bool), L <= predictor.max_query_len.

        Raises ValueError for an empty question, TypeError for a non-string.
        """
        queries = check_texts(queries, "questions")
        return self.y_encoder.tokenize(queries, self.config.predictor.max_query_len)

    def forward(self, visual: torch.Tensor, query_ids: torch.Tensor | None = None,
                query_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Visual tokens (B, N, Dx) + query ids/mask (B, L) -> Ŝ_Y (B, D), not normalised.

        Query token embeddings come from the Y-encoder's own token table, detached, so the
        predictor starts from pretrained lexical knowledge and never moves the table itself.
        """
        query = None
        if query_ids is not None:
            table = self.y_encoder.token_embedding.weight.detach()
            query = F.embedding(query_ids.to(self.device), table)  # (B, L, Dq)
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
        return self.loss_fn(pred, target, scale, target_ids)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: predictor and heads at ``lr``; norms, biases, positional embeddings
        and the logit scale without weight decay; a trainable Y-encoder at ``lr * lr_mult``."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith(("y_encoder.", "x_encoder.")):
                continue
            (no_decay if p.ndim < 2 or name.endswith("_pos") else decay).append(p)
        groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
                  {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
        y_params = [p for p in self.y_encoder.parameters() if p.requires_grad]
        if y_params:
            groups.append({"params": y_params, "lr": lr * self.config.y_encoder.lr_mult,
                           "weight_decay": weight_decay})
        return groups

    # ---- user API: raw inputs in, unit vectors or answers out ----

    @torch.no_grad()
    def visual_tokens(self, images: Sequence[Any], batch_size: int = 64) -> torch.Tensor:
        """Images (PIL, paths, arrays or tensors; see :func:`vljepa.images.load_image`) ->
        visual tokens (B, N, Dx) float32. Runs the frozen X-encoder."""
        images = list(images)
        if not images:
            raise ValueError("no images given")
        out = []
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([self.x_encoder.transform(load_image(im))
                                  for im in images[i:i + batch_size]])
            out.append(self.x_encoder(pixels.to(self.device)))
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, images: Sequence[Any], queries: Sequence[str]) -> torch.Tensor:
        """Images and one question each -> predicted answer embeddings Ŝ_Y (B, D), unit norm."""
        queries = check_texts(queries, "questions")
        images = list(images)
        if len(images) != len(queries):
            raise ValueError(f"{len(images)} images but {len(queries)} questions")
        ids, mask = self.tokenize_queries(queries)
        return F.normalize(self(self.visual_tokens(images), ids, mask), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> S_Y (B, D), unit norm: the Y-encoder followed by its head."""
        return F.normalize(self.target_embed(texts), dim=-1)

    @torch.no_grad()
    def answer(self, images: Sequence[Any], questions: Sequence[str],
               candidates: Sequence[str]) -> tuple[list[str], torch.Tensor]:
        """Answer each question by the nearest candidate text in the shared space.

        Returns:
            (answers: B strings, scores: (B,) float32 cosine similarity of the chosen answer).
        """
        candidates = check_texts(candidates, "candidates")
        if not candidates:
            raise ValueError("no candidate answers given")
        sims = self.predict(images, questions) @ self.embed_text(candidates).T  # (B, C)
        scores, idx = sims.max(1)
        return [candidates[i] for i in idx.tolist()], scores

    def save_pretrained(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors``; see :func:`vljepa.save_pretrained`."""
        from .factory import save_pretrained
        save_pretrained(self, directory)
