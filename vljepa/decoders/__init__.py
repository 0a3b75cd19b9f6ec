"""Text from the shared space: the Y-decoder and the causal text decoders it (and the
token-generating baseline) is built from."""
from .y_decoder import YDecoder

__all__ = ["YDecoder"]
