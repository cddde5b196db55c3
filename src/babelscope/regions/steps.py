"""The regions steps apart from their methods: ``regions importance`` (the method in :mod:`.importance`),
``regions select`` (:mod:`.select`), ``regions ablate`` (:mod:`.ablate`) and ``regions scan-dims`` (:mod:`.scan`).

A step checks its options and data before any model loads (its command's ``check`` does the same when an
experiment is planned), calls the method and returns its tables; :class:`babelscope.steps.StepRun` does the rest
(the done check, provenance, atomic writes, barriers). The importance step also keeps one score file per language
in its folder, so that a re-run computes only the languages that are missing (:func:`_language_scores`).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from babelscope.errors import BabelscopeError
from babelscope.regions import ablate, importance, scan, select
from babelscope.regions.configs import AblateConfig, ImportanceConfig, ScanConfig, SelectConfig


# ------------------------------------------------------------------------------------------- importance
def run_importance(cfg: ImportanceConfig, run_dir, step: str = "regions-importance", loaded=None) -> dict[str, Any]:
    """The ``babelscope regions importance`` step: per-language scores, then ``importance.safetensors``."""
    from babelscope.data.views import language_codes, open_text_corpus, split_side
    from babelscope.models.families import describe_architecture, qkv_bias_names
    from babelscope.models.params import scored_parameters
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    shard: dict[str, Any] = _check_fsdp(cfg)  # before anything is written
    sr = StepRun(cfg, run_dir, step, loaded)
    importance.plan_check(cfg)
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    texts = {code: split_side(corpus, code, "train", cfg.test_fraction, cfg.seed) for code in codes}
    if (doc := sr.done(inputs={c: text_sha256(u.text for u in us) for c, us in texts.items()})) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "importance")
    if shard:
        from babelscope.regions.shards import shard_blocks, shard_rows

        shard_blocks(model)  # in place: the model of an experiment stays sharded for its later steps
    params = scored_parameters(model, cfg.include, cfg.exclude)
    engine = sr.engine(batch_size=cfg.batch_size, cache=False, progress=False)
    if shard:
        shard["rows"] = {name: shard_rows(p) for name, p in params.items()}
    aggregate, rows = _language_scores(sr, cfg, engine, model, params, texts, info.checksum, shard)
    shapes = {name: list(p.shape) for name, p in params.items()}
    imp_meta = {"format": "babelscope.importance/1", "model": info.checksum, "model_name": info.name,
                "languages": codes, "tokens": {r["lang"]: r["tokens"] for r in rows}, "dtype": cfg.dtype,
                "method": cfg.method, "shapes": shapes}
    by_matrix = _matrix_rows(sr.path / "importance.safetensors", aggregate, shapes, imp_meta, shard, engine.is_main)
    if not engine.is_main:
        return sr.wait()
    results = {
        "model": info.name,
        "corpus": corpus.name,
        "languages": codes,
        "method": cfg.method,
        "scored_parameters": sum(p.numel() for p in params.values()),
        # the blocks' QKV biases (Qwen2, GPT-2, BERT) are scored with the matrices; the LM head, tied or untied,
        # is outside the blocks and never scored (Zhang et al. 2024, §2)
        "scored_qkv_bias_parameters": sum(params[n].numel() for n in qkv_bias_names(model) if n in params),
        "architecture": describe_architecture(model),
        "scored_tensors": len(params),
        "importance_file": "importance.safetensors",
        "score_files": {code: f"scores/{code}.safetensors" for code in codes},
    }
    prov = provenance(
        model=info.to_dict(), data={"corpus": corpus.name, "units": {r["lang"]: r["units"] for r in rows}}
    )
    return sr.write(importance.KIND, results, {"per_language": rows, "by_matrix": by_matrix}, prov)


def _check_fsdp(cfg: ImportanceConfig) -> dict[str, Any]:
    """``{"rank", "world"}`` of an ``--fsdp`` run (checked: launched, per-step scores refused), else ``{}``."""
    if not cfg.fsdp:
        return {}
    from babelscope.regions.shards import check_fsdp

    rank, world = check_fsdp()
    if cfg.method != "taylor":
        raise BabelscopeError(f"--method {cfg.method} with --fsdp: per-step scores need each batch's own "
                              "gradient, which FSDP 2 sums across processes; use --method taylor")
    return {"rank": rank, "world": world}


def _language_key(cfg: ImportanceConfig, checksum: str, code: str, sha: str, shapes: dict, shard: dict) -> str:
    """The key of one language's score file: everything that changes its scores."""
    return importance.score_key({
        "model": checksum,
        "lang": code,
        "text": sha,
        "window": cfg.window,
        "max_tokens": cfg.max_tokens,
        "method": cfg.method,
        "shapes": shapes,
        "batch_size": cfg.batch_size if cfg.method == "per-step" else None,
        "shard": [shard["rank"], shard["world"]] if shard else None,
    })


def _language_scores(sr, cfg: ImportanceConfig, engine, model, params: dict, texts: dict, checksum: str,
                     shard: dict) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Each language's signed scores ``S_l`` (Eq. 2), loaded from its file in ``scores/`` when an earlier run
    finished it, else computed and written there; returns the aggregate ``Σ_l |S_l|`` (Eq. 3; this process's
    rows under FSDP 2) and the per-language rows (on the writing process)."""
    from tqdm.auto import tqdm

    from babelscope.data.views import token_windows
    from babelscope.memory import release_freed_memory
    from babelscope.processes import sum_across
    from babelscope.runs import text_sha256
    from babelscope.tensorfiles import load_tensors, read_metadata

    fsdp = bool(shard)
    if fsdp:
        from babelscope.regions.shards import local, shard_path

    shapes = {name: list(p.shape) for name, p in params.items()}
    aggregate = {name: torch.zeros((local(p) if fsdp else p).shape, dtype=torch.float32) for name, p in params.items()}
    writes = fsdp or engine.is_main  # under FSDP 2 every process writes its rows
    for stale in (sr.path / "scores").glob(".*.tmp"):  # left by an interrupted run
        stale.unlink()
    rows: list[dict[str, Any]] = []
    saves: list[Future] = []
    dropped: list[threading.Event] = []  # set when the writer has dropped a language's scores
    bar = tqdm(total=len(texts), desc="importance", unit="lang", disable=not engine.is_main, leave=False)
    # One writer thread saves each language's scores while the next language runs (past the page cache, see
    # babelscope.tensorfiles); it drops them as soon as they are written, before the fsync.
    with bar, importance.grads_only_for(model, params), importance.checkpointed(model, cfg.gradient_checkpointing), \
            ThreadPoolExecutor(1, thread_name_prefix="scores") as writer:
        for code, units in texts.items():
            sha = text_sha256(u.text for u in units)
            key = _language_key(cfg, checksum, code, sha, shapes, shard)
            path = sr.path / "scores" / f"{code}.safetensors"
            if shard:
                path = shard_path(path, shard["rank"], shard["world"])
            meta = read_metadata(path) if path.exists() else {}
            if _on_every_rank(meta.get("key") == key, fsdp):  # finished in an earlier run
                scores, save = load_tensors(path), None
            else:
                seqs = token_windows(engine, [u.text for u in units], cfg.window, cfg.max_tokens)
                # unsharded: the next language's gradients wait until the writer dropped the previous scores
                gate = None if fsdp else (lambda: _wait_dropped(dropped))
                scores, nll, tokens = importance.language_scores(engine, params, seqs, cfg.method, fsdp=fsdp,
                                                                 before_grads=gate)
                if not math.isfinite(nll):  # never saved: a re-run at another dtype starts clean
                    raise BabelscopeError(f"{code}: the loss came out {nll} (the model overflows in --dtype "
                                          f"{cfg.dtype}); nothing was saved: re-run with --dtype float32")
                meta = {"format": "babelscope.importance-language/1", "key": key, "lang": code, "model": checksum,
                        "dtype": cfg.dtype, "method": cfg.method, "tokens": tokens, "nll": nll,
                        "units": [u.id for u in units], "text_sha256": sha,
                        **({"shard": shard, "shapes": shapes} if shard else {})}
                save = path
            if writes:
                abs_sum = importance.fold_scores(scores, aggregate)
                if fsdp:
                    abs_sum = sum_across(abs_sum)
                if engine.is_main:
                    rows.append(_language_row(code, meta, abs_sum))
                if save is not None:
                    dropped.append(threading.Event())
                    saves.append(writer.submit(importance.save_scores, scores, save, meta, dropped[-1]))
                _raise_failed(saves)
            del scores
            release_freed_memory()  # flat in the number of languages (see babelscope.memory)
            bar.update(1)
        for f in saves:
            f.result()
    return aggregate, rows


def _matrix_rows(path: Path, aggregate: dict[str, torch.Tensor], shapes: dict, imp_meta: dict, shard: dict,
                 main: bool) -> list[dict[str, Any]]:
    """Save the aggregate (every process its rows under FSDP 2; else the writing process) and return the
    per-matrix table (mean and max importance, summed over every process's rows) on the writing process."""
    from babelscope.models.params import layer_and_kind
    from babelscope.tensorfiles import save_tensors

    sums = torch.tensor([float(t.sum(dtype=torch.float64)) for t in aggregate.values()], dtype=torch.float64)
    peaks = torch.tensor([float(t.max()) if t.numel() else 0.0 for t in aggregate.values()], dtype=torch.float64)
    if shard:  # every process its rows; the table's sums and maxima over all of them
        from babelscope.processes import all_reduce
        from babelscope.regions.shards import shard_path

        save_tensors(shard_path(path, shard["rank"], shard["world"]), aggregate, {**imp_meta, "shard": shard})
        all_reduce(sums)
        all_reduce(peaks, op="max")
    if not main:
        return []
    if not shard:
        save_tensors(path, aggregate, imp_meta)
    rows = []
    for i, name in enumerate(aggregate):
        layer, kind = layer_and_kind(name)
        size = math.prod(shapes[name])
        rows.append({"layer": layer, "kind": kind, "parameters": size, "mean_importance": float(sums[i]) / size,
                     "max_importance": float(peaks[i])})
    return rows


def _on_every_rank(flag: bool, collective: bool) -> bool:
    """``flag`` held on every process (under FSDP 2 all of them must take the same branch: each forward is a
    collective); ``flag`` itself otherwise."""
    if not collective:
        return flag
    from babelscope.processes import all_reduce

    t = torch.tensor([int(flag)])
    all_reduce(t, op="min")
    return bool(t[0])


def _wait_dropped(dropped: list[threading.Event]) -> None:
    """Wait until the writer has dropped the previous language's scores (its file is written; fsync and rename
    may still run): the next language's gradients then take their place instead of coming on top."""
    if dropped:
        dropped[-1].wait()


def _raise_failed(futures: list) -> None:
    """Surface a writer-thread error (disk full, permissions) at once rather than after every language."""
    for f in futures:
        if f.done() and f.exception() is not None:
            raise f.exception()


def _language_row(code: str, meta: dict[str, Any], abs_sum: float) -> dict[str, Any]:
    from babelscope.data.languages import resolve_language

    tokens, nll = meta["tokens"], meta["nll"]
    return {
        "lang": code,
        "name": resolve_language(code).name,
        "units": ",".join(meta["units"]),
        "tokens": tokens,
        "loss": nll / tokens,
        "ppl": math.exp(nll / tokens),
        "sum_abs_score": abs_sum,
    }


# ----------------------------------------------------------------------------------------------- select
def run_select(cfg: SelectConfig, run_dir, step: str = "regions-select", loaded=None) -> dict[str, Any]:
    """The ``babelscope regions select`` step: masks and tables from an importance step (no model needed)."""
    from tqdm.auto import tqdm

    from babelscope.regions.shards import open_scores, scores_metadata
    from babelscope.runs import Step, is_main_process, load_results, provenance
    from babelscope.steps import StepRun, results_sha256

    sr = StepRun(cfg, run_dir, step, loaded)
    ks = select.parse_fractions(cfg.k)
    table_ks = select.parse_fractions(cfg.table_k, "--table-k")
    scopes = select.parse_choice(cfg.scope, select.SCOPES, "--scope")
    if (doc := sr.done(inputs={"importance": results_sha256(run_dir, cfg.importance_step)})) is not None:
        return doc
    if not is_main_process():
        return sr.wait()
    src = Step(sr.run_dir, cfg.importance_step)
    imp_doc = load_results(src.results_path)
    imp_path = src.path / imp_doc["results"]["importance_file"]
    imp_meta = scores_metadata(imp_path)
    imp = open_scores(imp_path)  # written by several processes (FSDP 2): assembled one matrix at a time
    langs = imp_doc["results"]["languages"]
    base_meta = {
        "format": "babelscope.region-mask/1",
        "model": imp_meta["model"],
        "model_name": imp_meta.get("model_name"),
        "importance": str(imp_path),
        "method": imp_meta["method"],
        "languages": langs,
        "tokens": imp_meta.get("tokens"),  # per language, behind the importance (files before it: None)
        "dtype": imp_meta.get("dtype"),  # of the model the importance was computed in
    }
    regions, per_matrix = [], []
    record = _region_recorder(sr.path, imp, base_meta, cfg.skip_zeros, regions)
    with tqdm(total=len(ks) * len(scopes), desc="regions", unit="set", leave=False) as bar:
        for scope in scopes:
            for k in ks:
                for which in select.WHICH:
                    record(which, k, scope, select.region_mask(imp, k, which, scope, cfg.seed, cfg.skip_zeros))
                bar.update(1)
    # Per-matrix table (global selection, core region and monolingual regions) for table_k.
    for k in table_ks:
        core = select.region_mask(imp, k, "top", "global")
        per_matrix += select.kept_rows("core", k, "global", core)
        if k not in ks or "global" not in scopes:
            record("top", k, "global", core, save=False)
        del core
    overlap, overlap_matrix = [], []
    if cfg.monolingual and len(langs) > 1:
        scores_of = lambda lang: open_scores(src.path / imp_doc["results"]["score_files"][lang])  # noqa: E731
        overlap, overlap_matrix = _monolingual(scores_of, langs, ks[0], scopes, record, per_matrix)
    results = {
        "importance_step": cfg.importance_step,
        "model": imp_meta["model"],
        "languages": langs,
        "k": ks,
        "scope": scopes,
        "table_k": table_ks,
        "masks": {f"{r['region']}@{r['k']:g}/{r['scope']}": r["file"] for r in regions if r["file"]},
    }
    prov = provenance(
        model={"checksum": imp_meta["model"], "name": imp_meta.get("model_name")}, importance=str(imp_path)
    )
    tables = {"regions": regions, "per_matrix": per_matrix, "overlap": overlap, "overlap_by_matrix": overlap_matrix}
    return sr.write(select.KIND, results, tables, prov)


def _region_recorder(folder: Path, imp: dict, base_meta: dict[str, Any], skip_zeros: bool, regions: list[dict]):
    """``record(region, k, scope, mask, save=True)``: a row of the regions table (sizes, and the mask file
    under ``folder`` when saved, its metadata ``base_meta`` and the region's), appended to ``regions``."""
    norms = select.norm_names(imp, {n: t.shape for n, t in imp.items()})

    def record(region: str, k: float, scope: str, mask: select.Masks, save: bool = True) -> None:
        row = {"region": region, "k": k, "scope": scope, **select.region_counts(mask, imp, norms), "file": None}
        if save:
            row["file"] = select.mask_file(region, k, scope)
            meta = {**base_meta, "region": region, "k": k, "scope": scope, "skip_zeros": skip_zeros}
            select.save_mask(folder / row["file"], mask, meta)
        regions.append(row)

    return record


def _monolingual(scores_of, langs: list[str], k: float, scopes: list[str], record, per_matrix: list[dict]):
    """Monolingual regions (each language's Top-k of ``|S_l|`` minus every other language's) recorded for each
    scope, their kept shares added to ``per_matrix``; returns the overlap tables of the first scope."""
    overlap, overlap_matrix = [], []
    for scope in scopes:
        tops = select.language_tops(scores_of, langs, k, scope)
        for lang, mask in select.monolingual_masks(tops).items():
            record(f"mono-{lang}", k, scope, mask)
            if scope == "global" or len(scopes) == 1:
                per_matrix += select.kept_rows(f"mono-{lang}", k, scope, mask)
        if scope == scopes[0]:
            overlap, overlap_matrix = select.overlap_rows(tops, k, scope)
        del tops
    return overlap, overlap_matrix


# ------------------------------------------------------------------------------------------- ablate
@dataclass
class AblateInputs:
    """What the ablate step reads and checks before its model loads."""

    ks: list[float]
    scopes: list[str]
    which: list[str]
    imp_cfg: dict[str, Any]
    imp_langs: set[str]
    corpus: Any
    codes: list[str]
    view: Any
    inputs: dict[str, Any]


def ablate_inputs(sr) -> AblateInputs:
    """The options, the select and importance steps' results and the held-out text of each evaluation language
    (the test side of the importance step's split), each checked with a one-line error; and their checksums."""
    from babelscope.data.views import SplitView, language_codes, open_text_corpus
    from babelscope.runs import Step, load_results, text_sha256
    from babelscope.steps import results_sha256

    cfg = sr.cfg
    ks, scopes, which = ablate_options(cfg)
    sel = check_masks(sr.run_dir, cfg.select_step, ks, scopes, which)  # every region's mask, before the model loads
    imp_step = sel["results"]["importance_step"]
    imp_doc = load_results(Step(sr.run_dir, imp_step).results_path)
    imp_cfg = imp_doc["config"]
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    view = SplitView(corpus, "test", imp_cfg["test_fraction"], imp_cfg["seed"])
    texts = {code: text_sha256(u.text for u in view.units(code)) for code in codes}  # none: fails here
    inputs = {"select": results_sha256(sr.run_dir, cfg.select_step), "texts": texts,
              "importance": results_sha256(sr.run_dir, imp_step)}
    return AblateInputs(ks, scopes, which, imp_cfg, set(imp_doc["results"]["languages"]), corpus, codes, view,
                        inputs)


def plan_check_ablate(cfg: AblateConfig, run_dir=None, earlier=()) -> None:
    """The ablate step's checks that need no model, run when an experiment is planned: its options, and its masks
    unless an earlier step of the experiment writes them."""
    ks, scopes, which = ablate_options(cfg)
    if run_dir is not None and not select.MASK_WRITERS & set(earlier):
        check_masks(Path(run_dir), cfg.select_step, ks, scopes, which)


def ablate_options(cfg: AblateConfig) -> tuple[list[float], list[str], list[str]]:
    """``(ks, scopes, regions)`` of an ablate step, and its mode, each checked with a one-line error."""
    from babelscope.regions.apply import REGION_MODES

    ks = select.parse_fractions(cfg.k)
    scopes = select.parse_choice(cfg.scope, select.SCOPES, "--scope")
    which = select.parse_choice(cfg.regions, select.WHICH, "--regions")
    if cfg.mode not in REGION_MODES:
        raise BabelscopeError(f"--mode {cfg.mode!r}: use one of {', '.join(REGION_MODES)}")
    return ks, scopes, which


def check_masks(run_dir: Path, select_step: str, ks: list[float], scopes: list[str], which: list[str]
                ) -> dict[str, Any]:
    """The select step's results, after the one-line error naming the first region whose mask it did not save
    (or that it has no results)."""
    from babelscope.runs import Step, load_results

    doc = load_results(Step(run_dir, select_step).results_path)  # "no results file; run the step first"
    for scope in scopes:
        for k in ks:
            for region in which:
                path = run_dir / select_step / select.mask_file(region, k, scope)
                if not path.exists():
                    raise BabelscopeError(f"{path}: no such region; run `babelscope regions select` with --k {k} "
                                          f"--scope {scope}")
    return doc


def region_change(sr, region: str, k: float, scope: str, params: dict, checksum: str) -> tuple[Any, tuple]:
    """The mask of one region saved by the select step, and the change's name (what the changed model's request
    cache is keyed by): the region, the mode and its settings, and the mask file's own checksum."""
    cfg = sr.cfg
    path = sr.run_dir / cfg.select_step / select.mask_file(region, k, scope)  # there: ablate_inputs checked
    mask, meta = select.load_mask(path, params, checksum)
    return mask, (region, k, scope, cfg.mode, cfg.factor, cfg.include_norms, cfg.initial, meta.get("size"),
                  meta.get("importance"), ablate.file_digest(path))  # the selection itself (e.g. --skip-zeros)


def run_ablate(cfg: AblateConfig, run_dir, step: str = "regions-ablate", loaded=None) -> dict[str, Any]:
    """The ``babelscope regions ablate`` step: perplexity per language with each region changed, and generations."""
    from tqdm.auto import tqdm

    from babelscope.data.views import language_codes
    from babelscope.evaluate.intervention import PROMPTS, condition_checksum, perplexities
    from babelscope.models.params import norm_modules, scored_parameters
    from babelscope.runs import provenance
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    inp = ablate_inputs(sr)
    if (doc := sr.done(inputs=inp.inputs)) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "ablate")
    params = scored_parameters(model, inp.imp_cfg.get("include", ""), inp.imp_cfg.get("exclude", ""))
    norms = set(norm_modules(model))
    initial = ablate.load_initial(cfg.initial) if cfg.mode == "reset" and cfg.initial else None
    codes = inp.codes
    gen_codes = [c for c in language_codes(inp.corpus, cfg.gen_langs) if c in PROMPTS] if cfg.generate else []
    prompts = [PROMPTS[c] for c in gen_codes]

    def engine_for(*change: Any):  # the request cache knows the changed model by what was changed and how
        checksum = condition_checksum(info.checksum, *change) if change else info.checksum
        return sr.engine(checksum=checksum, batch_size=cfg.batch_size, progress=False)

    base_engine = engine_for()
    base = perplexities(base_engine, inp.view, codes, cfg.window, cfg.max_tokens)
    rows = ablate.condition_rows("base", None, None, codes, base, base, inp.imp_langs)
    generations = []
    if gen_codes:
        outs = base_engine.generate(prompts, cfg.max_new_tokens, desc="generate")
        generations += ablate.generation_rows("base", None, None, gen_codes, outs)
    total = len(inp.scopes) * len(inp.ks) * len(inp.which)
    with tqdm(total=total, desc="ablate", unit="region", leave=False, disable=not base_engine.is_main) as bar:
        for scope in inp.scopes:
            for k in inp.ks:
                for region in inp.which:
                    mask, change = region_change(sr, region, k, scope, params, info.checksum)
                    engine = engine_for(*change)
                    show = bool(gen_codes) and k == inp.ks[0] and scope == inp.scopes[0]
                    (after, outs), counts = ablate.ablated(
                        model, params, mask, cfg.mode, cfg.factor, initial, cfg.include_norms, norms,
                        lambda: (perplexities(engine, inp.view, codes, cfg.window, cfg.max_tokens),  # noqa: B023
                                 engine.generate(prompts, cfg.max_new_tokens) if show else None))  # noqa: B023
                    rows += ablate.condition_rows(region, k, scope, codes, after, base, inp.imp_langs, counts)
                    generations += ablate.generation_rows(region, k, scope, gen_codes, outs) if show else []
                    del mask
                    bar.update(1)
    if not base_engine.is_main:
        return sr.wait()
    summary = ablate.ratio_summary(rows)
    results = {"model": info.name, "corpus": inp.view.name, "mode": cfg.mode, "factor": cfg.factor,
               "importance_languages": sorted(inp.imp_langs), "evaluation_languages": codes,
               "heldout_languages": [c for c in codes if c not in inp.imp_langs], "summary": summary}
    prov = provenance(model=info.to_dict(), data={"corpus": inp.view.name,
                                                  "units": {code: [u.id for u in inp.view.units(code)]
                                                            for code in codes}})
    return sr.write(ablate.KIND, results, {"per_language": rows, "summary": summary, "generations": generations},
                    prov)


# ------------------------------------------------------------------------------------------- scan-dims
def run_scan(cfg: ScanConfig, run_dir, step: str = "regions-scan", loaded=None) -> dict[str, Any]:
    """The ``babelscope regions scan-dims`` step: the pooled perplexity with each chosen dimension of a norm's
    scale perturbed, and the dimensions that break the model."""
    from tqdm.auto import tqdm

    from babelscope.data.views import SplitView, language_codes, open_text_corpus, token_windows
    from babelscope.evaluate.intervention import condition_checksum, perplexities
    from babelscope.models.params import find_norm, gamma_offset
    from babelscope.models.placement import writable_weights
    from babelscope.regions.apply import DIM_MODES, perturbed_dimension
    from babelscope.runs import provenance, text_sha256
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    if cfg.mode not in DIM_MODES:
        raise BabelscopeError(f"--mode {cfg.mode!r}: use one of {', '.join(DIM_MODES)}")
    if cfg.top_n < 1 or cfg.threshold <= 1:
        raise BabelscopeError(f"--top-n {cfg.top_n} / --threshold {cfg.threshold}: need top_n >= 1 and threshold > 1")
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    view = SplitView(corpus, "test", cfg.test_fraction, cfg.seed)
    if (doc := sr.done(inputs={c: text_sha256(u.text for u in view.units(c)) for c in codes})) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "scan-dims")
    name, norm = find_norm(model, cfg.layer, cfg.norm)
    offset = gamma_offset(norm, model)  # the table's: 1 for Gemma's (1 + w), 0 for w
    engine = sr.engine(checksum=info.checksum, batch_size=cfg.batch_size, progress=False)  # windows, then the base
    seqs = [s for code in codes
            for s, _ in token_windows(engine, [u.text for u in view.units(code)], cfg.window, cfg.max_tokens)]
    peak, mean, where = scan.activation_magnitudes(model, norm, cfg.layer, seqs)
    dims, top = scan.choose_dims(cfg.dims, peak, cfg.top_n, cfg.seed)
    base_rows = perplexities(engine, view, codes, cfg.window, cfg.max_tokens)
    base = scan.pooled_ppl(base_rows)
    rank = scan.activation_ranks(peak)
    rows = []
    with writable_weights(model, [name]) as writable:  # the norm's own weight, or an offloaded one's copy
        weight = writable[name]
        for d in tqdm(dims, desc="scan-dims", unit="dim", leave=False, disable=not engine.is_main):
            checksum = condition_checksum(info.checksum, "dim", name, d, cfg.mode, cfg.factor)
            eng = sr.engine(checksum=checksum, batch_size=cfg.batch_size, progress=False)
            with perturbed_dimension(norm, d, cfg.mode, cfg.factor, offset, weight=weight) as gamma:
                after = perplexities(eng, view, codes, cfg.window, cfg.max_tokens)
            rows.append(scan.dimension_row(d, float(weight[d]) + offset, gamma, peak, mean, rank, top, after, base,
                                           cfg.threshold))
    if not engine.is_main:
        return sr.wait()
    rows.sort(key=lambda r: -r["ratio"])
    results = {"model": info.name, "norm": name, "layer": cfg.layer, "gamma_offset": offset,
               "norm_scale": "1 + w" if offset else "w", "mode": cfg.mode, "factor": cfg.factor, "base_ppl": base,
               "threshold": cfg.threshold, "base_ppl_per_language": {c: r["ppl"] for c, r in base_rows.items()},
               "broken_dims": [r["dim"] for r in rows if r["broken"]],
               "top_activation_dims": [int(d) for d in torch.argsort(peak, descending=True)[: cfg.top_n]],
               "median_act_mean": float(mean.median()), "activation": where, "scanned": len(rows)}
    return sr.write(scan.KIND, results, {"dims": rows}, provenance(model=info.to_dict(), data={"corpus": view.name}))
