"""Merge new SentencePiece pieces into a base tokenizer, for the three kinds users have.

* ``sentencepiece``: a ``tokenizer.model`` ModelProto (Llama 2, Gemma's original files). New pieces are appended;
  their score follows the model type: in SentencePiece BPE a piece's score is its merge priority (higher merges
  first), so new pieces get ``min(score) - 1, - 2, ...`` and come after every old merge (the Chinese-LLaMA script's
  score 0 puts them ahead of all old merges instead); in Unigram a score is a log-probability, so the new piece
  keeps the log-probability the target-language model gave it.
* ``bpe``: a Hugging Face fast tokenizer with a BPE model, byte-level (Llama 3, Qwen) or SentencePiece-derived with
  byte fallback (the default Gemma 3 tokenizer). Each new token comes **with the merges that build it**, appended
  after the old merges (continued BPE, Purason et al. 2025): every split ``(l, r)`` of the piece whose two halves
  are in the extended vocabulary, ordered by the new piece's rank, then by the ids of ``l`` and ``r`` (the rule
  transformers uses to rebuild merges from a SentencePiece vocabulary). Never ``add_tokens``: "added tokens" are
  matched before the model and change the spacing of the text around them.
* ``unigram``: a Hugging Face fast tokenizer with a Unigram model (XLM-R): pieces appended with their scores.

Pieces are written in the model's own form: ``▁`` for a space (Metaspace / SentencePiece), or the byte-level
alphabet (``Ġ`` ...) for byte-level BPE.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from babelscope.errors import BabelscopeError

SPACE = "\u2581"
BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
NORMAL = 1  # SentencePiece piece type of ordinary pieces (2 unknown, 3 control, 4 user-defined, 6 byte)


@dataclass
class BaseTokenizer:
    """The base tokenizer, its kind, its ``tokenizer.json`` (as a dict) and, for ``sentencepiece``, its proto."""

    kind: str  # sentencepiece | bpe | unigram
    source: Path
    tokenizer: Any  # Hugging Face fast tokenizer (or, for the checks before a step runs, the tokenizers library's)
    spec: dict[str, Any]
    proto: Any = None
    byte_level: bool = False
    vocab: dict[str, int] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        """The SentencePiece model type that matches the base (``bpe`` or ``unigram``)."""
        return "unigram" if self.kind == "unigram" or (self.proto is not None and
                                                      self.proto.trainer_spec.model_type == 1) else "bpe"  # fmt: skip


def detect(source: Path, tokenizer) -> BaseTokenizer:
    """Which kind of tokenizer this is; a BabelscopeError for kinds we cannot merge into."""
    rust = type(tokenizer).__name__ == "Tokenizer"  # the tokenizers library's own (read from tokenizer.json)
    if not rust and not getattr(tokenizer, "is_fast", False):
        raise BabelscopeError(f"{source}: a slow tokenizer without a tokenizer.model or tokenizer.json; "
                              "vocabulary extension needs a SentencePiece model file or a fast tokenizer")  # fmt: skip
    spec = json.loads((tokenizer if rust else tokenizer.backend_tokenizer).to_str())
    model_type = spec.get("model", {}).get("type")
    vocab = tokenizer.get_vocab(with_added_tokens=True) if rust else tokenizer.get_vocab()
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    model_file = Path(source) / "tokenizer.model"
    if model_file.is_file():
        from sentencepiece import sentencepiece_model_pb2 as pb

        proto = pb.ModelProto()
        try:
            proto.ParseFromString(model_file.read_bytes())
        except Exception:  # noqa: BLE001 - a tokenizer.model that is not a SentencePiece proto
            proto = None
        if proto is not None and proto.pieces:
            return BaseTokenizer("sentencepiece", Path(source), tokenizer, spec, proto, False, vocab)
    if model_type == "BPE":
        return BaseTokenizer("bpe", Path(source), tokenizer, spec, None, byte_level, vocab)
    if model_type == "Unigram":
        return BaseTokenizer("unigram", Path(source), tokenizer, spec, None, False, vocab)
    raise BabelscopeError(
        f"{source}: a {model_type} tokenizer; vocabulary extension merges into SentencePiece models, BPE and "
        "Unigram fast tokenizers only (WordPiece/WordLevel vocabularies have no merge rules or scores to extend)"
    )


# ---------------------------------------------------------------------------------------- normaliser check
def _canon(text: str) -> str:
    return " ".join(text.replace(SPACE, " ").split())


def normaliser_rewrites(base: BaseTokenizer, texts: list[str]) -> tuple[int, str | None]:
    """How many texts the base normaliser rewrites (beyond mapping spaces to ``▁``), and the first change."""
    normalizer = getattr(base.tokenizer, "backend_tokenizer", base.tokenizer).normalizer
    if normalizer is None:
        return 0, None
    changed, example = 0, None
    for text in texts:
        out = normalizer.normalize_str(text)
        if _canon(out) != _canon(text):
            changed += 1
            if example is None:
                i = next((k for k, (a, b) in enumerate(zip(_canon(text), _canon(out), strict=False)) if a != b), 0)
                example = f"{_canon(text)[i:i + 12]!r} -> {_canon(out)[i:i + 12]!r}"
    return changed, example


# ---------------------------------------------------------------------------------------- SentencePiece training
def spm_settings(base: BaseTokenizer) -> dict[str, Any]:
    """Trainer settings that match the base normaliser, so the new pieces can be reached in it."""
    if base.proto is not None:
        ns, ts = base.proto.normalizer_spec, base.proto.trainer_spec
        return {"byte_fallback": ts.byte_fallback, "split_digits": ts.split_digits,
                "add_dummy_prefix": ns.add_dummy_prefix, "remove_extra_whitespaces": ns.remove_extra_whitespaces,
                "normalization_rule_name": "identity"}  # fmt: skip
    model = base.spec.get("model", {})
    blob = json.dumps([base.spec.get("normalizer"), base.spec.get("pre_tokenizer")])
    dummy = '"Prepend"' in blob or re.search(r'"prepend_scheme": "(always|first)"', blob) is not None
    digits = any(len(t) > 1 and t.lstrip(SPACE + "Ġ").isdigit() and t.lstrip(SPACE + "Ġ").isascii()
                 for t in list(base.vocab)[:400000])  # fmt: skip
    return {"byte_fallback": bool(model.get("byte_fallback")) and not base.byte_level, "split_digits": not digits,
            "add_dummy_prefix": bool(dummy), "remove_extra_whitespaces": False,
            "normalization_rule_name": "identity"}  # fmt: skip


def train_sentencepiece(texts: list[str], vocab_size: int, model_type: str, coverage: float,
                        settings: dict[str, Any], split_by_whitespace: bool = True,
                        what: str = "the text"):  # fmt: skip
    """Train a SentencePiece model on ``texts`` with the base's normaliser settings; returns its ModelProto."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
            character_coverage=coverage, split_by_whitespace=split_by_whitespace, num_threads=1, minloglevel=2,
            max_sentence_length=1 << 16, bos_id=-1, eos_id=-1, unk_id=0, **settings,
        )  # fmt: skip
    except RuntimeError as exc:
        msg = str(exc)
        most = re.search(r"value <= (\d+)", msg)
        if most:
            raise BabelscopeError(
                f"--vocab-size {vocab_size}: {what} ({len(texts)} texts, {sum(map(len, texts)):,} characters) "
                f"supports at most {most.group(1)} SentencePiece pieces; lower --vocab-size or give more text"
            ) from None
        need = re.search(r"(\d+) vs (\d+)", msg)
        if "smaller than required_chars" in msg and need:
            raise BabelscopeError(
                f"--vocab-size {vocab_size}: {what} has {need.group(2)} required characters and meta pieces; raise "
                f"--vocab-size above {need.group(2)} or lower --character-coverage"
            ) from None
        raise BabelscopeError(f"SentencePiece training failed on {what}: {msg.splitlines()[-1][:200]}") from None
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    return proto


# ---------------------------------------------------------------------------------------- pieces
_BYTE_ENCODER: dict[int, str] | None = None


def _byte_encoder() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the byte-level BPE alphabet)."""
    global _BYTE_ENCODER
    if _BYTE_ENCODER is None:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_ENCODER = dict(zip(bs, map(chr, cs), strict=True))
    return _BYTE_ENCODER


def model_form(base: BaseTokenizer, piece: str) -> str:
    """A SentencePiece piece written as the base model's vocabulary writes it."""
    if base.byte_level:
        enc = _byte_encoder()
        return "".join(enc[b] for b in piece.replace(SPACE, " ").encode("utf-8"))
    return piece


def surface(base: BaseTokenizer, token: str) -> str:
    """The text a vocabulary entry stands for (``▁`` -> space; byte-level characters -> bytes)."""
    if base.byte_level:
        dec = {c: b for b, c in _byte_encoder().items()}
        return bytes(dec[c] for c in token if c in dec).decode("utf-8", errors="replace")
    return token.replace(SPACE, " ")


def new_pieces(base: BaseTokenizer, trained) -> list[tuple[str, float]]:
    """The trained model's ordinary pieces missing from the base, in the trained model's priority order,
    written in the base model's form, with their SentencePiece scores."""
    ordered = sorted(((p.piece, p.score, i) for i, p in enumerate(trained.pieces) if p.type == NORMAL),
                     key=lambda x: (-x[1], x[2]))  # fmt: skip
    known = set(base.vocab) | ({p.piece for p in base.proto.pieces} if base.proto is not None else set())
    out, seen = [], set()
    for piece, score, _ in ordered:
        form = model_form(base, piece)
        if form in known or form in seen or BYTE_PIECE.match(piece):
            continue
        seen.add(form)
        out.append((form, score))
    return out


# ---------------------------------------------------------------------------------------- merging
def new_merges(pieces: list[str], vocab: dict[str, int], existing: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Continued BPE: for each new piece in priority order, every split whose halves are in ``vocab``."""
    merges = []
    for piece in pieces:
        local = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        merges.extend(m for m in local if m not in existing)
    return merges


def first_new_id(base: BaseTokenizer) -> int:
    """The first id free for new pieces: after every id the tokenizer uses (vocabulary and added tokens)."""
    ids = set(base.vocab.values())
    if base.kind == "bpe":
        return max(ids) + 1
    size = len(base.proto.pieces) if base.proto is not None else len(base.spec["model"]["vocab"])
    clash = sorted(i for i in ids if i >= size)
    if clash:
        raise BabelscopeError(f"{base.source}: added tokens use ids {clash[:5]} after the {size} pieces of this "
                              f"{base.kind} model, where appended pieces would go; remove them first")  # fmt: skip
    return size


#: the files of a tokenizer besides ``tokenizer.json`` / ``tokenizer.model`` (special tokens, chat template)
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
              "chat_template.json")


def extend(base: BaseTokenizer, pieces: list[tuple[str, float]], workdir: Path):
    """The extended Hugging Face fast tokenizer (loaded from files written to ``workdir``) and the new ids.

    Returns ``(tokenizer, {piece: id}, extra_files)`` where ``extra_files`` maps a file name (``tokenizer.model``)
    to its bytes for the saved model directory."""
    from transformers import AutoTokenizer

    start = first_new_id(base)
    ids = {piece: start + i for i, (piece, _) in enumerate(pieces)}
    workdir.mkdir(parents=True, exist_ok=True)
    extra: dict[str, bytes] = {}
    if base.kind == "sentencepiece":
        proto = type(base.proto)()
        proto.CopyFrom(base.proto)
        floor = min((p.score for p in proto.pieces), default=0.0)
        for i, (piece, score) in enumerate(pieces):
            new = proto.pieces.add()
            new.piece = piece
            new.score = score if base.model_type == "unigram" else floor - 1 - i
        extra["tokenizer.model"] = proto.SerializeToString()
        for name in SIDE_FILES:
            if (base.source / name).is_file():
                shutil.copy(base.source / name, workdir / name)
        (workdir / "tokenizer.model").write_bytes(extra["tokenizer.model"])
    else:
        source = Path(base.source)
        if (source / "tokenizer_config.json").is_file():  # the files the base loaded from, but tokenizer.json
            for name in SIDE_FILES:
                if (source / name).is_file():
                    shutil.copy(source / name, workdir / name)
        elif hasattr(base.tokenizer, "save_pretrained"):  # a tokenizer from elsewhere: its own files
            base.tokenizer.save_pretrained(workdir)
        # a copy of what changes (the vocabulary and the merges): a JSON round trip of the whole spec takes
        # seconds for a 262k vocabulary
        vocab = base.spec["model"]["vocab"]  # BPE: {piece: id}; Unigram: [[piece, score], ...]
        model = {**base.spec["model"], "vocab": dict(vocab) if isinstance(vocab, dict) else list(vocab)}
        if "merges" in model:
            model["merges"] = list(model["merges"])
        spec = {**base.spec, "model": model}
        if base.kind == "bpe":
            model["vocab"].update(ids)
            plain = bool(model["merges"]) and isinstance(model["merges"][0], str)
            existing = {tuple(m.split(" ", 1)) if plain else tuple(m) for m in model["merges"]}
            added = new_merges([p for p, _ in pieces], model["vocab"], existing)
            model["merges"].extend(f"{a} {b}" if plain else [a, b] for a, b in added)
        else:
            model["vocab"].extend([piece, float(score)] for piece, score in pieces)
        (workdir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(workdir))
    got = {piece: tokenizer.convert_tokens_to_ids(piece) for piece in ids}
    wrong = [p for p in ids if got[p] != ids[p]]
    if wrong:
        raise BabelscopeError(f"extended tokenizer: {len(wrong)} new pieces did not get their ids (first "
                              f"{wrong[0]!r}: {got[wrong[0]]} instead of {ids[wrong[0]]})")  # fmt: skip
    return tokenizer, ids, extra


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens from a transformers tokenizer, a ``tokenizers.Tokenizer`` or a
    SentencePiece processor (one batched call)."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if hasattr(backend, "encode_batch"):
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    if hasattr(tokenizer, "encode") and not hasattr(tokenizer, "apply_chat_template"):  # SentencePiece
        return [list(x) for x in tokenizer.encode(texts)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def extend_keeping(base: BaseTokenizer, pieces: list[tuple[str, float]], workdir: Path, old_texts: list[str],
                   rounds: int = 20):
    """:func:`extend`, leaving out every piece whose merges would change the tokenization of an ``old_texts`` text
    (text of other languages): ``(tokenizer, {piece: id}, extra_files, dropped pieces)``.

    New merges rank after every old one, so they fire only where no old merge applies, and every output they make
    is a new token: a changed old text holds at least one new token. Those tokens' pieces are dropped and the
    tokenizer is rebuilt (a dropped piece may have been a half of another one's merges) until no old text
    changes; a byte-level BPE (Qwen, GPT-2) keeps every old text's ids exactly then."""
    base_ids = _ids(base.tokenizer, old_texts) if old_texts else []
    dropped: list[str] = []
    for _ in range(rounds):
        tokenizer, ids, extra = extend(base, pieces, workdir)
        if not old_texts:
            return tokenizer, ids, extra, dropped
        new_ids = _ids(tokenizer, old_texts)
        fresh = set(ids.values())
        culprits = {t for a, b in zip(base_ids, new_ids, strict=True) if a != b for t in b if t in fresh}
        if not culprits:
            return tokenizer, ids, extra, dropped
        bad = {piece for piece, i in ids.items() if i in culprits}
        dropped += sorted(bad)
        pieces = [(p, score) for p, score in pieces if p not in bad]
        if not pieces:
            raise BabelscopeError("every new piece changes the tokenization of the other languages' text; "
                                  "use --no-keep-old to add them anyway")
    raise BabelscopeError(f"the extended tokenizer still changed other languages' text after {rounds} rounds of "
                          "dropping pieces; use --no-keep-old")


def model_tokenize(tokenizer, form: str) -> list[int]:
    """Ids of a vocabulary-form string tokenized by the model alone (no normaliser, no pre-tokenizer)."""
    return [t.id for t in tokenizer.backend_tokenizer.model.tokenize(form)]


def temporary_dir(parent: Path, prefix: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
