"""The library version, in one place (pyproject.toml reads it; saved models record it)."""
__version__ = "0.1.0"
