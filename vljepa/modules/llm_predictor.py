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

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PredictorConfig
from ..hub import hub_error
from .encoders import XEncoder, pool_tokens


class LLMPredictor(nn.Module):
    """Bidirectional predictor from the last ``cfg.llm_layers`` layers of ``cfg.llm``.

    Args:
        cfg: ``kind="llm"``, ``llm`` (hub id or local dir), ``llm_layers``, ``max_query_len``,
            ``visual_pool``; width, depth and heads are the LM's.
        x_encoder, embed_dim: as :class:`vljepa.modules.predictor.Predictor`.
        y_encoder: unused (the LM reads the query with its own tokenizer and token table);
            taken so that every predictor is built the same way.

    Raises:
        RuntimeError: the LM cannot be loaded (names it; offline, only a local copy works).
        ValueError: ``llm_layers`` is not in 1..(the LM's depth), or the LM's decoder lacks
            ``layers`` / ``norm`` / ``rotary_emb``.
    """

    fingerprint = None  # the LM is named by the config; its trained layers are saved
    lr_mults: dict[str, float] = {}

    def __init__(self, cfg: PredictorConfig, x_encoder: XEncoder, y_encoder: nn.Module | None,
                 embed_dim: int):
        super().__init__()
        from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only when used

        visual_dim, grid = x_encoder.dim, x_encoder.grid
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
        self.cfg, self.grid = cfg, grid
        self.layers = nn.ModuleList(decoder.layers[depth - cfg.llm_layers:])
        for layer in self.layers:  # bidirectional: the mask we pass is the only mask
            layer.self_attn.is_causal = False
        self.norm, self.rotary = decoder.norm, decoder.rotary_emb
        table = decoder.get_input_embeddings().weight.detach()
        self.register_buffer("query_table", table, persistent=False)  # (V, W), frozen, not saved
        W = lm.config.hidden_size
        self.width = W
        self.visual_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, W))
        self.head = nn.Linear(W, embed_dim)
        del lm  # the first layers and the LM head are not used

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions -> (ids (B, L) int64, mask (B, L) bool) with the LM's tokenizer."""
        if self.tokenizer.pad_token_id is None:  # Llama has none; any id works under the mask
            self.tokenizer.pad_token = self.tokenizer.eos_token
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.cfg.max_query_len, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    def embed_query(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, W) from the LM's frozen token table."""
        return F.embedding(ids, self.query_table)

    def pool_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, N, Dx) -> (B, N', Dx), the token grid average-pooled by ``cfg.visual_pool``."""
        return pool_tokens(visual, self.grid, self.cfg.visual_pool)

    def hidden_states(self, visual: torch.Tensor, query: torch.Tensor | None,
                      query_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token outputs (B, N'+L, W) after the final norm, and the keep mask (B, N'+L)."""
        v = self.visual_proj(self.pool_visual(visual))  # (B, N', W)
        keep = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        x = v
        if query is not None:
            if query.shape[1] > self.cfg.max_query_len:
                raise ValueError(f"query has {query.shape[1]} tokens; the predictor takes at "
                                 f"most {self.cfg.max_query_len} (predictor.max_query_len)")
            x = torch.cat([v, query.to(v.dtype)], 1)
            keep = torch.cat([keep, query_mask.bool()], 1)
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
        w = keep.unsqueeze(-1).to(h.dtype)
        return self.head((h * w).sum(1) / w.sum(1))  # mean over non-pad tokens, then the head
