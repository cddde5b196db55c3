"""Where Babelscope looks for data and keeps its caches (each with an environment override)."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the directory of the shared datasets (UD, UDHR, benchmarks).
DATA_ENV = "BABELSCOPE_DATA"
#: Environment variable naming the cache directory (converted models, checksums).
CACHE_ENV = "BABELSCOPE_CACHE"


def data_dir() -> Path:
    """The shared data directory: ``$BABELSCOPE_DATA``, else ``../shared/data`` next to the checkout or cwd."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    for base in [Path.cwd(), *here.parents]:
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def cache_dir() -> Path:
    """The cache directory: ``$BABELSCOPE_CACHE``, else ``$XDG_CACHE_HOME/babelscope`` or ``~/.cache/babelscope``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "babelscope"
    path.mkdir(parents=True, exist_ok=True)
    return path
