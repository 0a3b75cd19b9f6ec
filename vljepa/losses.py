"""Training objectives between predicted (Ŝ_Y) and target (S_Y) embeddings.

Paper §3 trains with bidirectional InfoNCE; §4's ablations compare cosine, L1 and L2 regression.
All losses compare unit-normalised embeddings.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def positives_mask(target_ids: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """(B, B) bool: True where two rows share a target. Without ids, only the diagonal."""
    if target_ids is None:
        return torch.eye(batch, dtype=torch.bool, device=device)
    if target_ids.shape != (batch,):
        raise ValueError(f"target_ids must have shape ({batch},), got {tuple(target_ids.shape)}")
    return target_ids[:, None] == target_ids[None, :]


def infonce(pred: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor | float,
            target_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional InfoNCE with multiple positives.

    Args:
        pred: Ŝ_Y (B, D); target: S_Y (B, D). Both are L2-normalised here.
        logit_scale: 1 / temperature (a scalar; CLIP's convention, already exponentiated).
        target_ids: (B,) int64; rows with equal ids have identical targets (in VQA many questions
            share an answer) and count as positives of each other, not as negatives.
    Returns:
        Scalar: the mean of the prediction->target and target->prediction losses, each
        ``-log(sum_{j in P(i)} exp(s_ij) / sum_j exp(s_ij))`` averaged over rows, with
        ``s = logit_scale * cos``. With distinct targets this is CLIP's symmetric loss.
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"pred and target must both be (B, D); got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    p, t = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
    logits = logit_scale * p @ t.T  # (B, B)
    pos = positives_mask(target_ids, len(p), p.device)

    def one_way(s: torch.Tensor) -> torch.Tensor:
        return (s.logsumexp(1) - s.masked_fill(~pos, float("-inf")).logsumexp(1)).mean()

    return 0.5 * (one_way(logits) + one_way(logits.T))


def cosine_loss(pred: torch.Tensor, target: torch.Tensor, logit_scale=None,
                target_ids=None) -> torch.Tensor:
    """Mean of 1 - cos(Ŝ_Y, S_Y) over rows: pred, target (B, D) float -> scalar in [0, 2]
    (paper §4 ablation). ``logit_scale`` and ``target_ids`` are accepted and unused, so every
    loss has InfoNCE's signature."""
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


def l1_loss(pred: torch.Tensor, target: torch.Tensor, logit_scale=None,
            target_ids=None) -> torch.Tensor:
    """Mean absolute error between unit-normalised embeddings: (B, D), (B, D) -> scalar
    (paper §4 ablation; the extra arguments as :func:`cosine_loss`)."""
    return F.l1_loss(F.normalize(pred, dim=-1), F.normalize(target, dim=-1))


def l2_loss(pred: torch.Tensor, target: torch.Tensor, logit_scale=None,
            target_ids=None) -> torch.Tensor:
    """Mean squared error between unit-normalised embeddings: (B, D), (B, D) -> scalar
    (paper §4 ablation; the extra arguments as :func:`cosine_loss`)."""
    return F.mse_loss(F.normalize(pred, dim=-1), F.normalize(target, dim=-1))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank in rank order -> (world * B, ...).

    Gradients flow back to each rank's own part (``torch.distributed.nn.all_gather``, as
    open_clip's ClipLoss does with ``gather_with_grad=True``): every rank computes the loss over
    the global batch, and DDP's gradient averaging then gives the global loss's gradient.
    Outside a multi-process run, ``x`` itself. All ranks must pass the same B.
    """
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn  # noqa: F401  (registers the autograd-aware collectives)
    return torch.cat(torch.distributed.nn.all_gather(x.contiguous()), 0)


def gather_ids(ids: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) target ids from every rank -> (world * B,), without gradients (they are labels)."""
    import torch.distributed as dist
    if ids is None or not (dist.is_available() and dist.is_initialized()) \
            or dist.get_world_size() == 1:
        return ids
    out = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(out, ids.contiguous())
    return torch.cat(out)


LOSSES = {"infonce": infonce, "cosine": cosine_loss, "l1": l1_loss, "l2": l2_loss}


def get_loss(kind: str):
    """The loss function for ``LossConfig.kind``; every one takes (pred, target, logit_scale,
    target_ids) and returns a scalar. Raises ValueError for an unknown kind."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[kind]


def init_logit_scale(temperature: float) -> float:
    """log(1 / temperature), the stored form of CLIP's learnable logit scale."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return math.log(1.0 / temperature)
