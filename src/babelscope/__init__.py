"""Babelscope: measure, locate and transfer the multilingual ability of transformer language models.

Importing the package is cheap: submodules (and torch) load only when used.
"""

__version__ = "0.1.0"

from babelscope.errors import BabelscopeError  # noqa: E402  (tiny, no heavy imports)

__all__ = ["BabelscopeError", "__version__"]
