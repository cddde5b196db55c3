"""UD sentences per language for the syntax steps: moved to :mod:`babelscope.data.ud` (``treebank_paths``,
``load_treebanks``), the one UD spec parser. Kept so that older imports work."""

from babelscope.data.ud import load_treebanks, treebank_paths

__all__ = ["load_treebanks", "treebank_paths"]
