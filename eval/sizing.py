"""Size the paper's VL-JEPA on paper: parameters, FLOPs, activation memory, GPU-hours.

    python eval/sizing.py                                   # configs/model/paper.yaml
    python eval/sizing.py --stage1-samples 2e9 --stage2-samples 5e7 --mfu 0.35

Parameters are counted exactly by building each component on PyTorch's ``meta`` device (no
weights, no memory) from its architecture config: transformers' own ``VJEPA2Config`` (whose
defaults are V-JEPA 2 ViT-L/16, 256 px), ``LlamaConfig`` with Llama-3.2-1B's published sizes and
``Gemma3TextConfig`` with EmbeddingGemma-300M's. The hub is not needed.

FLOPs per training sample count matrix multiplies only: 2 x params x tokens forward, 3x that
for forward + backward, plus attention's 4 x T^2 x width per layer (x3 when trained); the frozen
X-encoder runs forward only. Activation memory per sample is for bf16 with fused (flash / SDPA)
attention and no recomputation: 34 x T x width bytes per transformer layer (Korthikanti et al.
2022, without the 5·a·T/width term that flash attention removes), trained parts only.
GPU-hours = FLOPs / (peak x MFU); assumptions are arguments and are printed with the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Published architecture sizes of the paper's components (their config.json on the hub).
LLAMA_3_2_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                    num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    tie_word_embeddings=True)
EMBEDDINGGEMMA_300M = dict(vocab_size=262144, hidden_size=768, intermediate_size=1152,
                           num_hidden_layers=24, num_attention_heads=3, num_key_value_heads=1,
                           head_dim=256)
EMBEDDINGGEMMA_DENSE = 768 * 3072 + 3072 * 768  # sentence-transformers' two Dense layers


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def components(frames: int, llm_layers: int, embed_dim: int) -> dict:
    """Parameters (trainable, frozen), width and depth of each component, built on ``meta``."""
    from transformers import (Gemma3TextConfig, Gemma3TextModel, LlamaConfig, LlamaForCausalLM,
                              VJEPA2Config, VJEPA2Model)

    with torch.device("meta"):
        vcfg = VJEPA2Config()  # defaults: ViT-L/16, 256 px, tubelet 2 (vjepa2-vitl-fpc64-256)
        vjepa = VJEPA2Model(vcfg)
        llama = LlamaForCausalLM(LlamaConfig(**LLAMA_3_2_1B))
        gemma = Gemma3TextModel(Gemma3TextConfig(**EMBEDDINGGEMMA_300M))
    x_params = count(vjepa.encoder)
    per_layer = count(llama.model.layers[0])
    W = LLAMA_3_2_1B["hidden_size"]
    tokens_x = (frames // vcfg.tubelet_size) * (vcfg.crop_size // vcfg.patch_size) ** 2
    return {
        "X-encoder (V-JEPA 2 ViT-L, frozen)": dict(
            frozen=x_params, trainable=0, width=vcfg.hidden_size, layers=vcfg.num_hidden_layers,
            tokens=tokens_x),
        f"predictor (Llama-3.2-1B last {llm_layers} layers)": dict(
            trainable=per_layer * llm_layers + W  # layers + final norm
            + vcfg.hidden_size * W + W + 2 * vcfg.hidden_size  # visual projection + its norm
            + W * embed_dim + embed_dim,  # head
            frozen=count(llama.model.embed_tokens), width=W, layers=llm_layers),
        "Y-encoder (EmbeddingGemma-300M, lr x 0.05)": dict(
            trainable=count(gemma) + EMBEDDINGGEMMA_DENSE
            + EMBEDDINGGEMMA_300M["hidden_size"] * embed_dim + embed_dim,  # + its head
            frozen=0, width=EMBEDDINGGEMMA_300M["hidden_size"],
            layers=EMBEDDINGGEMMA_300M["num_hidden_layers"],
            embedding=count(gemma.embed_tokens)),
        "_llama_layer": per_layer,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=16, help="frames per clip (model=paper)")
    ap.add_argument("--llm-layers", type=int, default=8)
    ap.add_argument("--embed-dim", type=int, default=1536)
    ap.add_argument("--query-tokens", type=int, default=64)
    ap.add_argument("--target-tokens", type=int, default=64)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    ap.add_argument("--mfu", type=float, default=0.35, help="model FLOPs utilisation")
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--stage1-samples", type=float, default=None)
    ap.add_argument("--stage2-samples", type=float, default=None)
    ap.add_argument("--paper-gpus", type=int, default=24 * 8, help="paper: 24 nodes x 8 GPUs")
    ap.add_argument("--paper-weeks", type=float, default=4.0)
    args = ap.parse_args(argv)

    c = components(args.frames, args.llm_layers, args.embed_dim)
    c.pop("_llama_layer")
    x, p, y = c.values()
    T_x = x["tokens"]
    T_p = T_x + args.query_tokens
    T_y = args.target_tokens
    y_dense = y["trainable"] - y["embedding"]  # the token table is a lookup, not a matmul
    p_dense = p["trainable"]
    flops = {  # per training sample
        "X-encoder fwd": 2 * x["frozen"] * T_x + 4 * T_x ** 2 * x["width"] * x["layers"],
        "predictor fwd+bwd": 3 * (2 * p_dense * T_p + 4 * T_p ** 2 * p["width"] * p["layers"]),
        "Y-encoder fwd+bwd": 3 * (2 * y_dense * T_y + 4 * T_y ** 2 * y["width"] * y["layers"]),
    }
    act = {  # bytes per sample, bf16, flash attention, trained parts only
        "predictor": 34 * T_p * p["width"] * p["layers"],
        "Y-encoder": 34 * T_y * y["width"] * y["layers"],
    }
    total_flops = sum(flops.values())
    trainable = sum(v["trainable"] for v in c.values())
    frozen = sum(v["frozen"] for v in c.values())
    # weights + grads + AdamW (fp32 master, m, v) for trained params; bf16 copy of frozen ones
    state_gb = (trainable * (2 + 4 + 4 + 4 + 4) + frozen * 2) / 1e9
    per_sample_gb = sum(act.values()) / 1e9
    batch_per_gpu = int((args.gpu_gb * 0.9 - state_gb) // per_sample_gb)
    rate = args.peak_tflops * 1e12 * args.mfu  # FLOP/s per GPU
    samples_per_gpu_hour = rate * 3600 / total_flops

    lines = ["| component | trainable | frozen | tokens / sample |", "|---|---|---|---|"]
    for name, v in c.items():
        tokens = {id(x): T_x, id(p): T_p, id(y): T_y}[id(v)]
        lines.append(f"| {name} | {v['trainable'] / 1e6:,.1f} M | {v['frozen'] / 1e6:,.1f} M | "
                     f"{tokens:,} |")
    lines.append(f"| **total** | {trainable / 1e6:,.1f} M | {frozen / 1e6:,.1f} M | |")
    lines += ["", f"All parameters: {(trainable + frozen) / 1e9:.2f} B (paper: about 1.6 B).", "",
              "| per training sample | value |", "|---|---|"]
    for k, v in flops.items():
        lines.append(f"| {k} | {v / 1e12:,.2f} TFLOP |")
    lines.append(f"| **total** | {total_flops / 1e12:,.2f} TFLOP |")
    for k, v in act.items():
        lines.append(f"| activations, {k} | {v / 1e9:,.2f} GB |")
    lines += [f"| model + optimiser state per GPU (unsharded) | {state_gb:,.1f} GB |",
              f"| samples per {args.gpu_gb:.0f} GB GPU (90% usable) | {batch_per_gpu} |", "",
              f"Assumptions: {args.frames} frames per clip -> {T_x:,} visual tokens (no pooling), "
              f"{args.query_tokens} query and {args.target_tokens} target tokens; "
              f"{args.peak_tflops:.0f} TFLOP/s peak x MFU {args.mfu} = {rate / 1e12:.0f} TFLOP/s "
              f"per GPU; X-encoder features not cached (caching them removes its row).",
              f"Throughput: {samples_per_gpu_hour:,.0f} samples per GPU-hour."]
    paper_gpu_hours = args.paper_gpus * args.paper_weeks * 7 * 24
    lines.append(f"Paper budget: {args.paper_gpus} GPUs x {args.paper_weeks:g} weeks = "
                 f"{paper_gpu_hours:,.0f} GPU-hours, enough for "
                 f"{paper_gpu_hours * samples_per_gpu_hour / 1e9:,.2f} B samples at these "
                 "assumptions.")
    for stage, n in (("stage 1", args.stage1_samples), ("stage 2", args.stage2_samples)):
        if n:
            lines.append(f"{stage}: {n:,.0f} samples -> {n / samples_per_gpu_hour:,.0f} GPU-hours "
                         f"({n / samples_per_gpu_hour / args.paper_gpus / 24:,.1f} days on "
                         f"{args.paper_gpus} GPUs).")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
