"""Models: one loader for every spec, canonical module names per architecture, and the scoring engine."""

from babelscope.models.loader import DEFAULT_MODEL, ModelInfo, load_model

__all__ = ["DEFAULT_MODEL", "ModelInfo", "load_model"]
