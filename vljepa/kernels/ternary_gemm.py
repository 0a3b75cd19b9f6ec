"""Packed ternary matmul for CPU inference: int8 activations x 2-bit weights, weights never unpacked.

Source: the BitNet b1.58 inference recipe (Ma et al. 2024) as bitnet.cpp's I2_S kernel runs it
on x86: activations quantised to int8 per token (absmax), weights kept at 2 bits
(code c = w + 1 in {0, 1, 2}), the dot product done by AVX2 ``vpmaddubsw`` on the unsigned
codes times the signed activations, and ``sum_k w x = sum_k c x - sum_k x``.

The kernel (``csrc/ternary_gemm.cpp``) reads the checkpoint's packing as it is
(:func:`vljepa.kernels.bitlinear.pack_ternary`), so a packed layer holds no second copy. It is
compiled on first use with ``torch.utils.cpp_extension.load`` (g++ and ninja; cached by torch
under ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``). Where that cannot work -- no
compiler, a CPU without AVX2, a failed build, or ``VLJEPA_NO_KERNEL=1`` in the environment --
:func:`ternary_linear` computes the same thing in plain torch (unpack, then a float matmul),
and says so once with a :class:`RuntimeWarning`.

Numerics: the activation quantisation is the reference's own (:func:`quantize_activations`'s
ops, so the int8 values are identical); the integer dot products are exact; only the final
float scaling differs from the reference's float matmul, by float32 rounding (the tests bound
``|fast - reference| <= 1e-5 * (|Q8(x)| @ |W|^T)`` elementwise).
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

EPS = 1e-5  # as vljepa.kernels.bitlinear.EPS: floor of the activation scale
BLOCK = 128  # inputs per kernel block; K is padded to a multiple of it on the activation side
_SRC = Path(__file__).resolve().parent / "csrc" / "ternary_gemm.cpp"
_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_state: dict = {"ext": None, "tried": False, "why": None, "warned": False, "off": 0}


def _build():
    """Compile (or load the cached build of) the extension; None and a reason if impossible."""
    if os.environ.get("VLJEPA_NO_KERNEL", "") not in ("", "0"):
        return None, "VLJEPA_NO_KERNEL is set"
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in ("AVX2", "AVX512"):
        return None, f"this CPU has no AVX2 (torch reports {cap})"
    try:
        from torch.utils import cpp_extension  # optional at import time: needs a compiler

        ext = cpp_extension.load(
            name="vljepa_ternary_gemm", sources=[str(_SRC)],
            extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"],
            verbose=False)
        return ext, None
    except Exception as e:  # no compiler / ninja, or a failed build: the reference path serves
        return None, f"building {_SRC.name} failed ({type(e).__name__}: {str(e)[:200]})"


def kernel():
    """The compiled extension module, or None (then :func:`kernel_unavailable_reason` says why).

    The first call compiles it (tens of seconds) or loads torch's cached build.
    """
    if not _state["tried"]:
        _state["ext"], _state["why"] = _build()
        _state["tried"] = True
    return _state["ext"]


def kernel_unavailable_reason() -> str | None:
    """Why :func:`kernel` is None, or None if the compiled kernel is in use."""
    kernel()
    return _state["why"]


@contextlib.contextmanager
def reference_path():
    """Within this block, packed ternary layers use the plain-torch reference path (no warning);
    for checking the kernel against the reference, or bit-exact comparisons with a latent model."""
    _state["off"] += 1
    try:
        yield
    finally:
        _state["off"] -= 1


def _reset_for_tests() -> None:
    """Forget the build attempt and the warning (tests toggle ``VLJEPA_NO_KERNEL``)."""
    _state.update(ext=None, tried=False, why=None, warned=False, off=0)


def use_kernel(x: torch.Tensor) -> bool:
    """True if the compiled kernel can take ``x`` (float32 on the CPU). If the kernel is
    unavailable, warns once (RuntimeWarning, with the reason) and returns False."""
    if _state["off"]:
        return False
    if kernel() is None:
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(f"vljepa: the packed ternary kernel is unavailable ({_state['why']}); "
                          "ternary layers use the slower plain-torch unpack-and-matmul path",
                          RuntimeWarning, stacklevel=3)
        return False
    return x.device.type == "cpu" and x.dtype == torch.float32


def check_packed(packed: torch.Tensor, shape: tuple[int, int], name: str = "weight_packed"
                 ) -> None:
    """Raise ValueError naming ``name`` unless ``packed`` is a contiguous 1-D uint8 tensor of
    ceil(out * in / 4) bytes for a weight of ``shape`` = (out_features, in_features)."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{name}: weight shape must be (out_features, in_features) >= 1, "
                         f"got {tuple(shape)}")
    need = -(-math.prod(shape) // 4)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise ValueError(f"{name}: a packed ternary weight is a uint8 tensor, got "
                         f"{getattr(packed, 'dtype', type(packed).__name__)}")
    if packed.dim() != 1 or packed.numel() != need:
        raise ValueError(f"{name}: a weight of shape {tuple(shape)} packs into uint8 ({need},) "
                         f"(four 2-bit codes per byte), got {tuple(packed.shape)}")


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float32 -> (q (M, K) float32 holding integers in [-128, 127], s (M, 1) fp32 with
    q / s = the reference's quantise-dequantise). Same ops as ``quantize_activations``."""
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)
    return (x * s).round().clamp(-128, 127), s


def reference_linear(x: torch.Tensor, packed: torch.Tensor, shape: tuple[int, int],
                     scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain-torch reference: ``F.linear(Q8(x), unpack(packed) * scale, bias)``;
    shapes, dtypes and errors as :func:`ternary_linear`."""
    check_packed(packed, shape)
    n, k = shape
    c = ((packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 3).reshape(-1)[:n * k]
    w = (c.float() - 1).view(n, k) * scale
    q, s = quantize_int8(x)
    return F.linear(q / s, w, bias)


def ternary_linear(x: torch.Tensor, packed: torch.Tensor, shape: tuple[int, int],
                   scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = Q8(x) @ (W * scale)^T + bias with W in {-1, 0, 1} read from its 2-bit packing.

    Args:
        x: (..., in_features) float32 activations (CPU); quantised here to int8 per row,
            absmax (BitNet b1.58).
        packed: (ceil(out_features * in_features / 4),) uint8, the (out, in) weight's codes
            w + 1 flattened row-major, four per byte, lowest bits first (``pack_ternary``).
        shape: (out_features, in_features).
        scale: () float32, the weight's absmean scale.
        bias: (out_features,) float32 or None.
    Returns:
        (..., out_features) float32.
    Raises:
        ValueError: ``packed`` has the wrong dtype or length for ``shape``, or ``x``'s last
            dimension is not in_features.
    Uses the compiled AVX2 kernel when available (see the module docstring) and no gradient is
    wanted, else :func:`reference_linear` (after one RuntimeWarning saying why, if the kernel
    is unavailable).
    """
    check_packed(packed, shape)
    n, k = shape
    if x.shape[-1] != k:
        raise ValueError(f"input has {x.shape[-1]} features; the packed weight takes {k}")
    if (torch.is_grad_enabled() and x.requires_grad) or not use_kernel(x):
        return reference_linear(x, packed, shape, scale, bias)  # autograd needs the reference
    return _kernel_linear(x, packed, n, k, scale, bias)


def _kernel_linear(x, packed, n, k, scale, bias):
    """The compiled path, unchecked: callers have validated the packing (see ternary_linear).
    Computes no gradient: callers take it only where none is needed."""
    return _state["ext"].ternary_linear(x, packed, n, k, scale, bias)
