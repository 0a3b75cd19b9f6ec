"""The ternary path (BitNet b1.58): BitLinear layers, 2-bit packing, and the packed int8 x 2-bit
matmul (csrc/ternary_gemm.cpp) with its plain-torch reference."""
from .bitlinear import BitLinear

__all__ = ["BitLinear"]
