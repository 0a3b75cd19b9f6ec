"""The token-generating VLM baseline (LLaVA-style) that VL-JEPA is compared against (paper §4.5).

Same frozen X-encoder (and feature cache) and the same query tokens as VL-JEPA; instead of
predicting the answer's embedding it *generates* the answer text:

    image ──X-encoder (frozen)──► visual tokens (B, N, Dx) ──proj──┐
    question ──Y-encoder's tokenizer + token table──► (B, L) ──proj─┴─► prefix (B, N'+L, W)
    prefix ──► causal text decoder (vljepa/decoders/text_decoder.py) ──► answer tokens, cross-entropy

Discriminative questions are answered by the lowest perplexity over the candidate answers
(every candidate is scored after the prefix); open questions and captions by greedy decoding.
Used by ``python train.py model=vlm_baseline`` and ``eval/compare.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import hub
from .config import BaselineConfig
from .inputs import check_texts
from .model import weight_decay_groups
from .encoders import XEncoder, YEncoder
from .predictors.visual import pool_tokens, pooled_grid
from .decoders.pretrained_decoder import PretrainedCausalDecoder
from .decoders.text_decoder import CausalTextDecoder, corpus_vocab
from .decoders.y_decoder import special_ids


class VLMBaseline(nn.Module):
    """Token-generating VLM over a frozen X-encoder. Build with :func:`create_baseline`, load
    with :func:`vljepa.load`."""

    FORMAT = "vljepa-vlm-baseline/1"  # config.json's "format"

    def __init__(self, config: BaselineConfig | dict):
        super().__init__()
        self.config = cfg = BaselineConfig.from_dict(config)
        self.x_encoder = XEncoder(cfg.x_encoder)
        self.y_encoder = YEncoder(cfg.y_encoder)
        W, Dx, Dt = cfg.width, self.x_encoder.dim, self.y_encoder.vocab_dim
        if cfg.pretrained_decoder:  # the decoder is the Y-encoder's text encoder: its width
            if cfg.y_encoder.backend != "sentence-transformers":
                raise ValueError("pretrained_decoder needs a sentence-transformers Y-encoder")
            W = self.y_encoder.model[0].auto_model.config.hidden_size
        self.visual_proj = nn.Sequential(nn.LayerNorm(Dx), nn.Linear(Dx, W))
        # the pretrained decoder reads the query through its own embeddings instead
        self.query_proj = (None if cfg.pretrained_decoder else
                           nn.Sequential(nn.LayerNorm(Dt), nn.Linear(Dt, W)))
        self.decoder: CausalTextDecoder | PretrainedCausalDecoder | None = None
        if cfg.output_vocab is not None:
            self._build_decoder(cfg.output_vocab)
        self.answers: list[str] | None = None
        self.card: dict[str, Any] = {}  # datasets, metrics, recipe: saved with the model

    @property
    def device(self) -> torch.device:
        return self.visual_proj[1].weight.device

    # ---- the decoder's token vocabulary ----

    def _special_ids(self) -> tuple[int, int, int]:
        return special_ids(self.y_encoder.model.tokenizer)

    def _build_decoder(self, output_vocab: list[int]) -> None:
        cfg = self.config
        bos, eos, pad = self._special_ids()
        n_visual = self.x_encoder.num_tokens
        if cfg.visual_pool > 1:
            h, w = pooled_grid(self.x_encoder.grid, cfg.visual_pool)
            n_visual = h * w
        if cfg.pretrained_decoder:
            self.decoder = PretrainedCausalDecoder(
                cfg.y_encoder.name, self.y_encoder.token_embedding.weight, max_visual=n_visual,
                max_query=cfg.max_query_len, max_len=cfg.max_answer_len, bos_id=bos, eos_id=eos,
                pad_id=pad, output_vocab=torch.tensor(output_vocab), dropout=cfg.dropout)
            return
        self.decoder = CausalTextDecoder(
            self.y_encoder.token_embedding.weight, width=cfg.width, depth=cfg.depth,
            heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
            max_prefix=n_visual + cfg.max_query_len, max_len=cfg.max_answer_len,
            bos_id=bos, eos_id=eos, pad_id=pad, output_vocab=torch.tensor(output_vocab))

    def set_output_vocab(self, texts: Sequence[str]) -> None:
        """Let the decoder emit exactly the tokens of ``texts`` (and EOS); builds the decoder.

        Raises RuntimeError if the decoder already exists with another token vocabulary.
        """
        ids, mask = self.tokenize_texts(list(dict.fromkeys(texts)))
        token_ids = corpus_vocab(ids, mask, self._special_ids()[0])
        if self.decoder is not None:
            if token_ids != self.config.output_vocab:
                raise RuntimeError("the decoder already has a different output vocabulary")
            return
        self.config.output_vocab = token_ids
        self._build_decoder(token_ids)

    def tokenize_queries(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B questions -> (ids (B, L) int64, mask (B, L) bool), as :meth:`VLJEPA.tokenize_queries`."""
        return self.y_encoder.tokenize(check_texts(queries, "questions"), self.config.max_query_len)

    def tokenize_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Answer / caption texts -> ``[BOS] text [EOS]`` ids (B, L) int64 and mask (B, L) bool."""
        return self.y_encoder.tokenize(check_texts(texts, "texts"), self.config.max_answer_len)

    # ---- the model ----

    def prefix(self, visual: torch.Tensor, query_ids: torch.Tensor | None,
               query_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Visual tokens (B, N, Dx) + query ids/mask (B, L) -> prefix (B, N'+L, W), mask (B, N'+L).

        A query-free row (captioning) has an all-False query mask, or ``query_ids=None``.
        """
        visual = visual.to(self.device, torch.float32)
        v = self.visual_proj(pool_tokens(visual, self.x_encoder.grid, self.config.visual_pool))
        if self.config.pretrained_decoder:
            if query_ids is None:
                return self._need_decoder().prefix(v, None, None)
            return self._need_decoder().prefix(v, query_ids.to(self.device),
                                               query_mask.to(self.device))
        keep = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        if query_ids is None:
            return v, keep
        table = self.y_encoder.token_embedding.weight.detach()
        q = self.query_proj(F.embedding(query_ids.to(self.device), table))  # (B, L, W)
        return torch.cat([v, q], 1), torch.cat([keep, query_mask.to(self.device).bool()], 1)

    def _need_decoder(self) -> CausalTextDecoder:
        if self.decoder is None:
            raise RuntimeError("the baseline has no decoder yet: call set_output_vocab(texts) "
                               "(the Lightning module does it from the training data)")
        return self.decoder

    def loss(self, visual: torch.Tensor, query_ids: torch.Tensor | None,
             query_mask: torch.Tensor | None, texts: Sequence[str]) -> torch.Tensor:
        """Mean token cross-entropy (nats, scalar float32) of ``texts`` (B strings) after the
        prefix of visual tokens (B, N, Dx) and query ids / mask (B, L).

        Raises RuntimeError before :meth:`set_output_vocab`, ValueError for a text token outside
        the output vocabulary."""
        ids, mask = self.tokenize_texts(texts)
        p, pm = self.prefix(visual, query_ids, query_mask)
        return self._need_decoder().loss(p, pm, ids.to(self.device), mask.to(self.device))

    @torch.no_grad()
    def candidate_scores(self, visual: torch.Tensor, query_ids: torch.Tensor | None,
                         query_mask: torch.Tensor | None, candidates: Sequence[str],
                         chunk: int = 4096) -> torch.Tensor:
        """(B, C) float32 mean log-probability per token of each of the C candidates (minus log
        perplexity) after each prefix (visual (B, N, Dx), query ids / mask (B, L)).

        Every one of the B x C (prefix, candidate) pairs runs through the decoder, in chunks of
        ``chunk`` sequences: this is the cost VL-JEPA's nearest-neighbour answering avoids.
        Raises as :meth:`loss`.
        """
        dec = self._need_decoder()
        p, pm = self.prefix(visual, query_ids, query_mask)  # (B, P, W)
        ids, mask = self.tokenize_texts(candidates)  # (C, L)
        ids, mask = ids.to(self.device), mask.to(self.device)
        B, C = p.shape[0], ids.shape[0]
        n_tokens = (mask.sum(1) - 1).clamp(min=1).float()  # tokens scored per candidate
        out = torch.empty(B * C, device=self.device)
        pairs = torch.arange(B * C, device=self.device)
        for s in range(0, B * C, chunk):
            r = pairs[s:s + chunk]
            b, c = r // C, r % C
            out[s:s + chunk] = dec.sequence_logprob(p[b], pm[b], ids[c], mask[c]) / n_tokens[c]
        return out.view(B, C)

    @torch.no_grad()
    def generate(self, visual: torch.Tensor, query_ids: torch.Tensor | None = None,
                 query_mask: torch.Tensor | None = None, max_new_tokens: int = 24,
                 num_beams: int = 1) -> list[str]:
        """B strings written after each prefix (visual (B, N, Dx), optional query ids / mask
        (B, L)): greedy with ``num_beams=1``, else beam search; at most ``max_new_tokens``.
        Raises RuntimeError before :meth:`set_output_vocab`."""
        p, pm = self.prefix(visual, query_ids, query_mask)
        out = self._need_decoder().generate(p, pm, max_new_tokens, num_beams)
        return self.y_encoder.model.tokenizer.batch_decode(out, skip_special_tokens=True)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as :meth:`VLJEPA.param_groups` (no decay on norms, biases, positions);
        a pretrained decoder's pretrained weights at ``lr * pretrained_lr_mult``."""
        self._need_decoder()
        mults = None
        if self.config.pretrained_decoder:
            m = self.config.pretrained_lr_mult
            mults = {f"decoder.{k}": m for k in ("layers.", "position_embeddings.",
                                                 "type_embedding", "embed_norm.")}
        return weight_decay_groups(self, lr, weight_decay, lr_mults=mults)

    # ---- save / load (the same layout as VL-JEPA's: config.json + model.safetensors) ----

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """All tensors but the frozen encoders', detached, on the CPU."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith(("x_encoder.", "y_encoder."))}

    def save_pretrained(self, directory: str | os.PathLike, *, name: str | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically; returns the directory.
        (``name`` is accepted as :meth:`vljepa.VLJEPA.save_pretrained` takes it: no card here.)
        Raises RuntimeError before :meth:`set_output_vocab` (there is no decoder to save)."""
        self._need_decoder()
        meta = {"format": self.FORMAT, "model": self.config.to_dict(),
                "x_encoder_fingerprint": self.x_encoder.fingerprint, "answers": self.answers,
                "card": self.card}
        return hub.write_pretrained(directory, meta, self.trained_state_dict())

    def push_to_hub(self, repo_id: str, **kw: Any) -> str:
        """Upload to a Hugging Face Hub repo, as :meth:`vljepa.VLJEPA.push_to_hub`."""
        return hub.push_to_hub(self, repo_id, **kw)

    @classmethod
    def from_saved(cls, meta: dict[str, Any], state: dict[str, torch.Tensor], source: str,
                   map_location: str = "cpu") -> VLMBaseline:
        """Rebuild a saved baseline (the loader :func:`vljepa.load` uses for its format), in
        eval mode. Raises ValueError if the X-encoder built here is not the one it was trained
        with, or the tensors do not fit the config."""
        model = cls(BaselineConfig.from_dict(meta["model"]))
        if meta.get("x_encoder_fingerprint") not in (None, model.x_encoder.fingerprint):
            raise ValueError(f"the X-encoder built here is not the one {source} was trained with")
        expected = model.trained_state_dict()
        if set(state) != set(expected):
            raise ValueError(f"{source} does not fit its config: missing "
                             f"{sorted(set(expected) - set(state))[:5]}, unexpected "
                             f"{sorted(set(state) - set(expected))[:5]}")
        model.load_state_dict(state, strict=False)
        model.answers = meta.get("answers")
        model.card = dict(meta.get("card") or {})
        return model.to(map_location).eval()


def create_baseline(config: BaselineConfig | dict | None = None) -> VLMBaseline:
    """Build the baseline from a config (dataclass or nested dict, e.g. a Hydra node)."""
    return VLMBaseline(BaselineConfig.from_dict(config or {}))
