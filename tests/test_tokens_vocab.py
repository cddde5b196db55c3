"""Tokenizer efficiency (`babelscope tokens`) and vocabulary extension (`babelscope transfer vocab`) on tiny
tokenizers of the three kinds (byte-level BPE, SentencePiece ModelProto, Unigram fast), the real Gemma tokenizer,
and bad input."""

from __future__ import annotations

import io
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from babelscope.evaluate.tokens import TokensConfig, efficiency_rows, fertility_rows
from babelscope.evaluate.tokens import run as tokens_run
from babelscope.transfer.vocab import VocabConfig
from babelscope.transfer.vocab import run as vocab_run
from conftest import SENTENCES, build_tiny

SMALL = {"check_langs": "eng,fra,rus", "quality_langs": "eng", "max_units": 4, "window": 64, "batch_size": 4}


def tiny_llama(out: Path, vocab: int) -> None:
    """A tiny random Llama (untied head) with ``vocab`` rows, weights only (the test writes the tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(cfg).eval().save_pretrained(out, safe_serialization=True)


def sp_model_dir(out: Path) -> Path:
    """A SentencePiece BPE ``tokenizer.model`` with byte fallback (Llama 2 style) and a tiny Llama for it."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES * 20), model_writer=buf, vocab_size=420,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, num_threads=1,
                                   minloglevel=2)  # fmt: skip
    out.mkdir(parents=True)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tiny_llama(out, 420)
    return out


def unigram_dir(out: Path) -> Path:
    """A Unigram fast tokenizer (XLM-R style: Metaspace, pieces with log-probabilities) and a tiny Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)  # fmt: skip
    tok.train_from_iterator(SENTENCES * 3, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")  # fmt: skip
    fast.save_pretrained(out)
    tiny_llama(out, len(fast))
    return out


# ------------------------------------------------------------------------------------------ tokens
def test_tokens_premium_fertility_two_tokenizers(tiny_dir, tmp_path):
    from transformers import AutoTokenizer

    from babelscope.data import open_corpus

    other = sp_model_dir(tmp_path / "sp")
    cfg = TokensConfig(model=f"{tiny_dir},{other}", langs="en,fr,de,ru,zh,th", ud="pud-sample", ud_langs="en,de",
                       max_sentences=20)  # fmt: skip
    doc = tokens_run(cfg, tmp_path / "run")
    rows = {(r["model"], r["lang"]): r for r in doc["tables"]["per_language"]["rows"]}
    assert {m for m, _ in rows} == {tiny_dir.name, "sp"} and len(rows) == 12
    corpus = open_corpus("udhr-sample")
    for spec, name in ((tiny_dir, tiny_dir.name), (other, "sp")):
        tok = AutoTokenizer.from_pretrained(spec)
        plain = {c: sum(len(tok(u.text, add_special_tokens=False)["input_ids"]) for u in corpus.units(c))
                 for c in ("eng", "rus", "tha")}  # a plain loop: the same counts as the batched call
        assert rows[(name, "eng")]["premium"] == 1.0
        assert rows[(name, "rus")]["tokens"] == plain["rus"]
        assert rows[(name, "rus")]["premium"] == pytest.approx(plain["rus"] / plain["eng"], rel=1e-12)
        r = rows[(name, "tha")]
        assert r["tokens_per_byte"] == r["tokens"] / r["bytes"] and r["tokens_per_unit"] == r["tokens"] / r["units"]
    # the SentencePiece tokenizer saw no Thai: byte fallback; the byte-level BPE's counterpart is lone bytes
    thai = corpus.units("tha")
    sp_tok = AutoTokenizer.from_pretrained(other)
    n_bytes = sum(t.startswith("<0x") for u in thai for t in sp_tok.tokenize(u.text))
    assert rows[("sp", "tha")]["byte_fallback_share"] == n_bytes / rows[("sp", "tha")]["tokens"] > 0.5
    from babelscope.transfer.tokenizers import _byte_encoder

    lone = {_byte_encoder()[b] for b in range(0x80, 0x100)}  # one non-ASCII byte alone, as the vocabulary writes it
    tiny_tok = AutoTokenizer.from_pretrained(tiny_dir)
    tiny_thai = [t for u in thai for t in tiny_tok.tokenize(u.text)]
    share = sum(t in lone for t in tiny_thai) / len(tiny_thai)
    assert rows[(tiny_dir.name, "tha")]["byte_fallback_share"] == pytest.approx(share, rel=1e-12) and share > 0.5
    fert = {(r["model"], r["lang"]): r for r in doc["tables"]["fertility"]["rows"]}
    assert all(f["fertility"] >= 1 and 0 <= f["split_share"] <= 1 for f in fert.values())
    from babelscope.report import render_report

    html = render_report(tmp_path / "run").read_text()
    assert "Tokenizer efficiency" in html and "Fertility on pud-sample" in html and "<img" in html
    # resume: the same config is skipped (the results file is not rewritten)
    stamp = (tmp_path / "run" / "tokens" / "results.json").stat().st_mtime_ns
    tokens_run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "tokens" / "results.json").stat().st_mtime_ns == stamp


def test_fertility_counts_tokens_per_word_span(tiny_dir):
    """Fertility against a brute-force count: tokens whose character span overlaps each word's span."""
    from transformers import AutoTokenizer

    from babelscope.data.ud import load_treebanks

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    sents = load_treebanks("pud-sample", "de", 15)
    row = fertility_rows(tok, sents)[0]
    words = tokens = split = 0
    for s in sents["deu"]:
        offs = [o for o in tok(s.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
                if o[1] > o[0]]  # fmt: skip
        for a, b in sorted({(t.start, t.end) for t in s.tokens if t.end > t.start}):
            n = max(1, sum(1 for x, y in offs if x < b and y > a))
            words, tokens, split = words + 1, tokens + n, split + (n >= 2)
    assert row["words"] == words and row["fertility"] == tokens / words and row["split_share"] == split / words


def test_efficiency_not_parallel_has_no_premium(tiny_dir):
    from transformers import AutoTokenizer

    from babelscope.data import Unit

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    rows = efficiency_rows(tok, {"eng": [Unit("a", "eng", SENTENCES[0])]}, "eng", parallel=False)
    assert rows[0]["premium"] is None and rows[0]["tokens"] > 0


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece", "unigram", "gemma"])
def test_tokens_step_tokenizer_is_the_models_tokenizer(kind, tiny_dir, tmp_path):
    """`babelscope tokens` reads tokenizer.json with the tokenizers library (not transformers' class, which rebuilds
    it in Python): the same ids, offsets, byte-fallback ids, unk id and size as AutoTokenizer, on every language
    of the embedded UDHR sample, for a byte-level BPE, a SentencePiece model file (no tokenizer.json: converted),
    a Unigram and the real Gemma tokenizer."""
    from transformers import AutoTokenizer

    from babelscope.data import open_corpus
    from babelscope.evaluate.tokens import encode_batch, load_backend, special_ids, tokenizer_checksum

    spec = {"bpe": str(tiny_dir), "sentencepiece": str(sp_model_dir(tmp_path / "sp")),
            "unigram": str(unigram_dir(tmp_path / "uni")), "gemma": "gemma-3-270m"}[kind]  # fmt: skip
    backend, checksum = load_backend(spec)
    from babelscope.models.loader import resolve_spec

    source, _ = resolve_spec(spec)
    auto = AutoTokenizer.from_pretrained(str(source))
    assert checksum == tokenizer_checksum(source)
    corpus = open_corpus("udhr-sample")
    texts = [u.text for lang in corpus.languages() for u in corpus.units(lang)]
    ours = encode_batch(backend, texts, offsets=True)
    theirs = auto(texts, add_special_tokens=False, return_offsets_mapping=True)
    assert ours["input_ids"] == theirs["input_ids"]
    assert [list(map(tuple, o)) for o in ours["offset_mapping"]] == [list(map(tuple, o))
                                                                   for o in theirs["offset_mapping"]]  # fmt: skip
    size = len(backend) if kind == "sentencepiece" else backend.get_vocab_size(True)
    assert (type(backend).__name__ == "Tokenizer") == (kind != "sentencepiece") and size == len(auto)
    byte_ids, unk = special_ids(backend)
    regex_ids = {i for t, i in auto.get_vocab().items() if re.match(r"^<0x[0-9A-Fa-f]{2}>$", t)}
    fallback = kind in ("sentencepiece", "gemma")  # Llama-2 style and Gemma fall back to bytes; the others do not
    assert (len(byte_ids) == 256) == fallback
    if fallback:
        assert byte_ids == regex_ids
    elif kind == "bpe":  # byte-level: the 128 tokens of one non-ASCII byte alone
        from babelscope.transfer.tokenizers import _byte_encoder

        assert byte_ids == {auto.convert_tokens_to_ids(_byte_encoder()[b]) for b in range(0x80, 0x100)}
        assert len(byte_ids) == 128
    else:
        assert byte_ids == set()
    assert unk == auto.unk_token_id and special_ids(auto) == (byte_ids, unk)


# ------------------------------------------------------------------------------------------ vocab
def _check_extension(doc, base_dir: Path):
    """What holds for every kind: ids, merges reachable, round trip, the saved directory and its rows."""
    from safetensors.torch import load_file

    from babelscope.models import load_model

    res, tables = doc["results"], doc["tables"]
    out = Path(res["out"])
    added = tables["added_tokens"]["rows"]
    assert res["summary"]["added"] == len(added) > 0
    assert res["summary"]["new_round_trip_failures"] == 0  # what the base round-trips, the extension does too
    assert res["summary"]["unreachable"] == sum(not r["reachable"] for r in added)
    model, tok, info = load_model(str(out))
    base_model, base_tok, _ = load_model(str(base_dir))
    rows = model.get_input_embeddings().weight
    assert rows.shape[0] == max(r["id"] for r in added) + 1 >= len(base_tok)
    vocab = tok.get_vocab()
    for r in added:  # real vocabulary entries, not "added tokens" matched before the model
        assert vocab[r["piece"]] == r["id"] and r["piece"] not in tok.added_tokens_encoder
    old = base_model.get_input_embeddings().weight
    assert torch.equal(rows[: old.shape[0]], old)  # old rows untouched, bit for bit
    for r in added[:20]:  # subword-mean (FVT): the mean of the old rows of the piece's old tokenization
        parts = [t.id for t in base_tok.backend_tokenizer.model.tokenize(r["piece"])]
        # a mean of a few float32 rows: compare relative to the row norm, a few ulps of float32
        torch.testing.assert_close(rows[r["id"]].detach(), old[parts].mean(0).detach(), rtol=1e-6,
                                   atol=1e-6 * float(old.detach().norm(dim=1).max()))
    saved = load_file(str(out / "model.safetensors"))
    assert any(v.shape[0] == rows.shape[0] for v in saved.values())
    record = json.loads((out / "babelscope-vocab.json").read_text())
    assert record["init"] == "subword-mean" and record["added"] == len(added)
    assert {r["texts"] for r in tables["round_trip"]["rows"]} >= {"eng udhr-sample", "fra udhr-sample"}
    return model, tok, info


def test_vocab_byte_level_bpe_merges_ppl_and_report(tiny_dir, tmp_path):
    from babelscope.evaluate.perplexity import PplConfig
    from babelscope.evaluate.perplexity import run as ppl_run
    from babelscope.report import render_report

    cfg = VocabConfig(model=str(tiny_dir), lang="de", train="pud-sample", vocab_size=400, **SMALL)
    doc = vocab_run(cfg, tmp_path / "run")
    model, tok, _ = _check_extension(doc, tiny_dir)
    assert doc["results"]["kind"] == "bpe" and doc["results"]["summary"]["round_trip_failures"] == 0
    spec = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = {tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]}
    for r in doc["tables"]["added_tokens"]["rows"]:
        if r["reachable"] and len(r["piece"]) > 1:  # continued BPE: a merge builds every reachable new token
            assert any((r["piece"][:i], r["piece"][i:]) in merges for i in range(1, len(r["piece"])))
    summ = doc["results"]["summary"]
    assert summ["held_out_tokens_after"] < summ["held_out_tokens_before"]
    assert summ["premium_after"] < summ["premium_before"]
    qual = {r["texts"]: r for r in doc["tables"]["init_quality"]["rows"]}
    assert set(qual) == {"deu held-out", "deu udhr-sample", "eng udhr-sample"}
    assert all(math.isfinite(q[k]) for q in qual.values() for k in ("base", "subword-mean", "mean", "random"))
    # `babelscope ppl` on the saved model gives the quality table's subword-mean bits per unit (the same model,
    # texts, windows and engine; float32 sums over ~1e3 tokens agree to ~1e-6 relative, 1e-5 leaves margin)
    ppl = ppl_run(PplConfig(model=doc["results"]["out"], langs="eng", window=64, batch_size=4), tmp_path / "run")
    row = ppl["tables"]["per_language"]["rows"][0]
    assert row["bits_per_unit"] == pytest.approx(qual["eng udhr-sample"]["subword-mean"], rel=1e-5)
    html = render_report(tmp_path / "run").read_text()
    assert "Vocabulary extension" in html and "Initialisation quality" in html and "Premium before and after" in html
    # a finished step is skipped
    stamp = (tmp_path / "run" / "vocab" / "results.json").stat().st_mtime_ns
    vocab_run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "vocab" / "results.json").stat().st_mtime_ns == stamp


def test_vocab_sentencepiece_model_proto(tmp_path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    base = sp_model_dir(tmp_path / "spbase")
    cfg = VocabConfig(model=str(base), lang="de", train="pud-sample", vocab_size=500, init="subword-mean", **SMALL)
    doc = vocab_run(cfg, tmp_path / "run")
    assert doc["results"]["kind"] == "sentencepiece" and doc["results"]["model_type"] == "bpe"
    model, tok, _ = _check_extension(doc, base)
    old, new = pb.ModelProto(), pb.ModelProto()
    old.ParseFromString((base / "tokenizer.model").read_bytes())
    new.ParseFromString((Path(doc["results"]["out"]) / "tokenizer.model").read_bytes())
    added = doc["tables"]["added_tokens"]["rows"]
    assert len(new.pieces) == len(old.pieces) + len(added) == len(tok)
    floor = min(p.score for p in old.pieces)  # SentencePiece BPE: after every old merge, in the new model's order
    scores = [p.score for p in new.pieces[len(old.pieces):]]
    assert scores == [floor - 1 - i for i in range(len(added))]
    assert [p.piece for p in new.pieces[len(old.pieces):]] == [r["piece"] for r in sorted(added, key=lambda r: r["id"])]
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def test_vocab_unigram_fast_tokenizer(tmp_path):
    base = unigram_dir(tmp_path / "uni")
    cfg = VocabConfig(model=str(base), lang="de", train="pud-sample", vocab_size=500, **SMALL)
    doc = vocab_run(cfg, tmp_path / "run")
    assert doc["results"]["kind"] == "unigram" and doc["results"]["model_type"] == "unigram"
    _, tok, _ = _check_extension(doc, base)
    pieces = json.loads(tok.backend_tokenizer.to_str())["model"]["vocab"]
    for r in doc["tables"]["added_tokens"]["rows"]:
        assert pieces[r["id"]][0] == r["piece"] and pieces[r["id"]][1] < 0  # appended with a log-probability


def test_vocab_inits_differ_and_random_is_seeded(tiny_dir, tmp_path):
    docs = [vocab_run(VocabConfig(model=str(tiny_dir), lang="de", train="pud-sample", vocab_size=400, init=init,
                                  compare_inits=False, **SMALL), tmp_path / name)
            for init, name in (("random", "a"), ("mean", "b"), ("random", "c"))]  # fmt: skip
    from babelscope.models import load_model

    rows = [load_model(d["results"]["out"])[0].get_input_embeddings().weight.detach() for d in docs]
    assert torch.equal(rows[0], rows[2])  # the same seed, the same random rows
    ids = [r["id"] for r in docs[0]["tables"]["added_tokens"]["rows"]]
    base = load_model(str(tiny_dir))[0].get_input_embeddings().weight.detach()
    mean = base.mean(0)
    # mean_resizing samples N(mean, 1e-9 cov): within ~1e-4 of the row norm scale of the mean
    torch.testing.assert_close(rows[1][ids].detach(), mean.expand(len(ids), -1).detach(), rtol=0,
                               atol=1e-3 * float(base.detach().std()))
    assert float((rows[0][ids] - mean).norm()) > 10 * float((rows[1][ids] - mean).norm())


# ------------------------------------------------------------------------------------------ the real tokenizer
def test_gemma_tokenizer_extension_reachable_round_trip():
    """The real default tokenizer (fast BPE, byte fallback, no dummy prefix): Vietnamese pieces of the embedded UDHR
    sample, merged with their merges; reachable, round trip on every language of the sample, English unchanged."""
    from babelscope.data import open_corpus
    from babelscope.evaluate.tokens import load_tokenizer, parallel_units
    from babelscope.models.loader import resolve_spec
    from babelscope.transfer import tokenizers as tk
    from babelscope.transfer.vocab import changed_share, reachability, round_trip

    source, _ = resolve_spec("gemma-3-270m")
    tok, _ = load_tokenizer("gemma-3-270m")
    base = tk.detect(Path(source), tok)
    assert base.kind == "bpe" and not base.byte_level
    settings = tk.spm_settings(base)
    assert settings["byte_fallback"] and not settings["add_dummy_prefix"] and settings["split_digits"]
    units = parallel_units(open_corpus("udhr-sample"), "all", "eng", None)
    texts = [u.text for u in units["vie"]]
    trained = tk.train_sentencepiece(texts, 400, "bpe", 1.0, settings)
    pieces = tk.new_pieces(base, trained)
    assert pieces
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        new, ids, _ = tk.extend(base, pieces, Path(work))
    assert min(ids.values()) == 262144 and len(new) == 262144 + len(ids)
    rows = reachability(base, new, ids, texts)
    assert sum(r["reachable"] for r in rows) >= 0.9 * len(rows)
    assert any(r["seen"] for r in rows)  # (pieces that only build longer ones are reachable but never final)
    assert len(new(" ".join(texts))["input_ids"]) < len(tok(" ".join(texts))["input_ids"])
    for code, us in units.items():
        assert all(round_trip(new, [u.text for u in us])), code
    assert changed_share(tok, new, [u.text for u in units["eng"]]) == 0.0
    spec = json.loads(new.backend_tokenizer.to_str())["model"]
    assert len(spec["merges"]) > 514906


# ------------------------------------------------------------------------------------------ bad input
def _cli(monkeypatch, capsys, *args):
    from babelscope.cli import main

    capsys.readouterr()  # what the test printed while building its inputs
    monkeypatch.setattr(sys, "argv", ["babelscope", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err.strip()


def test_bad_input_corpus_too_small(tiny_dir, tmp_path, monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, "transfer", "vocab", "--model", str(tiny_dir), "--lang", "de", "--train",
                     "pud-sample", "--vocab-size", "100000", "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and len(err.splitlines()) == 1 and "--vocab-size 100000" in err and "at most" in err
    assert not (tmp_path / "run" / "vocab").exists()  # nothing written, config.yaml included


def test_bad_input_wordpiece(tmp_path, monkeypatch, capsys):
    from transformers import BertTokenizerFast

    out = tmp_path / "wp"
    out.mkdir()
    words = sorted({w.strip(".,") for s in SENTENCES for w in s.split()})
    (out / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt")).save_pretrained(out)
    tiny_llama(out, 64)
    code, err = _cli(monkeypatch, capsys, "transfer", "vocab", "--model", str(out), "--lang", "de", "--train",
                     "pud-sample", "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and len(err.splitlines()) == 1 and "WordPiece" in err
    assert not (tmp_path / "run" / "vocab").exists()


def test_bad_input_normaliser_rewrites_script(tmp_path, monkeypatch, capsys):
    from tokenizers import normalizers

    out = tmp_path / "strip"
    _, tok = build_tiny("gemma3", out)
    tok.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()])
    tok.save_pretrained(out)
    code, err = _cli(monkeypatch, capsys, "transfer", "vocab", "--model", str(out), "--lang", "vi", "--train",
                     "udhr-sample", "--held-out", "udhr-sample", "--run-dir", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and len(err.splitlines()) == 1 and "normaliser rewrites" in err
    assert not (tmp_path / "run" / "vocab").exists()


def test_byte_level_bpe_counts_lone_bytes():
    """A byte-level BPE (GPT-2, Qwen, SmolLM2) has no <0xNN> tokens: a character its merges never built comes out
    as one token per UTF-8 byte, counted as byte tokens; whole ASCII characters are not."""
    from babelscope.evaluate.tokens import count_tokens
    from conftest import build_tokenizer

    tok = build_tokenizer()  # byte-level BPE trained on eight sentences: no merge builds an emoji
    emoji, ascii_ = count_tokens(tok, ["😀", "xq"])
    assert emoji == (4, 4, 0)  # four bytes F0 9F 98 80, each a token of one non-ASCII byte
    assert ascii_[1] == 0 and ascii_[0] >= 1


def test_extension_keeps_every_old_tokenization(tiny_dir, tmp_path):
    """A byte-level BPE extended with two pieces, each two adjacent tokens joined: the one that would re-tokenize
    old text (a pair from the Spanish sentence) is left out, the new-language one ("kwjqh") is added and
    reachable, and no old text changes (a made-up word: its pair occurs in no old text)."""
    from babelscope.evaluate.tokens import load_backend
    from babelscope.transfer import tokenizers as tk
    from conftest import SENTENCES

    backend, _ = load_backend(str(tiny_dir))
    base = tk.detect(tiny_dir, backend)
    assert base.byte_level

    def pair(text: str) -> str:  # the first two adjacent tokens of one word whose join is not in the vocabulary
        toks = backend.encode(text, add_special_tokens=False).tokens
        return next(a + b for a, b in zip(toks, toks[1:], strict=False)
                    if not b.startswith("Ġ") and a + b not in base.vocab)

    old_piece, new_piece = pair(SENTENCES[3]), pair(" kwjqh")
    assert all(new_piece.replace("Ġ", " ") not in s for s in SENTENCES)
    pieces = [(old_piece, -1.0), (new_piece, -2.0)]
    plain, ids, _ = tk.extend(base, pieces, tmp_path / "plain")
    assert tk._ids(plain, [SENTENCES[3]]) != tk._ids(backend, [SENTENCES[3]])  # without the rule: changed
    kept, ids, _, dropped = tk.extend_keeping(base, pieces, tmp_path / "kept", SENTENCES)
    assert dropped == [old_piece] and list(ids) == [new_piece]
    assert tk._ids(kept, SENTENCES) == tk._ids(backend, SENTENCES)  # every old text keeps its ids
    assert ids[new_piece] in tk._ids(kept, [" kwjqh"])[0]
    assert kept.decode(tk._ids(kept, [" kwjqh dünya"])[0]) == " kwjqh dünya"
