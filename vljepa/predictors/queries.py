"""How a predictor reads the question: query readers (tokenize, then embed to query states).

A query reader has one interface, which every predictor exposes through ``tokenize`` and
``embed_query``:

    tokenize(B strings) -> (ids (B, L) int64, mask (B, L) bool, True at real tokens)
    embed(ids (B, L))   -> query token vectors (B, L, Dq) float32, no gradient
    dim                 -> Dq

:class:`TokenTableQuery` reads static word vectors from the Y-encoder's token table (the
predictor must learn all of its language from the training questions). :class:`ContextualQuery`
reads a frozen pretrained text encoder's contextual token states (by default the Y-encoder's own
all-MiniLM-L6-v2, trained on a billion sentence pairs for paraphrase similarity), computed once
per distinct question and kept, as the feature cache keeps the visual tokens: the predictor
starts with language understanding and only learns to bring vision in (paper §3 starts its
predictor from Llama-3.2-1B for the same reason).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import YEncoder
from ..encoders.causal_lm import run_layers as run_lm_layers
from ..encoders.text_backbone import (RelativePositionBias, check_bert_style, load_text_encoder,
                                      position_bias, run_layers)
from ..encoders.weights import freeze_unsaved, weights_fingerprint


class TokenTableQuery:
    """Reads questions with the Y-encoder's tokenizer and token table, held by reference (a plain
    object, not a submodule: the table is neither copied nor saved with the predictor).

    Args:
        y_encoder: the model's :class:`YEncoder`.
        max_len: query tokens kept, special tokens included (``predictor.max_query_len``).
    """

    fingerprint = None  # nothing of its own: the Y-encoder's fingerprint covers the table

    def __init__(self, y_encoder: YEncoder, max_len: int):
        self._tokenize, self._table, self.max_len = y_encoder.tokenize, y_encoder.token_embedding, max_len
        self.dim = y_encoder.vocab_dim

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B strings -> (ids (B, L) int64, mask (B, L) bool, True at real tokens), L <= max_len."""
        return self._tokenize(list(texts), self.max_len)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64 -> (B, L, Dq) float32 from the token table, detached: the predictor
        starts from pretrained lexical knowledge and never moves the table itself."""
        table = self._table.weight.detach()
        return F.embedding(ids.to(table.device), table)


# ---- a pretrained BERT-style text encoder, in pieces ----

def add_query_noise(query: torch.Tensor, std: float) -> torch.Tensor:
    """Training-time query noise (``predictor.query_noise``): query (B, L, W) float ->
    query + std * s * eps, eps ~ N(0, I), with s each state's own standard deviation over its W
    features. The noise is relative to the state's scale: through a LayerNorm it is the same as
    N(0, std^2) per dimension added to the layer-normalised (unit-scale) state, whatever the
    states' scale. Padding (all-zero states) stays zero.
    NEFTune (Jain et al. 2023) regularises fine-tuning with noise on input embeddings alike.

    Raises ValueError for a negative ``std``."""
    if std < 0:
        raise ValueError(f"predictor.query_noise must be >= 0, got {std}")
    if std == 0:
        return query
    s = query.var(-1, keepdim=True, unbiased=False).sqrt()  # (B, L, 1), as a LayerNorm's
    return query + std * s * torch.randn_like(query)


def bert_tokenize(tokenizer, texts: Sequence[str], max_len: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Questions -> (ids (B, L) int64, mask (B, L) bool), right-padded (:class:`QueryStates`
    cuts trailing pads), L <= ``max_len``."""
    tokenizer.padding_side = "right"
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()


class MemoisedStates(nn.Module):
    """Frozen layers that read a question alone, with their output kept per distinct question:
    with frozen weights the states of a question never change, and a VQA set asks few distinct
    questions (easy-VQA: 107), so after the first batches a step does a few dictionary look-ups
    instead of running the layers (as the feature cache keeps the visual tokens).

    Subclasses set ``pad_id``, ``width`` and ``device`` and implement :meth:`run`.
    """

    MEMO_SIZE = 20_000  # distinct questions kept (about 15 KB each at 10 tokens x 384)
    pad_id: int
    width: int

    def __init__(self):
        super().__init__()
        self._memo: dict[tuple[int, ...], torch.Tensor] = {}

    def train(self, mode: bool = True):  # noqa: D102 - frozen: always in eval mode
        return super().train(False)

    def run(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """ids (n, L) int64, keep (n, L) bool -> states (n, L, W): the frozen layers."""
        raise NotImplementedError

    @torch.no_grad()
    def _encode(self, rows: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Distinct id sequences -> their states, (L_i, W) each, in one right-padded batch."""
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long, device=self.device)
        keep = torch.zeros(len(rows), L, dtype=torch.bool, device=self.device)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, device=self.device)
            keep[i, :len(r)] = True
        x = self.run(ids, keep)
        return [x[i, :len(r)].float().cpu() for i, r in enumerate(rows)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64 right-padded with ``pad_id`` -> states (B, L, W) float32, zeros at
        padding (the predictor masks those positions). No gradient: the layers are frozen."""
        rows = []
        for r in ids.tolist():
            while r and r[-1] == self.pad_id:
                r.pop()
            rows.append(tuple(r))
        new = [r for r in dict.fromkeys(rows) if r and r not in self._memo]
        if new:
            if len(self._memo) + len(new) > self.MEMO_SIZE:
                self._memo.clear()  # bounded: an open-ended question stream need not fit
            self._memo.update(zip(new, self._encode(new)))
        # an all-pad row is no query (query-free caption batches): no states, all masked
        empty = torch.zeros(0, self.width)
        out = torch.nn.utils.rnn.pad_sequence([self._memo[r] if r else empty for r in rows],
                                              batch_first=True)
        if out.shape[1] < ids.shape[1]:  # a batch padded beyond its longest question
            out = F.pad(out, (0, 0, 0, ids.shape[1] - out.shape[1]))
        return out.to(ids.device)


class QueryStates(MemoisedStates):
    """A frozen BERT-style text encoder's lower part: question ids (B, L) -> token states
    (B, L, W), kept per distinct question (:class:`MemoisedStates`).

    Args:
        embeddings: the encoder's embeddings module (token + position + type, LayerNorm).
        layers: the layers run on the query alone (possibly none).
        pad_id: the tokenizer's pad id; trailing pads are cut before the look-up.
        own: True: the modules become frozen non-persistent buffers of this module (a private
            copy); False: they are another module's (the Y-encoder's, already frozen), held by
            reference and never changed.
        bias: MPNet's relative position bias (:func:`~vljepa.encoders.text_backbone.position_bias`).
    """

    def __init__(self, embeddings: nn.Module, layers: list[nn.Module], pad_id: int,
                 own: bool = True, bias: RelativePositionBias | None = None):
        super().__init__()
        if own:
            self.embeddings = freeze_unsaved(embeddings)
            self.layers = freeze_unsaved(nn.ModuleList(layers))
            if bias is not None:
                self.bias = freeze_unsaved(bias)
            self._parts = (self.embeddings, self.layers, bias)
        else:  # a tuple is not registered: the owner moves and saves them
            self._parts = (embeddings, list(layers), bias)
        self.pad_id = pad_id
        self.width = embeddings.word_embeddings.embedding_dim

    @property
    def device(self) -> torch.device:
        return self._parts[0].word_embeddings.weight.device

    def run(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        embeddings, layers, bias = self._parts
        return run_layers(layers, embeddings(input_ids=ids), keep, bias)


class ContextualQuery(nn.Module):
    """Reads questions as a frozen pretrained text encoder's contextual token states (its last
    hidden states), computed once per distinct question (:class:`QueryStates`).

    Args:
        name: the text encoder (sentence-transformers name, hub id or dir); None: the
            Y-encoder's own transformer, used by reference (no second copy in memory) while the
            Y-encoder is frozen, copied once when it trains (the states must not drift).
        y_encoder: the model's :class:`YEncoder`.
        max_len: query tokens kept, special tokens included.
        layers: how many of the encoder's layers make the states (None: all, its last hidden
            states; 0: its token + position embeddings only).
    Raises:
        ValueError: no name and a Y-encoder that is not a sentence-transformers BERT-style
            model; a text encoder that is not BERT-style; ``layers`` out of range.
            RuntimeError: it cannot be loaded.
    """

    def __init__(self, name: str | None, y_encoder: YEncoder, max_len: int,
                 layers: int | None = None):
        super().__init__()
        self.max_len = max_len
        if name is None:
            if y_encoder.cfg.backend != "sentence-transformers":
                raise ValueError("predictor.kind=cached_text reads the query with the Y-encoder's "
                                 "transformer, which needs a sentence-transformers Y-encoder; "
                                 "or name one in predictor.text_model")
            encoder, self.tokenizer = y_encoder.model[0].auto_model, y_encoder.model.tokenizer
            check_bert_style(encoder, y_encoder.cfg.name)
            own = y_encoder.cfg.trainable
            if own:
                encoder = copy.deepcopy(encoder)
            self.fingerprint = None  # the Y-encoder's fingerprint covers it
        else:
            encoder, self.tokenizer = load_text_encoder(name)
            own = True
            self.fingerprint = weights_fingerprint(name, encoder)
        self.dim = encoder.config.hidden_size
        depth = len(encoder.encoder.layer)
        k = depth if layers is None else layers
        if not 0 <= k <= depth:
            raise ValueError(f"predictor.text_state_layers must be in 0..{depth} for this text "
                             f"encoder, got {k}")
        self.states = QueryStates(encoder.embeddings, list(encoder.encoder.layer)[:k],
                                  self.tokenizer.pad_token_id, own=own, bias=position_bias(encoder))

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B strings -> (ids (B, L) int64, mask (B, L) bool) with the encoder's tokenizer."""
        return bert_tokenize(self.tokenizer, texts, self.max_len)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> the frozen encoder's last hidden states (B, L, W) float32."""
        return self.states(ids)


class LMQueryStates(MemoisedStates):
    """A causal LM's lower layers as a query reader (``predictor.kind="llm"``): question ids
    (B, L) -> the states after its first ``k`` layers (B, L, W), run on the query alone with the
    LM's own causal mask, as pretrained, and kept per distinct question
    (:class:`MemoisedStates`).

    Args:
        parts: the LM's decoder (:class:`~vljepa.encoders.causal_lm.DecoderParts`); its token
            table and first ``k`` layers become frozen non-persistent buffers of this module
            (re-read from the LM at load, identified by the LM's fingerprint).
        tokenizer: the LM's tokenizer (right padding).
        k: how many layers read the query alone (0: the token embeddings themselves).
        max_len: query tokens kept, special tokens included.
        fingerprint: the LM's (:func:`~vljepa.encoders.causal_lm.load_causal_lm`).
    """

    def __init__(self, parts, tokenizer, k: int, max_len: int, fingerprint: str | None):
        super().__init__()
        self._parts, self.tokenizer, self.k, self.max_len = parts, tokenizer, k, max_len
        if tokenizer.pad_token_id is None:  # Llama has none; any id works under the mask
            tokenizer.pad_token = tokenizer.eos_token
        self.embed_tokens = freeze_unsaved(parts.embed)
        self.lower = freeze_unsaved(nn.ModuleList(list(parts.layers)[:k]))
        self.rotary = freeze_unsaved(parts.rotary)
        self.pad_id = tokenizer.pad_token_id
        self.dim = self.width = parts.width
        self.fingerprint = fingerprint

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B strings -> (ids (B, L) int64, mask (B, L) bool), right-padded, L <= max_len."""
        self.tokenizer.padding_side = "right"
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    def run(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)  # (n, L, W), Gemma's sqrt(W) scale included
        return run_lm_layers(self._parts, x, keep, causal=True, last_layer=self.k) if self.k else x

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) int64, right-padded -> states (B, L, W) float32, zeros at padding."""
        return self(ids)
