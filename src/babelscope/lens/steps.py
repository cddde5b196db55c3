"""The lens steps: ``translate`` (:mod:`.translate`, word translation through the logit lens) and ``script``
(:mod:`.script`, the script the lens predicts over a text).

Each step checks its options and inputs before the model loads, calls the method and returns its tables;
:class:`babelscope.steps.StepRun` does the rest (the done check, the shared model, provenance, atomic writes,
barriers). One process reads the lens (nothing here is split over ranks).
"""

from __future__ import annotations

from typing import Any

from babelscope.errors import BabelscopeError
from babelscope.lens import script, translate
from babelscope.lens.configs import LensScriptConfig, LensTranslateConfig


def _targets(cfg: LensTranslateConfig, wl: translate.WordList) -> tuple[str, list[str]]:
    """The source and target codes, each with a column in the word list (and English)."""
    from babelscope.data.languages import resolve_language

    source = resolve_language(cfg.source).code
    targets = [resolve_language(t.strip()).code for t in cfg.targets.split(",") if t.strip()]
    missing = [c for c in ["eng", source, *targets] if c not in wl.langs]
    if missing:
        raise BabelscopeError(
            f"{wl.path}: no column for {', '.join(missing)} (it has {', '.join(wl.langs)}); choose other "
            "--source/--targets or add the column"
        )
    if source in targets:
        raise BabelscopeError(f"--targets {cfg.targets}: the source language {source} cannot be a target")
    return source, targets


def run_translate(cfg: LensTranslateConfig, run_dir, step: str = "lens-translate", loaded=None) -> dict[str, Any]:
    """The ``babelscope lens translate`` step."""
    from babelscope.layers import parse_layers
    from babelscope.models.arch import block_list
    from babelscope.runs import file_sha256, is_main_process, provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    if cfg.shots < 0 or cfg.batch_size < 1:
        raise BabelscopeError(f"--shots {cfg.shots} / --batch-size {cfg.batch_size}: shots >= 0, batch >= 1")
    wl = translate.read_word_list(cfg.words)
    source, targets = _targets(cfg, wl)
    if (doc := sr.done(inputs=file_sha256(wl.path), write_config=False)) is not None:  # config: once layers passed
        return doc
    model, tokenizer, info = sr.model("causal", "the logit lens")
    layers = parse_layers(cfg.layers, len(block_list(model)[1]))
    if not is_main_process():
        return sr.wait()
    sr.write_config()
    per_layer, per_item, summary = [], [], []
    for target in targets:
        items, dropped = translate.make_items(wl, tokenizer, source, target, cfg.shots, cfg.seed, cfg.max_items)
        if not items:
            summary.append({"lang": target, "items": 0, "dropped_overlap": dropped})
            continue
        values = translate.lens_translation(model, tokenizer, items, layers, cfg.batch_size)
        rows, item_rows, row = translate.translation_tables(target, items, dropped, values, layers)
        per_layer, per_item = per_layer + rows, per_item + item_rows
        summary.append(row)
    results = {"model": info.name, "source": source, "targets": targets, "layers": layers,
               "words": wl.path, "shots": cfg.shots, "summary": summary}
    prov = provenance(model=info.to_dict(),
                      data={"words": wl.path, "sha256": text_sha256("\t".join(wl.words[c]) for c in wl.langs)})
    return sr.write(translate.KIND, results, {"summary": summary, "per_layer": per_layer, "per_item": per_item},
                    prov)


def run_script(cfg: LensScriptConfig, run_dir, step: str = "lens-script", loaded=None) -> dict[str, Any]:
    """The ``babelscope lens script`` step."""
    from babelscope.data.languages import resolve_language, script_of_text
    from babelscope.data.views import language_codes, open_text_corpus, token_windows
    from babelscope.layers import parse_layers
    from babelscope.models.arch import block_list, lm_head
    from babelscope.runs import is_main_process, provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    if cfg.window < 2 or cfg.max_tokens < 1 or cfg.batch_size < 1:
        raise BabelscopeError(f"--window {cfg.window} / --max-tokens {cfg.max_tokens}: window >= 2, tokens >= 1")
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    for code in codes:
        if not any(u.text.strip() for u in corpus.units(code)):
            raise BabelscopeError(f"corpus {corpus.name!r} has no text for {code}; drop it from --langs")
    inputs = {code: text_sha256(u.text for u in corpus.units(code)) for code in codes}
    if (doc := sr.done(inputs=inputs, write_config=False)) is not None:  # config: once the layers passed
        return doc
    model, tokenizer, info = sr.model("causal", "the logit lens")
    layers = parse_layers(cfg.layers, len(block_list(model)[1]))
    if not is_main_process():
        return sr.wait()
    sr.write_config()
    engine = sr.engine(cache=False, progress=False)
    scripts = script.vocab_scripts(tokenizer, lm_head(model).weight.shape[0])
    per_layer, summary, shas = [], [], {}
    for code in codes:
        units = corpus.units(code)
        language = resolve_language(code)
        own = language.script or script_of_text(" ".join(u.text for u in units[:3]))
        seqs = [seq for seq, _ in token_windows(engine, [u.text for u in units], cfg.window, cfg.max_tokens)]
        values = script.lens_scripts(model, seqs, script.script_groups(scripts, own), layers, cfg.batch_size,
                                     engine.pad_id)
        shas[code] = text_sha256(u.text for u in units)
        rows, row = script.script_tables(code, language.name, own, values, layers)
        per_layer += rows
        summary.append(row)
    results = {"model": info.name, "corpus": corpus.name, "layers": layers, "languages": codes, "summary": summary}
    prov = provenance(model=info.to_dict(), data={"corpus": corpus.name, "sha256": shas})
    return sr.write(script.KIND, results, {"summary": summary, "per_layer": per_layer}, prov)
