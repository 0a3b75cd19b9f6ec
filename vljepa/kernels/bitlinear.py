"""Ternary (BitNet b1.58) layers: quantisation-aware training, 2-bit packing, CPU inference.

Source: Ma et al. 2024, "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits"
(BitNet b1.58), building on Wang et al. 2023, "BitNet". Each quantised linear layer computes

    y = Q8(x) @ (Q3(W) * s).T + b,   s = mean(|W|)  (per-tensor absmean scale),
    Q3(W) = clamp(round(W / s), -1, 1) ∈ {-1, 0, +1},
    Q8(x) = clamp(round(x * 127 / max|x|), -128, 127) * max|x| / 127   (absmax per token),

with a straight-through estimator in training (the forward uses the quantised values, the
backward treats both quantisers as the identity). A norm precedes every quantised input: the
blocks' pre-norms for the attention and MLP inputs, and an extra LayerNorm (BitNet's "SubLN")
before the attention output projection and the MLP down projection. Embeddings, positional
embeddings, norms and the output head stay in high precision, as BitNet keeps them.

Two states of :class:`BitLinear`:
  latent (training): an fp32 ``weight`` Parameter, quantised on the fly;
  packed (inference, after :func:`vljepa.load`): a uint8 ``weight_packed`` buffer, four 2-bit
  codes per byte, and an fp32 ``weight_scale``. Without autograd (``torch.no_grad`` /
  ``inference_mode``, or an input that needs no gradient) the forward runs the compiled int8 x
  2-bit kernel of :mod:`vljepa.kernels.ternary_gemm` on the packed bytes (bitnet.cpp's I2_S
  scheme); otherwise, or where that kernel is unavailable, it unpacks the layer's weight, uses
  it and drops it. Either way only the packed bytes stay resident. The unpacking path gives
  outputs bit-identical to the latent state; the kernel's differ by float32 rounding only
  (the same int8 activations; exact integer dot products).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ternary_gemm

EPS = 1e-5  # floor for the weight and activation scales: an all-zero tensor stays zero
_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
# byte -> its four weights as floats: one gather unpacks a layer in the inference path. Code 3
# maps to 2.0, never produced by pack_ternary and rejected by unpack_ternary when loading.
_LUT = ((torch.arange(256, dtype=torch.uint8).unsqueeze(1) >> _SHIFTS) & 3).float() - 1


# ---- quantisers (plain functions so tests and the packed path share them) ----

def ternary_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """absmean quantisation: W (any shape, float) -> (codes int8 in {-1, 0, 1}, scale () fp32).

    ``codes * scale`` is the dequantised weight. Source: BitNet b1.58, eq. (1)-(3).
    """
    scale = w.detach().abs().mean().float().clamp(min=EPS)
    codes = (w.detach() / scale).round().clamp(-1, 1).to(torch.int8)
    return codes, scale


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """8-bit absmax quantise-dequantise per token (last dim): (..., D) float -> same shape/dtype.

    Values lie on a grid of 256 levels spanning ±max|x| of each token. Not differentiable on its
    own; :class:`BitLinear` wraps it in a straight-through estimator.
    """
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * s).round().clamp(-128, 127) / s


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Value of ``q``, gradient of ``x``: ``x - x.detach()`` is exactly 0 for finite x, so the
    forward is bit-identical to using ``q`` (which the packed path does)."""
    return q.detach() + (x - x.detach())


# ---- 2-bit packing: code c = q + 1 in {0, 1, 2}; four codes per byte, lowest bits first ----

def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in {-1, 0, 1}, any shape -> uint8 (ceil(numel / 4),), row-major order.

    Raises ValueError if a value is not -1, 0 or 1.
    """
    flat = codes.reshape(-1).to(torch.int16)
    if flat.numel() and (flat.min() < -1 or flat.max() > 1):
        raise ValueError("pack_ternary takes only -1, 0 and +1")
    c = (flat + 1).to(torch.uint8)
    c = F.pad(c, (0, (-c.numel()) % 4)).view(-1, 4)  # pad codes are 0 and ignored on unpack
    return (c << _SHIFTS).sum(1, dtype=torch.uint8)  # disjoint bits: sum == bitwise or


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...], name: str = "tensor"
                   ) -> torch.Tensor:
    """uint8 (ceil(prod(shape) / 4),) -> int8 codes in {-1, 0, 1} of ``shape``.

    Raises ValueError naming ``name`` if the dtype or byte count does not fit ``shape`` (a
    truncated or corrupt file) or a byte holds the unused code 3.
    """
    numel = math.prod(shape)
    need = -(-numel // 4)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        raise ValueError(
            f"packed ternary tensor {name!r} is {packed.dtype} {tuple(packed.shape)}; a weight of "
            f"shape {tuple(shape)} needs uint8 ({need},) (four 2-bit codes per byte): the "
            "checkpoint is corrupt or belongs to another config")
    c = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 3  # (need, 4)
    c = c.reshape(-1)[:numel]
    if (c == 3).any():
        raise ValueError(f"packed ternary tensor {name!r} holds the invalid 2-bit code 3: corrupt")
    return (c.to(torch.int8) - 1).view(shape)


class BitLinear(nn.Linear):
    """BitNet b1.58 linear layer, a drop-in for ``nn.Linear``: (..., in) -> (..., out) float32.

    Args:
        norm: apply a LayerNorm(in_features) before quantising the input (BitNet's SubLN); leave
            it off where the caller already normalises (pre-norm blocks, input projections).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 norm: bool = False):
        super().__init__(in_features, out_features, bias)
        self.norm = nn.LayerNorm(in_features) if norm else None
        self.packed = False

    def to_packed(self) -> None:
        """Replace the fp32 latent weight by its 2-bit packing and scale (in place, no grad)."""
        if self.packed:
            return
        codes, scale = ternary_weight(self.weight)
        shape = tuple(self.weight.shape)
        del self.weight  # free the fp32 copy: this is what shrinks resident memory
        self.register_buffer("weight_packed", pack_ternary(codes))
        self.register_buffer("weight_scale", scale)
        self.weight_shape, self.packed = shape, True

    def dequantized_weight(self) -> torch.Tensor:
        """(out, in) fp32: codes x scale, from either state (gradient straight through if latent)."""
        if self.packed:  # bytes validated on load (check_packed_state); gather, drop the padding
            lut = _LUT.to(self.weight_packed.device)
            codes = lut.index_select(0, self.weight_packed.int()).view(-1)
            return codes[:math.prod(self.weight_shape)].view(self.weight_shape) * self.weight_scale
        codes, scale = ternary_weight(self.weight)
        return _ste(self.weight, codes.float() * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        if self.packed and not (torch.is_grad_enabled() and x.requires_grad) \
                and ternary_gemm.use_kernel(x):
            # packing validated by to_packed / check_packed_state on load
            return ternary_gemm._kernel_linear(x, self.weight_packed, *self.weight_shape,
                                                 self.weight_scale, self.bias)
        x = _ste(x, quantize_activations(x))
        return F.linear(x, self.dequantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ternary, {'packed' if self.packed else 'latent'}"


class TernaryBlock(nn.Module):
    """Pre-norm bidirectional transformer block with BitLinear projections: (B, T, W) -> same.

    Same maths as ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")`` apart from
    the quantisation and the two SubLN norms, so a full-precision predictor converts to it.
    """

    def __init__(self, width: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"predictor.width {width} is not divisible by predictor.heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = BitLinear(width, 3 * width)
        self.proj = BitLinear(width, width, norm=True)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = BitLinear(width, hidden)
        self.fc2 = BitLinear(hidden, width, norm=True)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, W) float; keep (B, T) bool, True at tokens that may be attended to, or None
        when every token may be."""
        B, T, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if keep is None else keep[:, None, None, :]
        if not (self.training and self.dropout):  # inference: no dropout calls at all
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.proj(a.transpose(1, 2).reshape(B, T, W))
            return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        drop = self.dropout
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(B, T, W)), drop)
        h = F.dropout(F.gelu(self.fc1(self.norm2(x))), drop)
        return x + F.dropout(self.fc2(h), drop)


class TernaryEncoder(nn.Module):
    """A stack of :class:`TernaryBlock` and a final LayerNorm; called like ``nn.TransformerEncoder``
    with ``src_key_padding_mask`` (B, T) bool, True at padding."""

    def __init__(self, width: int, heads: int, hidden: int, dropout: float, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(TernaryBlock(width, heads, hidden, dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        # no padding anywhere (a batch of full-length sequences): attention without a mask
        keep = None if not src_key_padding_mask.any() else ~src_key_padding_mask
        for layer in self.layers:
            x = layer(x, keep)
        return self.norm(x)


def bit_linears(module: nn.Module) -> dict[str, BitLinear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, BitLinear)}


def to_packed(module: nn.Module) -> nn.Module:
    """Pack every BitLinear in ``module`` in place (for inference); returns ``module``."""
    for m in bit_linears(module).values():
        m.to_packed()
    return module


# ---- packed checkpoints: export, validation on load ----

def export_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` = ``model.trained_state_dict()`` of a ternary VLJEPA ``model``, as saved: each
    BitLinear weight as ``weight_packed`` uint8 + ``weight_scale`` fp32; the predictor's other
    floats (norms, positional embeddings, biases, head) as float16, the 16-bit precision BitNet
    keeps them in. Loading upcasts them to float32, so a loaded model differs from the one trained by float16 rounding of those
    tensors only, and every later save/load round trip is exact."""
    state = dict(state)
    for name, m in bit_linears(model).items():
        key = f"{name}."  # names from the VLJEPA root: "predictor.blocks.layers.0.qkv."
        if not m.packed:
            codes, scale = ternary_weight(state.pop(key + "weight"))
            state[key + "weight_packed"], state[key + "weight_scale"] = pack_ternary(codes), scale
    for key, value in state.items():
        if key.startswith("predictor.") and value.is_floating_point() and \
                not key.endswith("weight_scale"):
            half = value.half()
            if torch.isfinite(half).all():  # out of float16 range: keep float32
                state[key] = half
    return state


def check_packed_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError naming the tensor if a packed weight in ``state`` does not fit
    ``model``'s (packed) BitLinear layers: wrong dtype or byte count, or invalid codes."""
    for name, m in bit_linears(model).items():
        key = f"{name}.weight_packed"
        if key in state:
            try:
                unpack_ternary(state[key], m.weight_shape, key)
            except ValueError as e:
                raise ValueError(f"{source}: {e}") from None

