"""The paper's predictor: the last N layers of a pretrained causal LM, made bidirectional (§3).

VL-JEPA initialises its predictor from the last 8 transformer layers of Llama-3.2-1B, with the
causal mask disabled so visual and query tokens attend to each other both ways, and embeds the
query with that LM's own tokenizer and token table:

    visual tokens (B, N, Dx) ──LayerNorm, linear──► (B, N', W)  ┐  W = the LM's hidden size
    query ──LM tokenizer──► ids (B, L) ──LM token table──► (B, L, W)  ┴► [v; q] (B, N'+L, W)
    ──► last N LM layers (rotary positions, padding-only attention mask) ──► final norm
    ──► mean over non-pad tokens ──► linear head ──► Ŝ_Y (B, D)

Any Hugging Face causal LM whose decoder exposes ``layers``, ``norm`` and ``rotary_emb``
(Llama, Qwen2/3, Mistral, Gemma families) works; the name is a hub id or a local directory
(``predictor.llm``), loaded with ``transformers``. The token table is frozen and not saved (it
comes back with the LM); the LM layers, the norm, the visual projection and the head train.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLMPredictorConfig
from ..hub import hub_error
from .base import JointPredictor, PredictorDims, masked_mean


class LLMPredictor(JointPredictor):
    """Bidirectional predictor from the last ``cfg.llm_layers`` layers of ``cfg.llm``.

    Args:
        cfg: ``llm`` (hub id or local dir), ``llm_layers``, ``max_query_len``, visual pooling and
            slots; width, depth and heads are the LM's.
        dims: Dx, N, the grid and D (``query_dim`` unused: the LM reads the query with its own
            tokenizer and token table).
        query: unused.
    Raises:
        RuntimeError: the LM cannot be loaded (names it; offline, only a local copy works).
        ValueError: no ``llm``; ``llm_layers`` is not in 1..(the LM's depth), or the LM's decoder
            lacks ``layers`` / ``norm`` / ``rotary_emb``.
    """

    Config = LLMPredictorConfig
    query_form = "token_table"

    def __init__(self, cfg: LLMPredictorConfig, dims: PredictorDims, query=None):
        super().__init__(cfg, dims, None)
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only for this kind

        if not cfg.llm:
            raise ValueError("predictor.kind=llm needs predictor.llm (a causal LM's hub id or dir)")
        try:
            lm = AutoModelForCausalLM.from_pretrained(cfg.llm, dtype=torch.float32)
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.llm)
        except Exception as e:
            raise hub_error("causal LM", cfg.llm, e) from e
        decoder = lm.get_decoder()
        if not all(hasattr(decoder, a) for a in ("layers", "norm", "rotary_emb")):
            raise ValueError(f"{cfg.llm!r}: its decoder has no layers / norm / rotary_emb")
        depth = len(decoder.layers)
        if not 1 <= cfg.llm_layers <= depth:
            raise ValueError(f"predictor.llm_layers must be in 1..{depth} for {cfg.llm!r}, "
                             f"got {cfg.llm_layers}")
        self.layers = nn.ModuleList(decoder.layers[depth - cfg.llm_layers:])
        for layer in self.layers:  # bidirectional: the mask we pass is the only mask
            layer.self_attn.is_causal = False
        self.norm, self.rotary = decoder.norm, decoder.rotary_emb
        table = decoder.get_input_embeddings().weight.detach()
        self.register_buffer("query_table", table, persistent=False)  # (V, W), frozen, not saved
        W = lm.config.hidden_size
        self.width = W
        self.init_visual(cfg, dims, W)  # rotary positions cover the visual tokens too
        self.head = nn.Linear(W, dims.embed_dim)
        del lm  # the first layers and the LM head are not used

    @classmethod
    def query_reader(cls, cfg: LLMPredictorConfig, y_encoder: nn.Module) -> None:
        return None  # the LM's own tokenizer and token table

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions -> (ids (B, L) int64, mask (B, L) bool) with the LM's tokenizer."""
        if self.tokenizer.pad_token_id is None:  # Llama has none; any id works under the mask
            self.tokenizer.pad_token = self.tokenizer.eos_token
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.cfg.max_query_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    def embed_query(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, W) from the LM's frozen token table."""
        return F.embedding(ids, self.query_table)

    def hidden_states(self, visual: torch.Tensor, query: torch.Tensor | None,
                      query_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token outputs (B, N'+L, W) after the final norm, and the keep mask (B, N'+L)."""
        x, keep = self.joint_input(visual, query, query_mask)
        B, T, _ = x.shape
        pos = torch.arange(T, device=x.device).unsqueeze(0).expand(B, -1)
        rope = self.rotary(x, pos)
        # additive (B, 1, T, T) mask: every token sees every real token (no causal triangle)
        mask = torch.zeros(B, 1, T, T, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~keep[:, None, None, :], torch.finfo(x.dtype).min)
        for layer in self.layers:
            out = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=rope)
            x = out[0] if isinstance(out, tuple) else out
        return self.norm(x), keep

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None,
                query_mask: torch.Tensor | None) -> torch.Tensor:
        """visual (B, N, Dx), query (B, L, W) from :meth:`embed_query`, mask (B, L) -> Ŝ_Y (B, D)."""
        h, keep = self.hidden_states(visual, query, query_mask)
        return self.head(masked_mean(h, keep))  # mean over non-pad tokens, then the head

    def describe(self) -> str:
        return f"`llm`, the last {self.cfg.llm_layers} layers of `{self.cfg.llm}`, width {self.width}"
