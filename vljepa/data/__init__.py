"""Data: VQA datasets through HF ``datasets`` and the X-encoder feature cache."""
from .cache import FeatureCache, default_cache_dir
from .vqa import easy_vqa, load_vqa

__all__ = ["FeatureCache", "default_cache_dir", "easy_vqa", "load_vqa"]
