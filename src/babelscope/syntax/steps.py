"""The syntax steps: ``extract`` (word vectors into a store), ``otdd`` (syntactic distance matrix and its
typological links), ``rsa`` (alignability of structural concepts) and ``probe`` (probes and transfer).

Each step is a config dataclass plus ``run(cfg, run_dir, step, loaded=None)`` as in
:mod:`babelscope.evaluate.perplexity`: finished steps (results written with the same config) are skipped, the
extract step resumes language by language, results are written atomically with provenance.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from babelscope.errors import BabelscopeError
from babelscope.layers import parse_layers
from babelscope.syntax.configs import ExtractConfig, OtddConfig, ProbeConfig, RsaConfig

KINDS = {"extract": "syntax-extract", "otdd": "syntax-otdd", "rsa": "syntax-rsa", "probe": "syntax-probe"}


# ------------------------------------------------------------------------------------------------- helpers
def random_copy(model, seed: int = 0):
    """A randomly initialised model of the same architecture and config (the untrained control)."""
    import torch

    torch.manual_seed(seed)
    copy = type(model)._from_config(model.config)
    from babelscope.models.placement import input_device

    return copy.to(input_device(model)).eval()  # the untrained control fits where the model's inputs go


def _store(run_dir: Path, step: str):
    from babelscope.syntax.represent import Store

    return Store(Path(run_dir) / step / "store")


def _languages(store, langs: str) -> list[str]:
    if langs in ("all", "", None):
        return store.languages()
    from babelscope.data.languages import parse_languages

    have = store.languages()
    out = []
    for lang in parse_languages(langs):
        match = lang.code if lang.code in have else next((c for c in have if c.split("-")[0] == lang.iso639_3), None)
        if match is None:
            raise BabelscopeError(f"{store.path}: language {lang.code} is not in the store ({', '.join(have)}); "
                                  "extract it first")
        out.append(match)
    return out


def _layer(store, layer: int | str | None) -> int:
    layers = store.layers()
    if layer in (None, "", "middle"):
        return layers[len(layers) // 2]
    if int(layer) not in layers:
        raise BabelscopeError(f"--layer {layer}: not in the store (extracted layers {layers})")
    return int(layer)


def _bar(total: int, desc: str, unit: str = "it"):
    from tqdm.auto import tqdm

    from babelscope.runs import is_main_process

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not is_main_process())


def _pairs_rows(langs: list[str], matrices: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    rows = []
    for i, a in enumerate(langs):
        for j in range(i + 1, len(langs)):
            rows.append({"lang_a": a, "lang_b": langs[j], **{k: float(m[i, j]) for k, m in matrices.items()}})
    return rows


def _start(cfg, run_dir, step: str, loaded, *reads: str):
    """The step runner of an analysis step, and its finished results when it ran with the same config on the
    same stores (``reads``: the extract / otdd steps it reads; their results files are its inputs)."""
    from babelscope.steps import StepRun, results_sha256

    sr = StepRun(cfg, run_dir, step, loaded)
    _store(run_dir, cfg.store)  # "no representation store; run `babelscope syntax extract` first"
    return sr, sr.done(inputs={name: results_sha256(run_dir, name) for name in reads if name})


# ------------------------------------------------------------------------------------------------- extract
def run_extract(cfg: ExtractConfig, run_dir, step: str = "syntax-extract", loaded=None) -> dict[str, Any]:
    """Embed every word of the chosen treebanks at the chosen layers into ``RUN_DIR/STEP/store``."""
    from babelscope.data.ud import load_treebanks
    from babelscope.runs import is_main_process, provenance, text_sha256
    from babelscope.steps import StepRun
    from babelscope.syntax import represent

    sr = StepRun(cfg, run_dir, step, loaded)
    st = sr.st
    sentences = load_treebanks(cfg.treebank, cfg.langs, cfg.max_sentences)
    data = {"treebank": cfg.treebank, "sha256": {lang: text_sha256(s.text for s in sents)
                                                 for lang, sents in sentences.items()}}
    if (doc := sr.done(inputs=data)) is not None:
        return doc
    if not is_main_process():  # one process writes the store (the forward passes are not split over ranks)
        return sr.wait()
    model, tokenizer, info = sr.model()
    checksum = info.checksum
    if cfg.random_init:
        model = random_copy(model, cfg.seed)
        checksum = f"random-init-seed{cfg.seed}:{info.checksum}"
    pooling = represent.default_pooling(info.kind) if cfg.pooling == "auto" else cfg.pooling
    if pooling not in represent.POOLINGS:
        raise BabelscopeError(f"--pooling {cfg.pooling!r}: use auto, first, last or mean")
    layers = parse_layers(cfg.layers, info.layers)
    engine = sr.engine(model=model, checksum=checksum, cache=False, batch_size=cfg.batch_size, progress=False)
    max_tokens = getattr(model.config, "max_position_embeddings", None)
    store = st.path / "store"
    meta = {"model": info.name, "checksum": checksum, "random_init": cfg.random_init, "treebank": cfg.treebank}
    records = {}
    with _bar(sum(len(s) for s in sentences.values()), "extract", "sent") as bar:
        for lang, sents in sentences.items():
            done = store / lang / "done.json"
            if done.exists():
                import json

                rec = json.loads(done.read_text(encoding="utf-8"))
                if (rec.get("checksum"), rec.get("layers"), rec.get("pooling"), rec.get("sentences_asked")) == (
                        checksum, layers, pooling, len(sents)):
                    records[lang] = rec
                    bar.update(len(sents))
                    continue
            records[lang] = represent.extract_language(
                engine, sents, layers, pooling, store / lang, {**meta, "lang": lang, "sentences_asked": len(sents)},
                max_tokens=max_tokens, bar=bar)
    rows, shares = [], []
    reader = represent.Store(store)
    for lang, rec in records.items():
        rel = represent.relation_instances(reader.words(lang), reader.vectors(lang, layers[0]))
        rows.append({"lang": lang, "sentences": rec["sentences"], "skipped_long": rec["skipped_long"],
                     "words": rec["words"], "words_without_token": rec["words_without_token"],
                     "relations": len(rel), "relation_labels": len(set(rel.labels.tolist()))})
    langs = list(records)
    for layer in layers:  # how much a single dimension dominates distances ("massive activations")
        X = np.concatenate([np.asarray(reader.vectors(lang, layer)[:2000]) for lang in langs])
        X = X[np.isfinite(X[:, 0])]
        top = int(X.var(axis=0).argmax())
        shares.append({"layer": layer, "top_dimension": top, "top_dimension_share": represent.top_dimension_share(X),
                       "max_abs": float(np.abs(X).max())})
    results = {"model": info.name, "kind": info.kind, "random_init": cfg.random_init, "pooling": pooling,
               "layers": layers, "languages": langs, "treebank": cfg.treebank, "store": "store",
               "hidden_size": info.hidden_size}
    return sr.write(KINDS["extract"], results, {"per_language": rows, "per_layer": shares},
                    provenance(model=info.to_dict(), data=data))


# ------------------------------------------------------------------------------------------------- otdd
def _standardized(sets: dict[str, Any], mean, std) -> dict[str, Any]:
    from babelscope.syntax.represent import standardize

    return {k: standardize(v, mean, std) for k, v in sets.items()}


def run_otdd(cfg: OtddConfig, run_dir, step: str = "syntax-otdd", loaded=None) -> dict[str, Any]:
    """The OTDD matrix over languages (raw and standardised), typological distances, Mantel tests and the
    gradient-boosting feature importances."""
    from babelscope.runs import is_main_process, provenance
    from babelscope.syntax import otdd, represent, typology

    sr, doc = _start(cfg, run_dir, step, loaded, cfg.store)
    if doc is not None:
        return doc
    if not is_main_process():  # one process computes (nothing here is split over ranks)
        return sr.wait()
    if cfg.draws < 1 or cfg.samples < 2:
        raise BabelscopeError(f"--draws {cfg.draws} --samples {cfg.samples}: need at least 1 draw of 2 samples")
    otdd.check_reg(cfg.reg)
    store = _store(run_dir, cfg.store)
    langs = _languages(store, cfg.langs)
    if len(langs) < 2:
        raise BabelscopeError(f"OTDD needs at least 2 languages (got {langs})")
    layer = _layer(store, cfg.layer)
    full = {lang: represent.instances(store, lang, layer, "relation") for lang in langs}
    for lang, inst in full.items():
        if len(inst) < 20:
            raise BabelscopeError(f"{lang}: only {len(inst)} relation instances at layer {layer}; "
                                  "extract more sentences (--max-sentences)")
    mean, std = represent.standardizer(list(full.values()))
    n = len(langs)
    runs: dict[str, list[np.ndarray]] = {"raw": [], "std": []}
    eps: dict[str, list[float]] = {"raw": [], "std": []}
    pairs = n * (n + 1) // 2
    solves: list = []
    with _bar(cfg.draws * 2 * 2 * pairs, "otdd", "pair") as bar:
        for d in range(cfg.draws):
            # each language's draw is seeded by its code, not its position: the matrix ignores the order
            sub = {lang: represent.subsample(inst, cfg.samples, cfg.seed + 1000 * d + zlib.crc32(lang.encode()))
                   for lang, inst in full.items()}
            for variant, sets in (("raw", sub), ("std", _standardized(sub, mean, std))):
                D, e = otdd.otdd_matrix([(sets[lang].X, sets[lang].labels) for lang in langs], reg=cfg.reg,
                                        inner=cfg.inner, inner_reg=cfg.inner_reg,
                                        max_per_label=cfg.max_per_label, seed=cfg.seed + d, progress=bar,
                                        log=solves)
                runs[variant].append(D)
                eps[variant].append(e)
    mats = {}
    for variant in ("raw", "std"):
        stack = np.stack(runs[variant])
        mats[f"otdd_{variant}"] = stack.mean(axis=0)
        mats[f"otdd_{variant}_sd"] = stack.std(axis=0, ddof=1) if cfg.draws > 1 else np.zeros((n, n))
    links: dict[str, Any] = {}
    importance: list[dict] = []
    typo_langs = [lang for lang in langs if _has_typology(lang, cfg.typology)]
    if len(typo_langs) >= 3:
        idx = [langs.index(lang) for lang in typo_langs]
        F = typology.syntax_features(typo_langs, cfg.typology)
        T = typology.typological_distance(F)
        full_T = np.full((n, n), np.nan)
        full_T[np.ix_(idx, idx)] = T
        mats["typology"] = full_T
        for variant in ("raw", "std"):
            sub_D = mats[f"otdd_{variant}"][np.ix_(idx, idx)]
            r, p = typology.mantel(sub_D, T, n_perm=cfg.mantel_perm, seed=cfg.seed)
            links[f"mantel_otdd_{variant}_vs_typology"] = {"r": r, "p": p, "languages": len(idx)}
        if len(typo_langs) >= 4:
            importance, r2 = typology.feature_importance(F, mats["otdd_std"][np.ix_(idx, idx)],
                                                         typology.feature_names(), seed=cfg.seed)
            links["gbr_r2_in_sample"] = r2
    tables = {
        "pairs": _pairs_rows(langs, mats),
        "matrix_raw": _matrix_rows(langs, mats["otdd_raw"]),
        "matrix_std": _matrix_rows(langs, mats["otdd_std"]),
        "importance": importance[:25],
    }
    results = {"layer": layer, "languages": langs, "draws": cfg.draws, "samples": cfg.samples,
               "eps": {k: float(np.mean(v)) for k, v in eps.items()}, "links": links,
               "sinkhorn": otdd.convergence(solves),
               "instances": {lang: len(inst) for lang, inst in full.items()},
               "store_model": store.records[langs[0]].get("model"),
               "random_init": store.records[langs[0]].get("random_init")}
    return sr.write(KINDS["otdd"], results, tables, provenance(store=str(store.path)))


def _has_typology(lang: str, source: str) -> bool:
    from babelscope.syntax import typology

    try:
        typology.syntax_features([lang], source)
    except BabelscopeError:
        return False
    return True


def _matrix_rows(langs: list[str], M: np.ndarray) -> list[dict[str, Any]]:
    return [{"lang": a, **{b: float(M[i, j]) for j, b in enumerate(langs)}} for i, a in enumerate(langs)]


def _square(langs: list[str], rows: list[dict], key: str) -> np.ndarray:
    idx = {lang: i for i, lang in enumerate(langs)}
    M = np.full((len(langs), len(langs)), np.nan)
    for r in rows:
        if r["lang_a"] in idx and r["lang_b"] in idx and r.get(key) is not None:
            M[idx[r["lang_a"]], idx[r["lang_b"]]] = M[idx[r["lang_b"]], idx[r["lang_a"]]] = r[key]
    np.fill_diagonal(M, 0.0)
    return M


# ------------------------------------------------------------------------------------------------- rsa
def _concept_sets(store, langs, layer, kind):
    from babelscope.syntax import represent

    return {lang: represent.instances(store, lang, layer, kind) for lang in langs}


def _alignability_matrices(sets: dict[str, Any], cfg: RsaConfig, n_perm: int) -> dict[str, np.ndarray]:
    from babelscope.syntax import rsa

    langs = list(sets)
    n = len(langs)
    out = {k: np.full((n, n), np.nan) for k in ("rsa", "p_value", "procrustes", "concepts")}
    for i in range(n):
        for j in range(i + 1, n):
            a, b = sets[langs[i]], sets[langs[j]]
            try:
                res = rsa.alignability(a.X, a.labels, b.X, b.labels, min_count=cfg.min_count, metric=cfg.metric,
                                       n_perm=n_perm, seed=cfg.seed)
            except BabelscopeError:
                continue  # too few shared concepts: left as NaN and counted in the results
            for k in out:
                out[k][i, j] = out[k][j, i] = res[k]
    for k in ("rsa",):
        np.fill_diagonal(out[k], 1.0)
    return out


def _upper_mean(M: np.ndarray) -> float:
    iu = np.triu_indices(len(M), 1)
    vals = M[iu][np.isfinite(M[iu])]
    return float(vals.mean()) if len(vals) else float("nan")


def run_rsa(cfg: RsaConfig, run_dir, step: str = "syntax-rsa", loaded=None) -> dict[str, Any]:
    """Alignability heatmap (RSA and Procrustes, with and without standardisation) at one layer, per-layer
    curves with split-half ceilings and the random-model control, and the Mantel test against typology."""
    from babelscope.runs import is_main_process, provenance
    from babelscope.syntax import represent, rsa, typology

    sr, doc = _start(cfg, run_dir, step, loaded, cfg.store, cfg.control)
    if doc is not None:
        return doc
    if not is_main_process():  # one process computes (nothing here is split over ranks)
        return sr.wait()
    store = _store(run_dir, cfg.store)
    control = _store(run_dir, cfg.control) if cfg.control else None
    langs = _languages(store, cfg.langs)
    if len(langs) < 2:
        raise BabelscopeError(f"RSA needs at least 2 languages (got {langs})")
    layer = _layer(store, cfg.layer)
    layers = [x for x in parse_layers(cfg.layers, max(store.layers())) if x in store.layers()]
    curves, pair_rows = [], []
    heat: dict[str, np.ndarray] = {}
    with _bar(len(set(layers) | {layer}), "rsa", "layer") as bar:
        for lay in sorted(set(layers) | {layer}):
            sets = _concept_sets(store, langs, lay, cfg.concepts)
            mean, std = represent.standardizer(list(sets.values()))
            std_sets = _standardized(sets, mean, std)
            perm = cfg.n_perm if lay == layer else 0
            raw = _alignability_matrices(sets, cfg, perm)
            stdm = _alignability_matrices(std_sets, cfg, perm)
            ceil = [rsa.split_half(s.X, s.labels, s.sent_ids, min_count=cfg.min_count, metric=cfg.metric,
                                   seed=cfg.seed) for s in sets.values()]
            ceil_std = [rsa.split_half(s.X, s.labels, s.sent_ids, min_count=cfg.min_count, metric=cfg.metric,
                                       seed=cfg.seed) for s in std_sets.values()]
            row = {"layer": lay, "rsa": _upper_mean(raw["rsa"]), "rsa_std": _upper_mean(stdm["rsa"]),
                   "procrustes": _upper_mean(raw["procrustes"]), "procrustes_std": _upper_mean(stdm["procrustes"]),
                   "split_half": float(np.nanmean(ceil)), "split_half_std": float(np.nanmean(ceil_std))}
            ctrl = None
            if control is not None and lay in control.layers():
                csets = _concept_sets(control, langs, lay, cfg.concepts)
                ctrl = _alignability_matrices(csets, cfg, 0)
                cm, cs = represent.standardizer(list(csets.values()))
                ctrl_std = _alignability_matrices(_standardized(csets, cm, cs), cfg, 0)
                row["control_rsa"] = _upper_mean(ctrl["rsa"])
                row["control_rsa_std"] = _upper_mean(ctrl_std["rsa"])
            curves.append(row)
            if lay == layer:
                heat = {"rsa": raw["rsa"], "p_value": raw["p_value"], "procrustes": raw["procrustes"],
                        "concepts": raw["concepts"], "rsa_std": stdm["rsa"], "p_value_std": stdm["p_value"],
                        "procrustes_std": stdm["procrustes"]}
                if ctrl is not None:
                    heat["control_rsa"] = ctrl["rsa"]
                ceilings = [{"lang": lang, "split_half": c, "split_half_std": cs_}
                            for lang, c, cs_ in zip(langs, ceil, ceil_std, strict=True)]
            bar.update(1)
    pair_rows = _pairs_rows(langs, heat)
    links = {}
    typo_langs = [lang for lang in langs if _has_typology(lang, cfg.typology)]
    if len(typo_langs) >= 3:
        idx = [langs.index(lang) for lang in typo_langs]
        T = typology.typological_distance(typology.syntax_features(typo_langs, cfg.typology))
        for key in ("rsa", "rsa_std"):
            M = 1.0 - heat[key][np.ix_(idx, idx)]
            if np.isfinite(M[np.triu_indices(len(idx), 1)]).sum() >= 3:
                r, p = typology.mantel(M, T, n_perm=999, seed=cfg.seed)
                links[f"mantel_1-{key}_vs_typology"] = {"r": r, "p": p, "languages": len(idx)}
    ranked = sorted((r for r in pair_rows if np.isfinite(r["rsa"])), key=lambda r: -r["rsa"])
    ranked_std = sorted((r for r in pair_rows if np.isfinite(r["rsa_std"])), key=lambda r: -r["rsa_std"])
    top = lambda rows, key: [(r["lang_a"], r["lang_b"], round(r[key], 3)) for r in rows]  # noqa: E731
    results = {"layer": layer, "languages": langs, "concepts": cfg.concepts, "metric": cfg.metric,
               "min_count": cfg.min_count, "links": links,
               "most_alignable": top(ranked[:5], "rsa"), "least_alignable": top(ranked[-5:][::-1], "rsa"),
               "most_alignable_std": top(ranked_std[:5], "rsa_std"),
               "least_alignable_std": top(ranked_std[-5:][::-1], "rsa_std"),
               "pairs_without_enough_concepts": int(sum(not np.isfinite(r["rsa"]) for r in pair_rows)),
               "store_model": store.records[langs[0]].get("model"),
               "control": bool(control)}
    tables = {"pairs": pair_rows, "per_layer": curves, "split_half": ceilings}
    return sr.write(KINDS["rsa"], results, tables, provenance(store=str(store.path)))


# ------------------------------------------------------------------------------------------------- probe
def _split(inst, cfg: ProbeConfig):
    from babelscope.syntax.represent import split_by_sentence, subsample

    test = split_by_sentence(inst.sent_ids, cfg.test_fraction, cfg.seed)
    train = subsample(inst.take(np.flatnonzero(~test)), cfg.max_train, cfg.seed)
    return train, inst.take(np.flatnonzero(test))


def run_probe(cfg: ProbeConfig, run_dir, step: str = "syntax-probe", loaded=None) -> dict[str, Any]:
    """Per-layer probe accuracy against majority, layer-0 and random-model baselines; the cross-lingual
    relation-probe transfer matrix; its Mantel correlation with the OTDD matrix when one is given."""
    from babelscope.runs import is_main_process, provenance
    from babelscope.syntax import probe, represent, typology

    sr, doc = _start(cfg, run_dir, step, loaded, cfg.store, cfg.control, cfg.otdd)
    if doc is not None:
        return doc
    if not is_main_process():  # one process computes (nothing here is split over ranks)
        return sr.wait()
    store = _store(run_dir, cfg.store)
    control = _store(run_dir, cfg.control) if cfg.control else None
    langs = _languages(store, cfg.langs)
    kinds = [k.strip() for k in cfg.concepts.split(",") if k.strip()]
    layers = [x for x in parse_layers(cfg.layers, max(store.layers())) if x in store.layers()]
    t_layer = _layer(store, cfg.transfer_layer)
    curves = []
    with _bar(len(kinds) * len(layers) * len(langs), "probe", "fit") as bar:
        for kind in kinds:
            for lay in layers:
                for lang in langs:
                    train, test = _split(represent.instances(store, lang, lay, kind), cfg)
                    if len(set(train.labels.tolist())) < 2 or len(test) == 0:
                        raise BabelscopeError(f"{lang}: too few {kind} instances to train and test a probe "
                                              f"(train {len(train)}, test {len(test)}); extract more sentences")
                    model = probe.fit_probe(train.X, train.labels, C=cfg.C, max_iter=cfg.max_iter, seed=cfg.seed)
                    row = {"concepts": kind, "layer": lay, "lang": lang, "train": len(train), "test": len(test),
                           "accuracy": probe.accuracy(model, test.X, test.labels),
                           "majority": probe.majority_accuracy(train.labels, test.labels)}
                    if control is not None and lay in control.layers():
                        ctr, cte = _split(represent.instances(control, lang, lay, kind), cfg)
                        cm = probe.fit_probe(ctr.X, ctr.labels, C=cfg.C, max_iter=cfg.max_iter, seed=cfg.seed)
                        row["control_accuracy"] = probe.accuracy(cm, cte.X, cte.labels)
                    curves.append(row)
                    bar.update(1)
    train, test = {}, {}
    for lang in langs:
        tr, te = _split(represent.instances(store, lang, t_layer, "relation"), cfg)
        train[lang], test[lang] = (tr.X, tr.labels), (te.X, te.labels)
    _, T = probe.transfer_matrix(train, test, C=cfg.C, max_iter=cfg.max_iter, seed=cfg.seed)
    links = {}
    if cfg.otdd:
        from babelscope.runs import load_results as load

        odoc = load(Path(run_dir) / cfg.otdd)
        olangs = odoc["results"]["languages"]
        common = [lang for lang in langs if lang in olangs]
        if len(common) >= 3:
            idx = [langs.index(lang) for lang in common]
            transfer_dist = 1.0 - 0.5 * (T + T.T)  # symmetrised transfer loss
            for variant in ("raw", "std"):
                dist = _square(olangs, odoc["tables"]["pairs"]["rows"], f"otdd_{variant}")
                oidx = [olangs.index(lang) for lang in common]
                r, p = typology.mantel(dist[np.ix_(oidx, oidx)], transfer_dist[np.ix_(idx, idx)], n_perm=999,
                                       seed=cfg.seed)
                links[f"mantel_otdd_{variant}_vs_transfer_loss"] = {"r": r, "p": p, "languages": len(common)}
    summary = []
    for kind in kinds:
        for lay in layers:
            mine = [r for r in curves if r["concepts"] == kind and r["layer"] == lay]
            summary.append({"concepts": kind, "layer": lay, **{
                k: float(np.mean([r[k] for r in mine])) for k in ("accuracy", "majority", "control_accuracy")
                if all(k in r for r in mine)}})
    layer0 = {kind: next((s["accuracy"] for s in summary if s["concepts"] == kind and s["layer"] == 0), None)
              for kind in kinds}
    results = {"languages": langs, "layers": layers, "transfer_layer": t_layer, "layer0_accuracy": layer0,
               "links": links, "store_model": store.records[langs[0]].get("model"), "control": bool(control)}
    tables = {"per_layer": summary, "per_language": curves, "transfer": _matrix_rows(langs, T)}
    return sr.write(KINDS["probe"], results, tables, provenance(store=str(store.path)))
