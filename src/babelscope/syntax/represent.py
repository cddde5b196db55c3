"""Word vectors from subword hidden states, a streaming on-disk store, and the labelled instances.

* Word vector ``h_l(w)`` at layer ``l``: the hidden states of the subword tokens whose character span overlaps
  the word's span (offsets from the fast tokenizer, whitespace trimmed), pooled by ``first`` / ``last`` /
  ``mean``. Encoders default to ``first`` (Xu et al. 2022, as in mBERT probing work); decoders default to
  ``last``: under causal attention the first subword has not seen the rest of the word, the last one has.
* Grammatical-relation instance (Xu et al. 2022, Sec. 3): ``r = h(head) - h(dependent)`` labelled with the
  universal relation (subtype stripped: ``nmod:poss`` -> ``nmod``); the root and unannotated heads are left
  out, as are relations inside one multiword token (both words share one surface span, so ``r = 0``).
  POS instance: ``h(w)`` labelled with its UPOS tag.

Store layout (one folder per language, shards per layer, so no language x layer product is ever held)::

    STORE/<lang>/words.npz        per word: sentence index, word id, head, UPOS, deprel, span; sent_ids
    STORE/<lang>/layer<LL>.npy    float32 (n_words, hidden), written batch by batch at each word's row
    STORE/<lang>/done.json        written last: layers, pooling, model checksum, counts
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from babelscope.errors import BabelscopeError

POOLINGS = ("first", "last", "mean")


# ------------------------------------------------------------------------------------------------- pooling
def token_spans(text: str, offsets: np.ndarray) -> np.ndarray:
    """Token character spans with surrounding whitespace trimmed; special tokens and pure-space tokens get
    an empty span (they belong to no word)."""
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2).copy()
    for t, (s, e) in enumerate(spans):
        piece = text[s:e]
        if not piece.strip():
            spans[t] = (0, 0)
            continue
        spans[t] = (s + len(piece) - len(piece.lstrip()), e - len(piece) + len(piece.rstrip()))
    return spans


def word_token_mask(word_spans: np.ndarray, tok_spans: np.ndarray) -> np.ndarray:
    """Boolean (W, T): token t overlaps word w (non-empty token span, ``s_t < e_w`` and ``e_t > s_w``)."""
    ws, we = word_spans[:, :1], word_spans[:, 1:]
    ts, te = tok_spans[None, :, 0], tok_spans[None, :, 1]
    return (ts < we) & (te > ws) & (te > ts)


def pool_words(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """Word vectors (L, W, H) from token states ``hidden`` (L, T, H) and the (W, T) overlap mask.

    ``first``/``last``: the first/last overlapping token; ``mean``: their average. Words without a token
    (cut off by truncation) are NaN.
    """
    if pooling not in POOLINGS:
        raise BabelscopeError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    n_layers, n_tok, dim = hidden.shape
    has = mask.any(axis=1)
    out = np.full((n_layers, mask.shape[0], dim), np.nan, dtype=np.float32)
    if pooling == "mean":
        weights = mask[has].astype(np.float32)
        weights /= weights.sum(axis=1, keepdims=True)
        out[:, has] = np.einsum("wt,lth->lwh", weights, hidden)
        return out
    pick = mask.argmax(axis=1) if pooling == "first" else n_tok - 1 - mask[:, ::-1].argmax(axis=1)
    out[:, has] = hidden[:, pick[has]]
    return out


def default_pooling(kind: str) -> str:
    """``first`` for encoders (the paper's mBERT setting), ``last`` for causal decoders (see module docs)."""
    return "first" if kind == "encoder" else "last"


# ------------------------------------------------------------------------------------------------- store
def _words_table(sentences: Sequence[Any]) -> dict[str, np.ndarray]:
    cols: dict[str, list] = {k: [] for k in ("sent", "word", "head", "upos", "deprel", "start", "end")}
    for i, sentence in enumerate(sentences):
        for tok in sentence.tokens:
            cols["sent"].append(i)
            cols["word"].append(tok.id)
            cols["head"].append(tok.head)
            cols["upos"].append(tok.upos)
            cols["deprel"].append(tok.deprel)
            cols["start"].append(tok.start)
            cols["end"].append(tok.end)
    table = {k: np.asarray(v, dtype=np.int32) for k, v in cols.items() if k not in ("upos", "deprel")}
    table["upos"] = np.asarray(cols["upos"], dtype=str)
    table["deprel"] = np.asarray(cols["deprel"], dtype=str)
    table["sent_ids"] = np.asarray([s.id for s in sentences], dtype=str)
    return table


def _check_offsets(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise BabelscopeError(
            f"{getattr(tokenizer, 'name_or_path', 'tokenizer')}: a slow (Python) tokenizer cannot give character "
            "offsets, so subwords cannot be mapped to UD words; save the model with a fast tokenizer "
            "(tokenizer.json) and load that"
        )


def extract_language(engine, sentences: Sequence[Any], layers: Sequence[int], pooling: str, out: Path,
                     meta: dict[str, Any], chunk: int | None = None, max_tokens: int | None = None,
                     bar: Any = None) -> dict[str, Any]:
    """Write one language's word vectors for ``layers`` into ``out`` (see module docs); return its record.

    Streamed per batch: sentences go to the engine ``chunk`` (default: its batch size) at a time, longest
    first, and each batch's pooled word vectors are written straight into the per-layer ``.npy`` shards at
    their rows (``os.pwrite`` through the page cache, no memory map), so memory holds one batch's hidden states
    whatever the number of sentences or languages. The shards are renamed into place only when the language is
    complete; ``done.json`` is written last. Sentences longer than ``max_tokens`` tokens (the model's position
    limit) are skipped and counted.
    """
    import os

    from babelscope.memory import release_freed_memory
    from babelscope.runs import atomic_open, write_json

    _check_offsets(engine.tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    lengths = [len(ids) + 2 for ids in engine.encode([s.text for s in sentences])]
    if max_tokens is not None:
        skipped = sum(n > max_tokens for n in lengths)
        kept = [i for i, n in enumerate(lengths) if n <= max_tokens]
        sentences, lengths = [sentences[i] for i in kept], [lengths[i] for i in kept]
    else:
        skipped = 0
    table = _words_table(sentences)
    n_words = len(table["sent"])
    if n_words == 0:
        raise BabelscopeError(f"{meta.get('lang')}: no words to embed (all sentences empty or too long)")
    first_row = np.concatenate([[0], np.cumsum([len(s.tokens) for s in sentences])])
    order = sorted(range(len(sentences)), key=lambda i: -lengths[i])  # longest first: least padding
    chunk = chunk or engine.batch_size
    dim = None
    shards: dict[int, tuple[int, int]] = {}  # layer -> (file descriptor, byte offset of row 0)
    unmatched = 0
    try:
        for start in range(0, len(order), chunk):
            batch = [sentences[i] for i in order[start:start + chunk]]
            states = engine.hidden_states([s.text for s in batch], layers, desc=f"{meta.get('lang')}")
            for i, sentence, state in zip(order[start:start + chunk], batch, states, strict=True):
                if dim is None:
                    dim = state["hidden"].shape[-1]
                    for layer in layers:
                        shards[layer] = _open_shard(out / f".layer{layer:02d}.npy.tmp", n_words, dim)
                spans = np.asarray([(t.start, t.end) for t in sentence.tokens], dtype=np.int64).reshape(-1, 2)
                mask = word_token_mask(spans, token_spans(sentence.text, state["offsets"]))
                unmatched += int((~mask.any(axis=1)).sum())
                words = pool_words(state["hidden"], mask, pooling)
                for j, layer in enumerate(layers):
                    fd, offset = shards[layer]
                    data = np.ascontiguousarray(words[j], dtype="<f4").tobytes()
                    at = offset + int(first_row[i]) * dim * 4
                    while data:
                        written = os.pwrite(fd, data, at)
                        data, at = data[written:], at + written
            del states
            release_freed_memory()  # glibc keeps the batch's freed buffers otherwise (see babelscope.memory)
            if bar is not None:
                bar.update(len(batch))
    finally:
        for fd, _ in shards.values():
            os.close(fd)
    for layer in shards:
        os.replace(out / f".layer{layer:02d}.npy.tmp", out / f"layer{layer:02d}.npy")
    with atomic_open(out / "words.npz", "wb") as fh:
        np.savez(fh, **table)
    record = {**meta, "layers": list(layers), "pooling": pooling, "sentences": len(sentences),
              "skipped_long": skipped, "words": n_words, "words_without_token": unmatched, "hidden_size": dim}
    write_json(out / "done.json", record)
    return record


def _open_shard(path: Path, rows: int, dim: int) -> tuple[int, int]:
    """Create a float32 ``(rows, dim)`` ``.npy`` file (header, then room for ``rows * dim`` values, every row
    written later) and return ``(writable descriptor, byte offset of the data)``."""
    import os

    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        offset = fh.tell()
        fh.truncate(offset + rows * dim * 4)
    return os.open(path, os.O_WRONLY), offset


class Store:
    """Read side of the store: languages, layers, word tables and memory-mapped layer shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise BabelscopeError(f"{self.path}: no representation store; run `babelscope syntax extract` first")
        self.records = {p.parent.name: json.loads(p.read_text(encoding="utf-8"))
                        for p in sorted(self.path.glob("*/done.json"))}
        if not self.records:
            raise BabelscopeError(f"{self.path}: the store has no finished language; run the extract step")

    def languages(self) -> list[str]:
        return sorted(self.records)

    def layers(self, lang: str | None = None) -> list[int]:
        return list(self.records[lang or self.languages()[0]]["layers"])

    def words(self, lang: str) -> dict[str, np.ndarray]:
        self._check(lang)
        with np.load(self.path / lang / "words.npz") as z:
            return {k: z[k] for k in z.files}

    def vectors(self, lang: str, layer: int) -> np.ndarray:
        self._check(lang)
        if layer not in self.records[lang]["layers"]:
            raise BabelscopeError(f"{self.path}: layer {layer} was not extracted for {lang} "
                                  f"(have {self.records[lang]['layers']}); re-run extract with --layers")
        return np.load(self.path / lang / f"layer{layer:02d}.npy", mmap_mode="r")

    def _check(self, lang: str) -> None:
        if lang not in self.records:
            raise BabelscopeError(f"{self.path}: language {lang} is not in the store (it has "
                                  f"{', '.join(self.languages())}); extract it first")


# ------------------------------------------------------------------------------------------------- instances
@dataclass
class Instances:
    """Labelled vectors with aligned descriptors (rsatoolbox's Dataset idea): ``X`` (n, H), one label and one
    sentence id per row."""

    X: np.ndarray
    labels: np.ndarray
    sent_ids: np.ndarray
    lang: str = ""
    layer: int = -1
    kind: str = "relation"

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> Instances:
        return Instances(self.X[index], self.labels[index], self.sent_ids[index], self.lang, self.layer, self.kind)


def relation_instances(words: dict[str, np.ndarray], vectors: np.ndarray, lang: str = "",
                       layer: int = -1) -> Instances:
    """``r = h(head) - h(dependent)`` for every word with a head, labelled with its universal relation.

    Left out: the root (head 0) and unannotated heads (-1), relations whose two words share one surface span
    (a multiword token) and words without a vector.
    """
    first = np.zeros(len(words["sent_ids"]) + 1, dtype=np.int64)
    np.cumsum(np.bincount(words["sent"], minlength=len(words["sent_ids"])), out=first[1:])
    dep = np.arange(len(words["sent"]))
    keep = words["head"] > 0
    head = np.where(keep, first[words["sent"]] + words["head"] - 1, 0)
    same_span = (words["start"][head] == words["start"]) & (words["end"][head] == words["end"])
    keep &= ~same_span
    V = np.asarray(vectors)
    finite = np.isfinite(V[:, 0])
    keep &= finite & finite[head]
    dep, head = dep[keep], head[keep]
    labels = np.asarray([rel.split(":")[0] for rel in words["deprel"][keep]], dtype=str)
    X = (V[head] - V[dep]).astype(np.float32)
    return Instances(X, labels, words["sent_ids"][words["sent"][keep]], lang, layer, "relation")


def pos_instances(words: dict[str, np.ndarray], vectors: np.ndarray, lang: str = "", layer: int = -1) -> Instances:
    """Each word's vector labelled with its UPOS tag (words without a tag or a vector left out)."""
    V = np.asarray(vectors)
    keep = np.isfinite(V[:, 0]) & (words["upos"] != "_")
    return Instances(V[keep].astype(np.float32), words["upos"][keep], words["sent_ids"][words["sent"][keep]],
                     lang, layer, "pos")


def instances(store: Store, lang: str, layer: int, kind: str = "relation") -> Instances:
    """Relation or POS instances of one language and layer, from the store."""
    if kind not in ("relation", "pos"):
        raise BabelscopeError(f"concept kind {kind!r}: use relation or pos")
    fn = relation_instances if kind == "relation" else pos_instances
    return fn(store.words(lang), store.vectors(lang, layer), lang, layer)


def subsample(inst: Instances, n: int | None, seed: int) -> Instances:
    """``n`` instances drawn without replacement (all of them when there are fewer), seeded."""
    if n is None or len(inst) <= n:
        return inst
    rng = np.random.default_rng(seed)
    return inst.take(np.sort(rng.choice(len(inst), size=n, replace=False)))


def standardizer(sets: Sequence[Instances]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation pooled over every set (all languages together), so that
    standardising keeps the differences between languages and removes only the scale of each dimension
    (the few "massive activation" dimensions of decoders otherwise dominate Euclidean distances)."""
    X = np.concatenate([s.X for s in sets]).astype(np.float64)
    std = X.std(axis=0)
    return X.mean(axis=0), np.where(std > 0, std, 1.0)


def standardize(inst: Instances, mean: np.ndarray, std: np.ndarray) -> Instances:
    X = ((inst.X - mean) / std).astype(np.float32)
    return Instances(X, inst.labels, inst.sent_ids, inst.lang, inst.layer, inst.kind)


def top_dimension_share(X: np.ndarray) -> float:
    """Share of all pairwise squared Euclidean distance carried by the largest dimension:
    ``sum_{i,j} (x_id - x_jd)^2 = 2 n^2 var_d``, so the share is ``max_d var_d / sum_d var_d``."""
    var = np.asarray(X, dtype=np.float64).var(axis=0)
    return float(var.max() / var.sum()) if var.sum() > 0 else float("nan")


def split_by_sentence(sent_ids: np.ndarray, test_fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean mask of test rows, decided by a hash of (seed, sent_id) only: on a parallel treebank a sentence
    and all its translations land on the same side."""
    from babelscope.caches import unit_fraction

    unique = np.unique(sent_ids)
    side = {sid: unit_fraction(f"{seed}\0{sid}") < test_fraction for sid in unique}
    return np.asarray([side[s] for s in sent_ids], dtype=bool)
