"""The neurons steps apart from their methods: ``neurons find`` (the method in :mod:`.lape`), ``neurons plnd``
(:mod:`.plnd`), ``neurons deactivate`` (:mod:`.deactivate`) and ``neurons overlap`` (:mod:`.overlap`).

A step checks its options and data before any model loads, calls the method and returns its tables;
:class:`babelscope.steps.StepRun` does the rest (the done check, provenance, atomic writes, barriers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from babelscope.errors import BabelscopeError
from babelscope.neurons import deactivate, lape, overlap, plnd
from babelscope.neurons.configs import DeactivateConfig, NeuronsConfig, OverlapConfig, PlndConfig


# ------------------------------------------------------------------------------------------------- find
def language_counts(sr, engine, ffns, codes: list[str], texts: dict[str, list]
                    ) -> tuple[list[torch.Tensor], list[int], list[dict]]:
    """Per language: how often each FFN neuron fired over its train side, the tokens counted and a table row;
    each language's counts saved as ``counts/<lang>.safetensors`` (rank 0) and re-read by a re-run with the
    same key."""
    from tqdm.auto import tqdm

    from babelscope.data.languages import resolve_language
    from babelscope.data.views import language_windows
    from babelscope.processes import barrier
    from babelscope.runs import text_sha256
    from babelscope.tensorfiles import load_tensors, read_metadata, save_tensors

    cfg, info = sr.cfg, sr.model()[2]
    counts, tokens, rows = [], [], []
    for code in tqdm(codes, desc="activations", unit="lang", disable=not engine.is_main, leave=False):
        sha = text_sha256(u.text for u in texts[code])
        key = lape._key({"model": info.checksum, "lang": code, "text": sha, "window": cfg.window,
                         "max_tokens": cfg.max_tokens, "site": cfg.site, "batch_size": cfg.batch_size,
                         "dtype": cfg.dtype, "device": engine.device.type, "width": ffns[0].width})
        path = sr.path / "counts" / f"{code}.safetensors"
        meta = read_metadata(path) if path.exists() else {}
        if meta.get("key") == key:  # finished in an earlier run
            over_zero, n = load_tensors(path)["over_zero"], int(meta["tokens"])
        else:
            seqs = language_windows(engine, [u.text for u in texts[code]], cfg.window, cfg.max_tokens)
            over_zero, n = lape.count_activations(sr.model()[0], ffns, seqs, cfg.batch_size, cfg.site, engine.pad_id)
            if n == 0:
                raise BabelscopeError(f"language {code}: no tokens counted; raise --max-tokens or --window")
            if engine.is_main:
                save_tensors(path, {"over_zero": over_zero},
                             {"key": key, "lang": code, "tokens": n, "model": info.checksum,
                              "units": [u.id for u in texts[code]], "text_sha256": sha})
            barrier()
        counts.append(over_zero)
        tokens.append(n)
        rows.append({"lang": code, "name": resolve_language(code).name, "tokens": n})
    return counts, tokens, rows


def run_find(cfg: NeuronsConfig, run_dir, step: str = "neurons", loaded=None) -> dict[str, Any]:
    """The ``babelscope neurons find`` step: counts per language, LAPE and the selected neurons."""
    from babelscope.data.views import open_text_corpus, split_side
    from babelscope.neurons.ffn import check_site, ffn_modules
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun
    from babelscope.tensorfiles import save_tensors

    sr = StepRun(cfg, run_dir, step, loaded)
    codes = lape.plan_check(cfg)
    corpus = open_text_corpus(cfg.corpus)
    texts = {code: split_side(corpus, code, "train", cfg.test_fraction, cfg.seed) for code in codes}
    inputs = {code: text_sha256(u.text for u in texts[code]) for code in codes}
    if (doc := sr.done(inputs=inputs, write_config=False)) is not None:  # config: once the model passed
        return doc
    model, tokenizer, info = sr.model("causal", "neurons")
    ffns = ffn_modules(model)
    check_site(ffns, cfg.site, model)
    sr.write_config()
    engine = sr.engine(cache=False, batch_size=cfg.batch_size, progress=False)
    counts, tokens, rows = language_counts(sr, engine, ffns, codes, texts)
    if not engine.is_main:
        return sr.wait()
    probs = lape.activation_probabilities(torch.stack(counts), torch.tensor(tokens))
    masks, entropy, thresholds = lape.select_neurons(probs, cfg.filter_rate, cfg.top_rate, cfg.bar_rate)
    n_layers, width = entropy.shape
    per_language, per_layer, neurons = lape.neuron_tables(codes, probs, masks, entropy)
    for row, extra in zip(rows, per_language, strict=True):
        row.update(extra)
    save_tensors(sr.path / "neurons.safetensors",
                 {"probs": probs.float(), "entropy": entropy.float(),
                  **{f"mask/{c}": masks[li] for li, c in enumerate(codes)}},
                 {"format": "babelscope.neurons/1", "model": info.checksum, "model_name": info.name,
                  "languages": codes, "tokens": {c: int(n) for c, n in zip(codes, tokens, strict=True)},
                  "dtype": cfg.dtype, "filter_rate": cfg.filter_rate, "top_rate": cfg.top_rate,
                  "bar_rate": cfg.bar_rate, "site": cfg.site, "ffn": [f.prefix for f in ffns],
                  "weights": [f.weight_names for f in ffns], "key": lape._key(sr.config)})
    results = {"model": info.name, "corpus": corpus.name, "languages": codes, "site": cfg.site, "layers": n_layers,
               "neurons_per_layer": width, "total_neurons": n_layers * width, "selected": int(masks.any(dim=0).sum()),
               "thresholds": thresholds, "neurons_file": "neurons.safetensors",
               "ffn_modules": [f.prefix for f in ffns]}
    prov = provenance(model=info.to_dict(), data={"corpus": corpus.name,
                                                  "units": {c: [u.id for u in texts[c]] for c in codes}})
    return sr.write(lape.KIND, results, {"per_language": rows, "per_layer": per_layer, "neurons": neurons}, prov)


# ------------------------------------------------------------------------------------------------- plnd
def plnd_inputs(sr) -> tuple[Any, list[str], dict[str, list], dict[str, str]]:
    """The corpus, languages and train side of each of a PLND step, checked with a one-line error; and the
    checksums of the LAPE and select steps it compares with, when they ran."""
    from babelscope.data.views import language_codes, open_text_corpus, split_side
    from babelscope.runs import Step
    from babelscope.steps import results_sha256

    cfg = sr.cfg
    if not 0 < cfg.top_rate < 1 or not 0 < cfg.consistency <= 1:
        raise BabelscopeError(f"--top-rate {cfg.top_rate} / --consistency {cfg.consistency}: top rate in (0, 1), "
                              "consistency in (0, 1]")
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    if len(codes) < 2:
        raise BabelscopeError(f"--langs {cfg.langs!r}: PLND separates languages; give at least two")
    texts = {c: split_side(corpus, c, "train", cfg.test_fraction, cfg.seed) for c in codes}
    reads = {}
    for name in (cfg.neurons_step, cfg.select_step):
        if name not in ("", "none") and Step(sr.run_dir, name).results_path.exists():
            reads[name] = results_sha256(sr.run_dir, name)
    return corpus, codes, texts, reads


def plnd_scores(sr, engine, ffns, codes: list[str], texts: dict[str, list]
                ) -> tuple[list[torch.Tensor], list[int], list[torch.Tensor], list[dict]]:
    """Per language: the important-window counts, the number of windows, the mean importance and a table row."""
    from tqdm.auto import tqdm

    from babelscope.data.languages import resolve_language
    from babelscope.data.views import language_windows

    cfg = sr.cfg
    important, documents, mean_imp, rows = [], [], [], []
    for code in tqdm(codes, desc="PLND", unit="lang", leave=False, disable=not engine.is_main):
        seqs = [s for s in language_windows(engine, [u.text for u in texts[code]], cfg.window, cfg.max_tokens)
                if len(s) > 1]
        if not seqs:
            raise BabelscopeError(f"language {code}: no tokens; raise --max-tokens or --window")
        counts, mean = plnd.language_plnd(sr.model()[0], ffns, seqs, cfg.batch_size, engine.pad_id, cfg.top_rate)
        important.append(counts)
        documents.append(len(seqs))
        mean_imp.append(mean)
        rows.append({"lang": code, "name": resolve_language(code).name, "documents": len(seqs),
                     "tokens": sum(len(s) - 1 for s in seqs)})
    return important, documents, mean_imp, rows


def plnd_overlap(sr, codes: list[str], masks: dict[str, torch.Tensor], weights: list, width: int,
                 checksum: str, reads: dict) -> list[dict[str, Any]]:
    """The PLND neurons against the LAPE neurons (same model) and the region (each language's own Top-k of its
    scores, else the core region), when those steps ran."""
    from babelscope.neurons.lape import load_neurons
    from babelscope.neurons.overlap import neuron_region_counts
    from babelscope.runs import Step, load_results
    from babelscope.tensorfiles import load_tensors

    cfg = sr.cfg
    overlap, lape = [], {}
    if cfg.neurons_step in reads:
        nsrc = Step(sr.run_dir, cfg.neurons_step)
        lape, lmeta = load_neurons(nsrc.path / load_results(nsrc.results_path)["results"]["neurons_file"])
        if lmeta.get("model") == checksum:
            overlap += [{"lang": code, "pair": "plnd-lape", **plnd.set_overlap(masks[code], lape[code])}
                        for code in codes if code in lape]
    if cfg.select_step not in reads:
        return overlap
    from babelscope.regions.select import mask_file, region_mask

    ssrc = Step(sr.run_dir, cfg.select_step)
    isrc = Step(sr.run_dir, load_results(ssrc.results_path)["results"]["importance_step"])
    score_files = load_results(isrc.results_path)["results"].get("score_files", {})
    core_path = ssrc.path / mask_file("top", cfg.k, cfg.scope)
    core = neuron_region_counts(load_tensors(core_path), weights, width) if core_path.exists() else None
    with_lape = {r["lang"] for r in overlap}
    for code in codes:
        if code in score_files:
            scores = load_tensors(isrc.path / score_files[code])
            counts = neuron_region_counts(region_mask({n: s.abs() for n, s in scores.items()}, cfg.k, "top",
                                                      cfg.scope), weights, width)
            region = "lang"
        elif core is not None:
            counts, region = core, "core"
        else:
            continue
        sets = [("plnd-region", masks[code])] + ([("lape-region", lape[code])] if code in with_lape else [])
        overlap += plnd.region_overlap_rows(code, region, counts, sets, cfg.draws, cfg.seed)
    return overlap


def run_plnd(cfg: PlndConfig, run_dir, step: str = "neurons-plnd", loaded=None) -> dict[str, Any]:
    """The ``babelscope neurons plnd`` step: importances per document and language, the PLND neurons, and their
    overlap with the LAPE neurons and the regions when those steps are in the run directory."""
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun
    from babelscope.tensorfiles import save_tensors

    sr = StepRun(cfg, run_dir, step, loaded)
    corpus, codes, texts, reads = plnd_inputs(sr)
    inputs = {"texts": {c: text_sha256(u.text for u in texts[c]) for c in codes}, **reads}
    if (doc := sr.done(inputs=inputs, write_config=False)) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "PLND")
    ffns = ffn_modules(model)
    sr.write_config()
    engine = sr.engine(cache=False, batch_size=cfg.batch_size, progress=False)
    important, documents, mean_imp, rows = plnd_scores(sr, engine, ffns, codes, texts)
    if not engine.is_main:
        return sr.wait()
    masks, agnostic = plnd.select_plnd(torch.stack(important), torch.tensor(documents), cfg.consistency)
    n_layers, width = masks.shape[1:]
    per_language, per_layer = plnd.neuron_rows(codes, masks)
    for row, counts in zip(rows, per_language, strict=True):
        row.update(counts)
    weights = [f.weight_names for f in ffns]
    save_tensors(sr.path / "neurons.safetensors",
                 {**{f"mask/{c}": masks[i] for i, c in enumerate(codes)},
                  **{f"importance/{c}": mean_imp[i] for i, c in enumerate(codes)}, "agnostic": agnostic},
                 {"model": info.checksum, "model_name": info.name, "languages": codes, "method": "plnd",
                  "ffn": [f.prefix for f in ffns], "weights": weights, "top_rate": cfg.top_rate,
                  "consistency": cfg.consistency})
    overlap = plnd_overlap(sr, codes, dict(zip(codes, masks, strict=True)), weights, width, info.checksum, reads)
    results = {"model": info.name, "corpus": corpus.name, "languages": codes, "layers": n_layers,
               "neurons_per_layer": width, "total_neurons": n_layers * width, "selected": int(masks.any(0).sum()),
               "agnostic": int(agnostic.sum()), "neurons_file": "neurons.safetensors", "top_rate": cfg.top_rate,
               "consistency": cfg.consistency, "neurons_step": cfg.neurons_step if cfg.neurons_step in reads
               else None, "select_step": cfg.select_step if cfg.select_step in reads else None}
    prov = provenance(model=info.to_dict(), data={"corpus": corpus.name,
                                                  "units": {c: [u.id for u in texts[c]] for c in codes}})
    return sr.write(plnd.KIND, results, {"per_language": rows, "per_layer": per_layer, "overlap": overlap}, prov)


# ------------------------------------------------------------------------------------------- deactivate
@dataclass
class DeactivateInputs:
    """What the deactivate step reads and checks before its model loads."""

    source: Any  # the neurons step (a :class:`~babelscope.runs.Step`)
    masks: dict[str, torch.Tensor]
    meta: dict[str, Any]
    codes: list[str]
    view: Any
    inputs: dict[str, Any]


def deactivate_inputs(sr) -> DeactivateInputs:
    """The neurons step's masks (those of ``--off``), the evaluation languages and their held-out text (the test
    side of the neurons step's split), each checked with a one-line error; and their checksums."""
    from babelscope.data.views import SplitView, language_codes, open_text_corpus
    from babelscope.neurons.lape import load_neurons
    from babelscope.runs import Step, load_results, text_sha256
    from babelscope.steps import results_sha256

    cfg = sr.cfg
    src = Step(sr.run_dir, cfg.neurons_step)
    if not src.results_path.exists():
        named = "" if cfg.neurons_step == "neurons" else f" --step {cfg.neurons_step}"
        raise BabelscopeError(
            f"{src.path}: no finished neurons step; run `babelscope neurons find --model {cfg.model} --run-dir "
            f"{sr.run_dir}{named}` first (or name the folder it wrote with --neurons-step)"
        )
    src_doc = load_results(src.results_path)
    src_cfg = src_doc["config"]
    masks, meta = load_neurons(src.path / src_doc["results"]["neurons_file"])
    if cfg.off:
        from babelscope.data.languages import resolve_language

        wanted = [resolve_language(x.strip()).code for x in cfg.off.split(",") if x.strip()]
        unknown = [c for c in wanted if c not in masks]
        if unknown:
            raise BabelscopeError(
                f"--off {cfg.off}: no neurons for {', '.join(unknown)} in {src.path} (it has {', '.join(masks)})"
            )
        masks = {c: masks[c] for c in wanted}
    corpus = open_text_corpus(cfg.corpus or src_cfg["corpus"])
    codes = language_codes(corpus, cfg.langs or src_cfg["langs"])
    view = SplitView(corpus, "test", src_cfg["test_fraction"], src_cfg["seed"])
    for code in codes:
        view.units(code)  # a language without held-out text fails here, before the model loads
    inputs = {"neurons": results_sha256(sr.run_dir, cfg.neurons_step),
              "texts": {code: text_sha256(u.text for u in view.units(code)) for code in codes}}
    return DeactivateInputs(src, masks, meta, codes, view, inputs)


def run_deactivate(cfg: DeactivateConfig, run_dir, step: str = "neurons-deactivate", loaded=None) -> dict[str, Any]:
    """The ``babelscope neurons deactivate`` step: perplexity per language with each language's neurons (and as
    many random ones) switched off, and generations."""
    from tqdm.auto import tqdm

    from babelscope.caches import digest
    from babelscope.evaluate.intervention import PROMPTS, condition_checksum, perplexities
    from babelscope.neurons.ffn import deactivated, ffn_modules
    from babelscope.runs import provenance
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    inp = deactivate_inputs(sr)
    if (doc := sr.done(inputs=inp.inputs, write_config=False)) is not None:  # config: once the model passed
        return doc
    model, tokenizer, info = sr.model()
    if inp.meta.get("model") != info.checksum:
        raise BabelscopeError(
            f"{inp.source.path}: neurons found on another model ({str(inp.meta.get('model'))[:12]}…); run "
            f"`babelscope neurons find` with --model {cfg.model} first"
        )
    ffns = ffn_modules(model)
    sr.write_config()
    masks, codes = inp.masks, inp.codes
    mask_sha = {c: digest([m.numpy().tobytes()], 16) for c, m in masks.items()}

    def engine_for(*change: Any):  # the request cache knows the changed model by what was changed and how
        checksum = condition_checksum(info.checksum, *change) if change else info.checksum
        return sr.engine(checksum=checksum, batch_size=cfg.batch_size, progress=False)  # every rank, in step

    def prompts_for(lang: str) -> list[str]:
        return [c for c in dict.fromkeys([lang, "eng"]) if c in PROMPTS]

    base_engine = engine_for()
    base = perplexities(base_engine, inp.view, codes, cfg.window, cfg.max_tokens)
    conditions = [(lang, "lape") for lang in masks] + ([(lang, "random") for lang in masks] if cfg.random else [])
    rows, generations = [], []
    if cfg.generate:
        gen_codes = list(dict.fromkeys(c for lang in masks for c in prompts_for(lang)))
        outs = base_engine.generate([PROMPTS[c] for c in gen_codes], cfg.max_new_tokens)
        generations += deactivate.generation_rows("base", "-", gen_codes, PROMPTS, outs)
    with tqdm(total=len(conditions), desc="deactivate", unit="set", leave=False,
              disable=not base_engine.is_main) as bar:
        for lang, which in conditions:
            off = deactivate.switched_off(masks[lang], which, cfg.seed)
            engine = engine_for("neurons-off", lang, which, mask_sha[lang], cfg.seed if which == "random" else None)
            gen = prompts_for(lang) if cfg.generate and which == "lape" else []
            with deactivated(ffns, off) as n:
                after = perplexities(engine, inp.view, codes, cfg.window, cfg.max_tokens)
                if gen:
                    outs = engine.generate([PROMPTS[c] for c in gen], cfg.max_new_tokens)
                    generations += deactivate.generation_rows(lang, n, gen, PROMPTS, outs)
            rows += deactivate.ratio_rows(lang, which, n, codes, after, base)
            bar.update(1)
    if not base_engine.is_main:
        return sr.wait()
    matrix = deactivate.ratio_matrix(rows, masks, codes)
    results = {"model": info.name, "corpus": inp.view.name, "deactivated": list(masks),
               "evaluation_languages": codes, "neurons_step": cfg.neurons_step,
               "summary": deactivate.summarize(matrix, rows, codes)}
    prov = provenance(model=info.to_dict(), data={"corpus": inp.view.name,
                                                  "units": {c: [u.id for u in inp.view.units(c)] for c in codes}})
    return sr.write(deactivate.KIND, results, {"matrix": matrix, "per_language": rows, "generations": generations},
                    prov)


# ---------------------------------------------------------------------------------------------- overlap
@dataclass
class OverlapSources:
    """The steps an overlap step reads (each a :class:`~babelscope.runs.Step`) and their results."""

    neurons: Any
    neurons_doc: dict
    select: Any
    select_doc: dict
    importance: Any
    importance_doc: dict


def overlap_sources(sr) -> OverlapSources:
    """The neurons, select and importance steps' results (a one-line error for one that has not run)."""
    from babelscope.runs import Step, load_results

    nsrc = Step(sr.run_dir, sr.cfg.neurons_step)
    ndoc = load_results(nsrc.results_path)
    ssrc = Step(sr.run_dir, sr.cfg.select_step)
    sdoc = load_results(ssrc.results_path)
    isrc = Step(sr.run_dir, sdoc["results"]["importance_step"])
    return OverlapSources(nsrc, ndoc, ssrc, sdoc, isrc, load_results(isrc.results_path))


def region_counts(sr, src: OverlapSources, kind: str, lang: str, weights: list, width: int) -> torch.Tensor:
    """The region's weights on each FFN neuron: the Top-k of ``lang``'s own scores (``lang``), its monolingual
    region (``mono``) or the core region (``core``)."""
    from babelscope.regions.select import mask_file, region_mask
    from babelscope.regions.shards import open_scores
    from babelscope.tensorfiles import load_tensors

    cfg = sr.cfg
    if kind == "lang":
        scores = open_scores(src.importance.path / src.importance_doc["results"]["score_files"][lang])
        return overlap.neuron_region_counts(region_mask({n: s.abs() for n, s in scores.items()}, cfg.k, "top",
                                                        cfg.scope), weights, width)
    path = src.select.path / mask_file("top" if kind == "core" else f"mono-{lang}", cfg.k, cfg.scope)
    if not path.exists():
        raise BabelscopeError(
            f"{path}: no such region; run `babelscope regions select` with --k {cfg.k:g} --scope {cfg.scope}"
        )
    return overlap.neuron_region_counts(load_tensors(path), weights, width)


def run_overlap(cfg: OverlapConfig, run_dir, step: str = "neurons-overlap", loaded=None) -> dict[str, Any]:
    """The ``babelscope neurons overlap`` step (reads two steps' files; no model needed)."""
    from babelscope.neurons.lape import load_neurons
    from babelscope.regions.shards import scores_metadata
    from babelscope.runs import is_main_process, provenance
    from babelscope.steps import StepRun, results_sha256
    from babelscope.tensorfiles import load_tensors

    sr = StepRun(cfg, run_dir, step, loaded)
    kinds = overlap.plan_check(cfg)
    src = overlap_sources(sr)
    reads = (cfg.neurons_step, cfg.select_step, src.importance.name)  # their results name the tensors they wrote
    if (doc := sr.done(inputs={name: results_sha256(sr.run_dir, name) for name in reads})) is not None:
        return doc
    if not is_main_process():  # one process computes (nothing here is split over ranks)
        return sr.wait()
    neurons_file = src.neurons.path / src.neurons_doc["results"]["neurons_file"]
    masks, meta = load_neurons(neurons_file)
    imp_meta = scores_metadata(src.importance.path / src.importance_doc["results"]["importance_file"])
    if imp_meta.get("model") != meta.get("model"):
        raise BabelscopeError(f"{src.select.path}: regions of another model than the neurons of "
                              f"{src.neurons.path}; run both on the same model")
    region_langs = src.select_doc["results"]["languages"]
    langs = [c for c in masks if c in region_langs]
    if not langs:
        raise BabelscopeError(f"the neurons' languages ({', '.join(masks)}) and the regions' "
                              f"({', '.join(region_langs)}) share none; run regions importance on some of the "
                              "neuron languages")
    weights, width = meta["weights"], next(iter(masks.values())).shape[1]
    active = overlap.often_active(load_tensors(neurons_file)["probs"], masks,
                                  src.neurons_doc["results"]["thresholds"]["filter"])
    rows, per_layer = [], []
    core = region_counts(sr, src, "core", "", weights, width) if "core" in kinds else None
    for lang in langs:
        for kind in kinds:
            counts = core if kind == "core" else region_counts(sr, src, kind, lang, weights, width)
            stats = overlap.overlap_stats(masks[lang], counts, cfg.draws, cfg.seed, pool=active)
            rows.append({"lang": lang, "region": kind, "k": cfg.k, "scope": cfg.scope, **stats})
            per_layer += overlap.layer_rows(lang, kind, masks[lang], counts)
    results = {"languages": langs, "k": cfg.k, "scope": cfg.scope, "regions": kinds,
               "neurons_step": cfg.neurons_step, "select_step": cfg.select_step,
               "model": src.neurons_doc["results"]["model"]}
    prov = provenance(model={"checksum": meta.get("model")}, importance=str(src.importance.path))
    return sr.write(overlap.KIND, results, {"overlap": rows, "per_layer": per_layer}, prov)
