"""The frozen encoders: the X-encoder (images -> visual tokens), the Y-encoder (texts -> S_Y) and
the pretrained text backbones that predictors read questions with."""
from .x_encoder import XEncoder
from .packaged import resolve_st_name
from .y_encoder import TextTokenizer, YEncoder

__all__ = ["XEncoder", "YEncoder", "TextTokenizer", "resolve_st_name"]
