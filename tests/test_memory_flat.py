"""Memory that stays flat as the work grows: importance holds one language's scores at a time and gives freed
memory back between languages; extraction streams one batch at a time into the store's shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import build_tokenizer
from numerics import TINY_FORWARD, assert_close_scaled


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _mid_gemma():
    """A 4-layer Gemma 3 at the default model's width (85 MiB of block weights): big enough that the
    allocator's behaviour with gradient-sized buffers shows, small enough for seconds per language."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from babelscope.models.loader import describe

    torch.manual_seed(0)
    tok = build_tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=640, intermediate_size=2048, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                           max_position_embeddings=1024, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    model = Gemma3ForCausalLM(cfg).eval()
    return model, tok, describe(model, tok, "mid", "memory", checksum="mid")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read the RSS")
def test_importance_memory_is_flat_in_the_number_of_languages(tmp_path, monkeypatch):
    from babelscope.regions import importance

    model, tok, info = _mid_gemma()
    scored = 4 * sum(p.numel() for p in model.model.layers.parameters())
    at_start = []
    real = importance.language_scores

    def measured(*a, **k):
        at_start.append(_rss())  # what the previous languages left behind
        return real(*a, **k)

    monkeypatch.setattr(importance, "language_scores", measured)
    cfg = importance.ImportanceConfig(langs="eng,fra,deu,spa,rus,ita,nld", max_tokens=96, window=96, batch_size=1)
    importance.run(cfg, tmp_path, "imp", lambda: (model, tok, info))
    # From the third language on (the first two set up the engine's buffers and the writer thread), nothing
    # accumulates: before, glibc kept the freed gradient buffers and the resident set rose by ~0.7 of a score set
    # over 5 languages.
    growth = max(at_start[2:]) - at_start[2]
    print("RSS at the start of each language (MiB):", [round(r / 2**20) for r in at_start])
    assert growth < 0.1 * scored, [round(r / 2**20) for r in at_start]


def test_extract_streams_one_batch_at_a_time_into_the_shards(tmp_path, monkeypatch):
    from babelscope.data.ud import load_treebanks
    from babelscope.models.engine import Engine
    from babelscope.syntax import represent
    from conftest import build_tiny

    model, tok = build_tiny("gemma3")
    engine = Engine(model, tok, batch_size=4, progress=False)
    sentences = load_treebanks("pud-sample", "en", 30)["eng"]
    calls = []
    real = engine.hidden_states
    engine.hidden_states = lambda texts, *a, **k: calls.append(len(texts)) or real(texts, *a, **k)

    def no_memmap(*a, **k):
        raise AssertionError("the store is written batch by batch, not through a memory map of the whole shard")

    monkeypatch.setattr(np.lib.format, "open_memmap", no_memmap)
    rec = represent.extract_language(engine, sentences, [0, 2], "last", tmp_path / "eng", {"lang": "eng"})
    assert max(calls) <= 4 and sum(calls) == 30  # one engine batch of hidden states held at a time
    monkeypatch.undo()
    store = represent.Store(tmp_path)
    words = store.words("eng")
    assert rec["words"] == len(words["sent"])
    for i in (0, 17, 29):  # every sentence's rows hold its own words (written out of order, longest first)
        state = Engine(model, tok, progress=False).hidden_states([sentences[i].text], [2])[0]
        mask = represent.word_token_mask(np.array([(t.start, t.end) for t in sentences[i].tokens]),
                                         represent.token_spans(sentences[i].text, state["offsets"]))
        expected = represent.pool_words(state["hidden"], mask, "last")[0]
        rows = np.flatnonzero(words["sent"] == i)
        assert_close_scaled(np.asarray(store.vectors("eng", 2)[rows]), expected, TINY_FORWARD)


def _peak_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def _peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak")
def test_importance_peak_never_holds_two_score_sets(tmp_path, monkeypatch):
    """The writer still busy with language l's scores when language l+1's gradients appear used to put two score
    sets in memory at once (the peak of `regions importance --max-tokens 256` rose with the number of languages,
    each a new chance of that overlap). A writer made slow on purpose makes the overlap certain: the peak of every
    later language must stay that of the first (same window shapes), not one score set above it."""
    import time

    from babelscope.regions import importance

    model, tok, info = _mid_gemma()
    scored = 4 * sum(p.numel() for p in model.model.layers.parameters())
    real_scores, real_write = importance.language_scores, importance.write_temporary
    peaks = []

    def measured(*a, **k):
        _peak_reset()
        out = real_scores(*a, **k)
        peaks.append(_peak())
        return out

    def slow_write(*a, **k):
        time.sleep(1.0)  # a busy disk: the next language's backward starts before this file is written
        return real_write(*a, **k)

    monkeypatch.setattr(importance, "language_scores", measured)
    monkeypatch.setattr(importance, "write_temporary", slow_write)
    cfg = importance.ImportanceConfig(langs="eng,fra,deu,spa", max_tokens=96, window=96, batch_size=1)
    importance.run(cfg, tmp_path, "imp", lambda: (model, tok, info))
    print("peak while each language is scored (MiB):", [round(p / 2**20) for p in peaks], "score set",
          round(scored / 2**20))
    # one score set is `scored` bytes; two at once would add all of it. Allocator noise is a few MiB.
    assert max(peaks[1:]) - peaks[0] < 0.5 * scored, [round(p / 2**20) for p in peaks]
