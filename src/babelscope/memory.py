"""Give freed memory back to the operating system between units of work that each allocate a lot.

glibc's malloc serves allocations below its *dynamic* mmap threshold from the heap, and the threshold rises to
the size of every large block freed (up to 32 MiB). After the first language, a model's gradient and activation
tensors (a few MiB each) therefore come from the heap, and their freed holes are only partly reused by the next
language's differently sized batches: the resident set creeps up with every language although nothing is held.
``malloc_trim(0)`` returns the free pages (also from the middle of the heap) after each unit.

Measured (4-layer Gemma 3 at hidden 640, 85 MiB of scored weights, 128 tokens a language, one thread): resident
set after each of 12 languages 748 → 812 MiB without the trim, 720-721 MiB flat with it; peak 831 vs 805 MiB.
A no-op where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def release_freed_memory() -> None:
    """``malloc_trim(0)`` on glibc (thread-safe; a few milliseconds); nothing elsewhere."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)
