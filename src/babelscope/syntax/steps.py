"""The syntax steps: ``extract`` (word vectors into a store), ``otdd`` (syntactic distance matrix and its
typological links), ``rsa`` (alignability of structural concepts), ``probe`` (probes and transfer) and ``meta``
(meta-learned concept alignment). The methods live in :mod:`.otdd`, :mod:`.rsa`, :mod:`.probe` and :mod:`.meta`.

Each step is a config dataclass plus ``run(cfg, run_dir, step, loaded=None)`` as in
:mod:`babelscope.evaluate.perplexity`: finished steps (results written with the same config) are skipped, the
extract step resumes language by language, results are written atomically with provenance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from babelscope.caches import json_sha256
from babelscope.errors import BabelscopeError
from babelscope.layers import parse_layers
from babelscope.syntax.configs import ExtractConfig, MetaConfig, OtddConfig, ProbeConfig, RsaConfig

KINDS = {"extract": "syntax-extract", "otdd": "syntax-otdd", "rsa": "syntax-rsa", "probe": "syntax-probe",
         "meta": "syntax-meta"}
KIND_META = KINDS["meta"]


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
    store = sr.path / "store"
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
    solves: list = []
    with _bar(cfg.draws * 2 * 2 * (len(langs) * (len(langs) + 1) // 2), "otdd", "pair") as bar:
        mats, eps = otdd.otdd_draws(full, draws=cfg.draws, samples=cfg.samples, reg=cfg.reg, inner=cfg.inner,
                                    inner_reg=cfg.inner_reg, max_per_label=cfg.max_per_label, seed=cfg.seed,
                                    progress=bar, log=solves)
    typo_langs = [lang for lang in langs if _has_typology(lang, cfg.typology)]
    links, importance, typo = typology.otdd_links(langs, mats, typo_langs, cfg.typology, cfg.mantel_perm, cfg.seed)
    if typo is not None:
        mats["typology"] = typo
    tables = {
        "pairs": _pairs_rows(langs, mats),
        "matrix_raw": _matrix_rows(langs, mats["otdd_raw"]),
        "matrix_std": _matrix_rows(langs, mats["otdd_std"]),
        "importance": importance[:25],
    }
    results = {"layer": layer, "languages": langs, "draws": cfg.draws, "samples": cfg.samples,
               "eps": eps, "links": links,
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


def _upper_mean(M: np.ndarray) -> float:
    iu = np.triu_indices(len(M), 1)
    vals = M[iu][np.isfinite(M[iu])]
    return float(vals.mean()) if len(vals) else float("nan")


def run_rsa(cfg: RsaConfig, run_dir, step: str = "syntax-rsa", loaded=None) -> dict[str, Any]:
    """Alignability heatmap (RSA and Procrustes, with and without standardisation) at one layer, per-layer
    curves with split-half ceilings and the random-model control, and the Mantel test against typology."""
    from babelscope.runs import is_main_process, provenance
    from babelscope.syntax import rsa, typology

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
            kw = {"min_count": cfg.min_count, "metric": cfg.metric, "seed": cfg.seed}
            al = rsa.layer_alignability(_concept_sets(store, langs, lay, cfg.concepts), **kw,
                                        n_perm=cfg.n_perm if lay == layer else 0)
            raw, stdm, ceil, ceil_std = al["raw"], al["std"], al["split_half"], al["split_half_std"]
            row = {"layer": lay, "rsa": _upper_mean(raw["rsa"]), "rsa_std": _upper_mean(stdm["rsa"]),
                   "procrustes": _upper_mean(raw["procrustes"]), "procrustes_std": _upper_mean(stdm["procrustes"]),
                   "split_half": float(np.nanmean(ceil)), "split_half_std": float(np.nanmean(ceil_std))}
            ctrl = None
            if control is not None and lay in control.layers():
                ctrl_al = rsa.layer_alignability(_concept_sets(control, langs, lay, cfg.concepts), **kw, n_perm=0,
                                                 ceilings=False)
                ctrl = ctrl_al["raw"]
                row["control_rsa"] = _upper_mean(ctrl["rsa"])
                row["control_rsa_std"] = _upper_mean(ctrl_al["std"]["rsa"])
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


def _transfer_links(run_dir, cfg: ProbeConfig, langs: list[str], T: np.ndarray) -> dict[str, Any]:
    """Mantel correlation of the symmetrised transfer loss ``1 - (T + T^T) / 2`` with the OTDD matrices of the
    ``--otdd`` step, over the languages both have (at least 3)."""
    from babelscope.runs import load_results
    from babelscope.syntax import typology

    links: dict[str, Any] = {}
    if not cfg.otdd:
        return links
    odoc = load_results(Path(run_dir) / cfg.otdd)
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
    return links


def _probe_summary(curves: list[dict], kinds: list[str], layers: list[int]) -> list[dict[str, Any]]:
    """Mean accuracy, majority baseline and control accuracy over languages, per concept kind and layer."""
    summary = []
    for kind in kinds:
        for lay in layers:
            mine = [r for r in curves if r["concepts"] == kind and r["layer"] == lay]
            summary.append({"concepts": kind, "layer": lay, **{
                k: float(np.mean([r[k] for r in mine])) for k in ("accuracy", "majority", "control_accuracy")
                if all(k in r for r in mine)}})
    return summary


def run_probe(cfg: ProbeConfig, run_dir, step: str = "syntax-probe", loaded=None) -> dict[str, Any]:
    """Per-layer probe accuracy against majority, layer-0 and random-model baselines; the cross-lingual
    relation-probe transfer matrix; its Mantel correlation with the OTDD matrix when one is given."""
    from babelscope.runs import is_main_process, provenance
    from babelscope.syntax import probe, represent

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
    links = _transfer_links(run_dir, cfg, langs, T)
    summary = _probe_summary(curves, kinds, layers)
    layer0 = {kind: next((s["accuracy"] for s in summary if s["concepts"] == kind and s["layer"] == 0), None)
              for kind in kinds}
    results = {"languages": langs, "layers": layers, "transfer_layer": t_layer, "layer0_accuracy": layer0,
               "links": links, "store_model": store.records[langs[0]].get("model"), "control": bool(control)}
    tables = {"per_layer": summary, "per_language": curves, "transfer": _matrix_rows(langs, T)}
    return sr.write(KINDS["probe"], results, tables, provenance(store=str(store.path)))


# ------------------------------------------------------------------------------------------------- meta
# Pretraining languages as the model documentation lists them (ISO 639-1). multilingual-e5 is initialised from
# XLM-R and trained further on multilingual text; its card points to XLM-R's 100 languages (Conneau et al. 2020,
# Table 6). Gemma 3's documentation says "over 140 languages" without a list: unknown per language.
_XLMR = ("af am ar as az be bg bn br bs ca cs cy da de el en eo es et eu fa fi fr fy ga gd gl gu ha he hi hr hu hy "
         "id is it ja jv ka kk km kn ko ku ky la lo lt lv mg mk ml mn mr ms my ne nl no om or pa pl ps pt ro ru sa "
         "sd si sk sl so sq sr su sv sw ta te th tl tr ug uk ur uz vi xh yi zh")
XLMR_LANGUAGES = frozenset(_XLMR.split())
PRETRAINING = {
    "multilingual-e5": (XLMR_LANGUAGES, "XLM-R's 100 languages (multilingual-e5 model card; Conneau et al. 2020)"),
    "xlm-roberta": (XLMR_LANGUAGES, "XLM-R's 100 languages (Conneau et al. 2020, Table 6)"),
    "gemma-3": (None, "Gemma 3 model card: 'over 140 languages', no per-language list"),
}


def parse_shots(spec: str | int) -> list[int]:
    """``--shots 0,1,5`` -> sorted distinct sentence counts."""
    try:
        shots = sorted({int(x) for x in str(spec).split(",") if str(x).strip()})
    except ValueError:
        raise BabelscopeError(f"--shots {spec!r}: give comma-separated sentence counts such as 0,1,5,10,20") from None
    if not shots or shots[0] < 0:
        raise BabelscopeError(f"--shots {spec!r}: give non-negative sentence counts such as 0,1,5,10,20")
    return shots


def check_meta_config(cfg: MetaConfig) -> tuple[list[str], list[int]]:
    kinds = [k.strip() for k in cfg.concepts.split(",") if k.strip()]
    if not kinds or set(kinds) - {"pos", "relation"}:
        raise BabelscopeError(f"--concepts {cfg.concepts!r}: use pos, relation or both")
    shots = parse_shots(cfg.shots)
    if cfg.runs < 1 or cfg.meta_epochs < 1 or cfg.probe_epochs < 1 or cfg.episodes_per_lang < 1:
        raise BabelscopeError("--runs, --meta-epochs, --probe-epochs and --episodes-per-lang must be at least 1")
    if cfg.query < 1 or cfg.support < 0 or cfg.min_count < 1:
        raise BabelscopeError("--query and --min-count must be at least 1 and --support at least 0")
    if not 0 < cfg.dev_fraction < 1:
        raise BabelscopeError(f"--dev-fraction {cfg.dev_fraction}: give a share between 0 and 1")
    return kinds, shots


def _meta_match(store, spec: str, what: str) -> list[str]:
    from babelscope.data.languages import parse_languages

    have = store.languages()
    out = []
    for lang in parse_languages(spec):
        code = lang.code if lang.code in have else next((c for c in have if c.split("-")[0] == lang.iso639_3), None)
        if code is None:
            raise BabelscopeError(f"{store.path}: {what} language {lang.code} is not in the store "
                                  f"({', '.join(have)}); extract it first")
        out.append(code)
    return out


def _meta_layers(store, spec: str) -> list[int]:
    layers = store.layers()
    if spec in ("", "middle", None):
        return [layers[len(layers) // 2]]
    if spec == "auto":
        return layers
    try:
        layer = int(spec)
    except ValueError:
        raise BabelscopeError(f"--layer {spec!r}: give a stored layer ({layers}), middle or auto") from None
    if layer not in layers:
        raise BabelscopeError(f"--layer {spec}: not in the store (extracted layers {layers})")
    return [layer]


def _model_of(stores: list, langs: list[list[str]], model: str) -> dict[str, Any]:
    """The one model every store record was made with; a one-line error otherwise."""
    seen = {}
    for store, codes in zip(stores, langs, strict=True):
        for code in codes:
            rec = store.records[code]
            seen.setdefault(rec.get("checksum"), (rec.get("model"), f"{store.path}/{code}"))
    if len(seen) > 1:
        (c1, (m1, w1)), (c2, (m2, w2)) = list(seen.items())[:2]
        raise BabelscopeError(f"{w1} was extracted with {m1} ({str(c1)[:12]}) but {w2} with {m2} "
                              f"({str(c2)[:12]}); re-extract both with one model")
    checksum, (name, where) = next(iter(seen.items()))
    if model:
        from babelscope.models.loader import DEFAULT_MODEL

        wanted = model if model == DEFAULT_MODEL else Path(model).name
        if wanted != name:
            raise BabelscopeError(f"{where}: the store was made with {name}, not {model}; re-extract it with "
                                  f"--model {model} or drop --model")
    return {"model": name, "checksum": checksum}


def _splits(store, lang: str, treebank: str) -> tuple[dict[str, str], str]:
    """sent_id -> UD split of a held-out language, from its treebank (the store records which); a seeded
    hash split by sent_id (half pool, half test) when no train/dev and test files can be found."""
    from babelscope.data.ud import UdCorpus, treebank_paths

    spec = treebank or store.records[lang].get("treebank", "")
    try:
        corpus = UdCorpus(treebank_paths(spec), name=spec)
        units = corpus.units(lang) if lang in corpus.languages() else []
    except BabelscopeError:
        units = []
    split = {u.id: u.meta.get("split") for u in units}
    kinds = set(split.values())
    if "test" in kinds and kinds & {"train", "dev"}:
        pool = "train" if "train" in kinds else "dev"
        return {k: ("pool" if v == pool else "test" if v == "test" else "other") for k, v in split.items()}, \
            f"UD {pool} / test"
    return {}, "hash of sent_id (no UD train/dev and test files found)"


def _pretraining(model: str) -> tuple[frozenset | None, str]:
    for key, value in PRETRAINING.items():
        if key in model.lower():
            return value
    return None, f"{model}: no per-language pretraining list known"


def _fingerprint(stores: list) -> str:
    records = {str(s.path.parent.name): s.records for s in stores}
    return json_sha256(records, default=str)


def _icl_rows(run_dir: Path, step: str, checksum: str, tests: list[str]) -> tuple[dict[str, dict], int | None]:
    """MONO / EN in-context POS accuracy per held-out language from a ``pos`` step of the run, if present."""
    from babelscope.data.languages import resolve_language
    from babelscope.runs import load_results

    path = run_dir / step / "results.json"
    if not step or not path.exists():
        return {}, None
    doc = load_results(path)
    other = ((doc.get("provenance") or {}).get("model") or {}).get("checksum")
    if other and checksum and other != checksum and not str(checksum).startswith("random-init"):
        raise BabelscopeError(f"{path}: the in-context POS step used another model ({doc['results'].get('model')}) "
                              "than the store; re-run it with the store's model or pass --pos-step ''")
    out = {}
    for row in (doc.get("tables") or {}).get("per_language", {}).get("rows", []):
        code = resolve_language(row["lang"]).code
        match = next((t for t in tests if t == code or t.split("-")[0] == code.split("-")[0]), None)
        if match:
            out[match] = row
    return out, doc["results"].get("shots")


def _meta_languages(cfg: MetaConfig, store, tstore) -> tuple[str, list[str], list[str]]:
    """The source, the held-out and the meta-training languages (store codes)."""
    source = _meta_match(store, cfg.source, "source")[0]
    if cfg.test_langs in ("all", "", None):
        if tstore is store:
            raise BabelscopeError("--test-langs all needs a separate --test-store; name the held-out languages")
        tests = tstore.languages()
    else:
        tests = _meta_match(tstore, cfg.test_langs, "test")
    if cfg.meta_langs in ("all", "", None):
        metas = [c for c in store.languages() if c != source and (tstore is not store or c not in tests)]
    else:
        metas = [c for c in _meta_match(store, cfg.meta_langs, "meta-training") if c != source]
    if not metas:
        raise BabelscopeError(f"{store.path}: no meta-training language besides {source}; extract more languages")
    return source, tests, metas


def _meta_language_rows(out: dict, setup, icl: dict, icl_shots: int | None, model: str,
                        summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per held-out language (counts, in-context accuracy, pretraining and meta-training marks); the
    in-context MONO / EN accuracies join ``summary`` too."""
    from babelscope.data.languages import resolve_language

    pretrain, _ = _pretraining(model)
    meta_iso = {resolve_language(c).iso639_3 for c in setup.metas}
    lang_rows = []
    for t in setup.tests:
        entry: dict[str, Any] = {"lang": t}
        for o in out.values():
            entry.update(o.langs[t])
        for setting in ("MONO", "EN"):
            if f"{setting}_mean" in icl.get(t, {}):
                entry[f"icl_{setting.lower()}"] = icl[t][f"{setting}_mean"]
                summary.append({"concepts": "pos", "lang": t, "method": f"ICL-{setting}", "shots": icl_shots or 0,
                                "mean": icl[t][f"{setting}_mean"], "std": icl[t].get(f"{setting}_std", 0.0),
                                "runs": None})
        lang = resolve_language(t)
        in_pre = None if pretrain is None else bool(lang.iso639_1 and lang.iso639_1 in pretrain)
        seen = lang.iso639_3 in meta_iso
        entry.update({"name": lang.name, "in_pretraining": in_pre, "seen_in_meta_training": seen,
                      "mark": ("x" if in_pre is False else "?" if in_pre is None else "") + ("*" if seen else "")})
        lang_rows.append(entry)
    return lang_rows


def run_meta(cfg: MetaConfig, run_dir, step: str = "syntax-meta", loaded=None) -> dict[str, Any]:
    """Meta-train on the store's languages, then zero- and few-shot concept classification of held-out languages
    against the baselines (:func:`babelscope.syntax.meta.align_concepts`); writes per-run and summary tables
    (``RUN_DIR/STEP``). No model is loaded."""
    from babelscope.runs import is_main_process, provenance
    from babelscope.steps import StepRun, check_config
    from babelscope.syntax import meta
    from babelscope.syntax.represent import Store, instances, split_by_sentence

    kinds, shots = check_meta_config(check_config(cfg))
    run_dir = Path(run_dir)
    store = Store(run_dir / cfg.store / "store")
    tstore = Store(run_dir / cfg.test_store / "store") if cfg.test_store else store
    source, tests, metas = _meta_languages(cfg, store, tstore)
    model_id = _model_of([store, tstore], [[source, *metas], tests], cfg.model)
    icl, icl_shots = _icl_rows(run_dir, cfg.pos_step, model_id["checksum"], tests)
    inputs = {"stores": _fingerprint([store, tstore]),  # a changed input recomputes
              "icl": json_sha256(icl, 16) if icl else None}
    sr = StepRun(cfg, run_dir, step, loaded)
    if (doc := sr.done(inputs=inputs, write_config=False)) is not None:  # config: with the results
        return doc
    if not is_main_process():  # one process computes (nothing here is split over ranks)
        return sr.wait()
    en_ids = store.words(source)["sent_ids"]
    layers = _meta_layers(store, cfg.layer)
    dev_ids = set(en_ids[split_by_sentence(en_ids, cfg.dev_fraction, cfg.seed)].tolist())
    setup = meta.MetaSetup(source, metas, tests, dev_ids, {t: _splits(tstore, t, cfg.test_treebank) for t in tests},
                           shots)
    out = {}
    with _bar(len(kinds) * cfg.runs * cfg.meta_epochs * cfg.episodes_per_lang * len(metas), "meta", "episode") as bar:
        for kind in kinds:
            raw = {layer: ({lang: instances(store, lang, layer, kind) for lang in [source, *metas]},
                           {lang: instances(tstore, lang, layer, kind) for lang in tests}) for layer in layers}
            out[kind] = meta.align_concepts(kind, raw, setup, cfg, bar)
            del raw
    per_run = [r for o in out.values() for r in o.per_run]
    summary = meta.summarize(per_run)
    lang_rows = _meta_language_rows(out, setup, icl, icl_shots, model_id["model"], summary)
    results = {
        "model": model_id["model"], "source": source, "meta_langs": metas, "test_langs": tests,
        "layer": {k: o.layer for k, o in out.items()}, "layer_choice": cfg.layer, "shots": shots,
        "runs": cfg.runs, "concepts": kinds, "pretraining_languages": _pretraining(model_id["model"])[1],
        "icl_step": cfg.pos_step if icl else None,
        "marks": {"x": "not among the model's documented pretraining languages",
                  "?": "the model's documentation lists no pretraining languages",
                  "*": "the language (another treebank of it) was seen in meta-training"},
        "meta_langs_left_out": [r for o in out.values() for r in o.left_out],
    }
    tables = {"summary": summary, "languages": lang_rows, "per_run": per_run,
              "training": [r for o in out.values() for r in o.history]}
    layer_rows = [r for o in out.values() for r in o.layer_rows]
    if layer_rows:
        tables["layers"] = layer_rows
    sr.write_config()  # config and results only now: a bad input above leaves nothing behind
    return sr.write(KIND_META, results, tables, provenance(store=str(store.path), test_store=str(tstore.path),
                                                           model=model_id))
