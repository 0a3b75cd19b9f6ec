"""Serving: lean bundles that answer stored questions without the encoders' libraries."""
from .bundle import NotInBundleError, ServingModel, export_serving, load_serving

__all__ = ["NotInBundleError", "ServingModel", "export_serving", "load_serving"]
