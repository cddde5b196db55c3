"""The texts a regions step reads: moved to :mod:`babelscope.data.views` (importance text and evaluation text
are disjoint by unit id). Kept so that older imports work; new code imports ``babelscope.data.views``."""

from babelscope.data.views import SplitView, language_codes, open_text_corpus, split_side, token_windows

__all__ = ["SplitView", "language_codes", "open_text_corpus", "split_side", "token_windows"]
