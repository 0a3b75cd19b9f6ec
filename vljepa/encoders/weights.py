"""What every frozen pretrained part shares: staying frozen, reading weights safely, and the
fingerprints that tie a checkpoint (or a feature cache) to the exact weights it was made with.
"""
from __future__ import annotations

import hashlib
import os

import torch
from torch import nn


class FrozenMixin:
    """Keeps a module in eval mode with no trainable parameters."""

    def freeze(self):
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # noqa: D102 - frozen modules ignore train()
        return super().train(False)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read weights safely: safetensors, or torch.load(weights_only=True) (never unpickles code)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"X-encoder weights file not found: {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def tensors_digest(tensors, seed: str = "") -> str:
    """A fingerprint of named tensors: SHA-256 over ``seed`` and each (name, raw bytes) pair, in
    the order given, as 16 hex digits. ``tensors`` is an iterable of (name, tensor)."""
    h = hashlib.sha256(seed.encode())
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def weights_fingerprint(name: str, module: nn.Module) -> str:
    """A hash of a pretrained module's name and every tensor (parameters and buffers)."""
    return tensors_digest(list(module.named_parameters()) + list(module.named_buffers()), name)


def freeze_unsaved(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a non-persistent buffer: frozen, moved by
    ``.to()``, left out of ``state_dict`` (so out of checkpoints: it comes back with the
    pretrained model). Returns ``module``, in eval mode."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, p.detach(), persistent=False)
    return module.eval()
