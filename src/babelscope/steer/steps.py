"""The ``babelscope steer`` step: DiffMean directions (:mod:`babelscope.steer.diffmean`), the sweep over layers and
α, LAPE-neuron steering (:mod:`babelscope.steer.apply`), the CLaS-Bench scores (:mod:`babelscope.steer.score`) and
the perplexity cost on the other languages at each language's best setting.

Means are computed on the *train* side of the id split (per language, ``sums/<lang>.safetensors``, re-read by a
re-run with the same key); prompts are the first half of held-out units that every language has, so each prompt
has a parallel reference in every language. Generations and perplexities go through the shared engine with a
per-request cache keyed by the model *and* the steering condition, so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch

from babelscope.errors import BabelscopeError
from babelscope.steer.configs import SteerConfig

KIND = "steer"


def parse_floats(spec: str, option: str) -> list[float]:
    """Comma-separated finite numbers, else a one-line error."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise BabelscopeError(f"{option} {spec!r}: {part!r} is not a number") from None
        if not math.isfinite(value):
            raise BabelscopeError(f"{option} {spec!r}: {part!r} is not finite; give strengths like 1,2,4")
        out.append(value)
    if not out:
        raise BabelscopeError(f"{option} {spec!r}: give at least one value")
    return out


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """Steering layers (default: 1/4, 1/2, 3/4 of the depth), each in ``0..n_layers``, else a one-line error."""
    if not spec.strip():
        return sorted({max(1, round(n_layers * f)) for f in (0.25, 0.5, 0.75)})
    layers = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if not part.lstrip("-").isdigit():
            raise BabelscopeError(f"--layers {spec!r}: {part!r} is not a layer number")
        layer = int(part)
        if not 0 <= layer <= n_layers:
            raise BabelscopeError(f"--layers {spec!r}: layer {layer} out of range; this model has layers "
                                  f"0..{n_layers} (0 = embeddings)")
        layers.append(layer)
    return list(dict.fromkeys(layers))


def prompt_of(text: str) -> str:
    """The first half of a unit (by words; by characters for text without spaces), at least 3 words."""
    words = text.split()
    if len(words) >= 4:
        return " ".join(words[: max(3, len(words) // 2)])
    return text[: max(1, len(text) // 2)]


def model_layers(sr) -> int:
    """Number of blocks of the step's model, read before loading it (the experiment's shared model when given)."""
    if sr.loaded is not None:
        from babelscope.models.arch import block_list

        return len(block_list(sr.model()[0])[1])
    from babelscope.models.loader import _load_config, resolve_spec

    config = _load_config(resolve_spec(sr.cfg.model)[0], False)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.num_hidden_layers)


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run(cfg: SteerConfig, run_dir, step: str = "steer", loaded=None) -> dict[str, Any]:
    """The ``babelscope steer`` step."""
    from tqdm.auto import tqdm

    from babelscope.data.languages import resolve_language
    from babelscope.data.views import SplitView, language_codes, open_text_corpus, split_side
    from babelscope.evaluate.intervention import condition_checksum, perplexities
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.runs import Step, is_main_process, load_results, provenance, text_sha256
    from babelscope.steer.apply import neurons_set, steered
    from babelscope.steer.diffmean import diffmean, language_sums, normalise
    from babelscope.steer.score import score_generations
    from babelscope.steps import StepRun, results_sha256
    from babelscope.tensorfiles import load_tensors, read_metadata, save_tensors

    sr = StepRun(cfg, run_dir, step, loaded)
    alphas = parse_floats(cfg.alphas, "--alphas")
    lape_alphas = parse_floats(cfg.lape_alphas, "--lape-alphas")
    corpus = open_text_corpus(cfg.corpus)
    codes = language_codes(corpus, cfg.langs)
    if len(codes) < 2:
        raise BabelscopeError(f"--langs {cfg.langs!r}: DiffMean compares languages; give at least two")
    source = corpus.match_language(cfg.source)
    if source not in codes:
        raise BabelscopeError(f"--source {cfg.source}: not among --langs {cfg.langs}; add it")
    targets = language_codes(corpus, cfg.targets) if cfg.targets.strip() else [c for c in codes if c != source]
    stray = [t for t in targets if t not in codes or t == source]
    if stray or not targets:
        raise BabelscopeError(f"--targets {cfg.targets!r}: {', '.join(stray) or 'none'} not among the --langs "
                              "other than --source; steer into languages that have means")
    train = {c: split_side(corpus, c, "train", cfg.test_fraction, cfg.seed) for c in codes}  # errors: no text
    test = {c: split_side(corpus, c, "test", cfg.test_fraction, cfg.seed) for c in codes}
    shared = set.intersection(*({u.id for u in test[c]} for c in codes))
    ids = sorted(shared)[: cfg.prompts]
    if len(ids) < 2:
        raise BabelscopeError(f"corpus {corpus.name!r}: {len(ids)} held-out unit(s) shared by all of --langs; "
                              "relevance compares at least two prompts: use a parallel corpus or lower "
                              "--test-fraction")
    refs = {c: [next(u.text for u in test[c] if u.id == i) for i in ids] for c in codes}
    n_layers = model_layers(sr)
    layers = parse_layers(cfg.layers, n_layers)
    masks, nmeta = {}, {}
    reads = {}
    if cfg.neurons_step not in ("none", ""):
        from babelscope.neurons.lape import load_neurons

        nsrc = Step(sr.run_dir, cfg.neurons_step)
        ndoc = load_results(nsrc.results_path)  # one-line error when the step has not run
        masks, nmeta = load_neurons(nsrc.path / ndoc["results"]["neurons_file"])
        reads[cfg.neurons_step] = results_sha256(sr.run_dir, cfg.neurons_step)
    inputs = {"train": {c: text_sha256(u.text for u in train[c]) for c in codes},
              "refs": {c: text_sha256(refs[c]) for c in codes}, **reads}
    if (doc := sr.done(inputs=inputs, write_config=False)) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "steering")
    if masks and nmeta.get("model") != info.checksum:
        raise BabelscopeError(f"{cfg.neurons_step}: LAPE neurons of another model; run `babelscope neurons find` "
                              f"with --model {cfg.model} first, or pass --neurons-step none")
    ffns = ffn_modules(model)
    main = is_main_process()
    sr.write_config()
    engine = sr.engine(cache=False, batch_size=cfg.batch_size, progress=False)

    # 1. per-language sums over the train side: residual stream of every layer and the FFN down inputs
    from babelscope.data.views import language_windows

    sums = {}
    for code in tqdm(codes, desc="means", unit="lang", leave=False, disable=not engine.is_main):
        key = _key({"model": info.checksum, "lang": code, "text": inputs["train"][code], "window": cfg.window,
                    "max_tokens": cfg.max_tokens, "dtype": cfg.dtype, "device": engine.device.type})
        path = sr.path / "sums" / f"{code}.safetensors"
        meta = read_metadata(path) if path.exists() else {}
        if meta.get("key") == key:
            t = load_tensors(path)
            sums[code] = (t["residual"], t["norms"], t["ffn"], int(meta["tokens"]))
            continue
        seqs = language_windows(engine, [u.text for u in train[code]], cfg.window, cfg.max_tokens)
        s = language_sums(model, seqs, cfg.batch_size, engine.pad_id, ffns)
        if s.tokens == 0:
            raise BabelscopeError(f"language {code}: no tokens for the means; raise --max-tokens or --window")
        sums[code] = (s.residual, s.norms, s.ffn, s.tokens)
        if main:
            save_tensors(path, {"residual": s.residual, "norms": s.norms, "ffn": s.ffn},
                         {"key": key, "lang": code, "tokens": s.tokens, "model": info.checksum})
    tokens = torch.tensor([sums[c][3] for c in codes], dtype=torch.float64)
    raw = diffmean(torch.stack([sums[c][0] for c in codes]), tokens)
    mean_norms = torch.stack([sums[c][1] for c in codes]).sum(0) / tokens.sum()
    directions = (normalise(raw, mean_norms) if cfg.normalise else raw).float()
    ffn_means = {c: (sums[c][2] / sums[c][3]).float() for c in codes}
    dir_sha = hashlib.sha256(directions.numpy().tobytes()).hexdigest()[:16]
    if main:
        save_tensors(sr.path / "directions.safetensors",
                     {f"layer.{i}": directions[:, i] for i in range(n_layers + 1)},
                     {"model": info.checksum, "model_name": info.name, "languages": codes,
                      "tokens": {c: sums[c][3] for c in codes}, "normalised": cfg.normalise,
                      "mean_residual_norm": [float(x) for x in mean_norms], "corpus": corpus.name,
                      "layers": n_layers + 1, "sha": dir_sha})

    # 2. generations: base, DiffMean sweep, LAPE
    prompts = [prompt_of(t) for t in refs[source]]
    iso = {resolve_language(c).iso639_1: c for c in codes if resolve_language(c).iso639_1}

    def engine_for(*change: Any):
        return sr.engine(checksum=condition_checksum(info.checksum, *change) if change else info.checksum,
                         batch_size=cfg.batch_size, progress=False)

    base_engine = engine_for()
    base_out = base_engine.generate(prompts, cfg.max_new_tokens)
    conditions: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    outputs: dict[tuple, list[str]] = {}

    def record(method: str, target: str, layer, alpha, outs: list[str], neurons: int | None = None) -> None:
        summary, rows = score_generations(outs, target, refs, iso)
        conditions.append({"method": method, "lang": target, "layer": layer, "alpha": alpha, "neurons": neurons,
                           **summary})
        outputs[(method, target, layer, alpha)] = outs
        samples.extend({"method": method, "lang": target, "layer": layer, "alpha": alpha,
                        "prompt_text": prompts[r["prompt"]], **r} for r in rows)

    for target in targets:
        record("none", target, None, 0.0, base_out)
    lape_targets = [t for t in targets if t in masks and bool(masks[t].any())]
    total = len(targets) * len(layers) * len(alphas) + len(lape_targets) * len(lape_alphas)
    from babelscope.neurons.lape import neuron_indices

    with tqdm(total=total, desc="steer", unit="cond", leave=False, disable=not engine.is_main) as bar:
        for target in targets:
            t = codes.index(target)
            for layer in layers:
                for alpha in alphas:
                    eng = engine_for("diffmean", target, layer, alpha, dir_sha)
                    with steered(model, {layer: directions[t, layer]}, alpha):
                        outs = eng.generate(prompts, cfg.max_new_tokens)
                    record("diffmean", target, layer, alpha, outs)
                    bar.update(1)
            if target in lape_targets:
                idx = neuron_indices(masks[target])
                msha = hashlib.sha256(masks[target].numpy().tobytes()).hexdigest()[:16]
                for alpha in lape_alphas:
                    eng = engine_for("lape", target, alpha, msha, dir_sha)
                    with neurons_set(ffns, idx, ffn_means[target], alpha) as n:
                        outs = eng.generate(prompts, cfg.max_new_tokens)
                    record("lape", target, None, alpha, outs, neurons=n)
                    bar.update(1)

    # 3. the best setting per method and language, and its perplexity cost on the other languages
    view = SplitView(corpus, "test", cfg.test_fraction, cfg.seed)
    base_ppl = perplexities(engine_for(), view, codes, cfg.window, cfg.ppl_max_tokens)
    best_rows, ppl_rows = [], []
    for method in ("diffmean", "lape"):
        for target in targets:
            mine = [c for c in conditions if c["method"] == method and c["lang"] == target]
            if not mine:
                continue
            best = max(mine, key=lambda c: (c["harmonic"] or 0.0, c["forcing"] or 0.0, -abs(c["alpha"])))
            if method == "diffmean":
                t = codes.index(target)
                ctx = steered(model, {best["layer"]: directions[t, best["layer"]]}, best["alpha"])
                eng = engine_for("diffmean", target, best["layer"], best["alpha"], dir_sha)
            else:
                msha = hashlib.sha256(masks[target].numpy().tobytes()).hexdigest()[:16]
                ctx = neurons_set(ffns, neuron_indices(masks[target]), ffn_means[target], best["alpha"])
                eng = engine_for("lape", target, best["alpha"], msha, dir_sha)
            with ctx:
                after = perplexities(eng, view, codes, cfg.window, cfg.ppl_max_tokens)
            ratios = {}
            for code in codes:
                ratio = after[code]["ppl"] / base_ppl[code]["ppl"] if base_ppl[code]["ppl"] else None
                ratios[code] = ratio
                ppl_rows.append({"method": method, "steered": target, "lang": code, "ppl": after[code]["ppl"],
                                 "base_ppl": base_ppl[code]["ppl"], "ratio": ratio})
            others = sorted(v for c, v in ratios.items() if c != target and v is not None)
            med = (others[len(others) // 2] if len(others) % 2 else
                   (others[len(others) // 2 - 1] + others[len(others) // 2]) / 2) if others else None
            base_forcing = next(c["forcing"] for c in conditions if c["method"] == "none" and c["lang"] == target)
            best_rows.append({**{k: best[k] for k in ("method", "lang", "layer", "alpha", "forcing", "relevance",
                                                      "harmonic", "n")},
                              "base_forcing": base_forcing, "own_ppl_ratio": ratios.get(target),
                              "others_median_ppl_ratio": med})
    if not engine.is_main:
        return sr.wait()
    summary = {}
    for method in ("diffmean", "lape"):
        rows = [r for r in best_rows if r["method"] == method]
        if rows:
            summary[method] = {k: sum(r[k] for r in rows) / len(rows) for k in ("forcing", "relevance", "harmonic")}
            summary[method]["languages"] = len(rows)
    base_rows = [c for c in conditions if c["method"] == "none"]
    summary["none"] = {k: sum(c[k] for c in base_rows) / len(base_rows) for k in ("forcing", "relevance")}
    results = {"model": info.name, "model_checksum": info.checksum, "corpus": corpus.name, "languages": codes,
               "source": source, "targets": targets, "layers": layers, "n_layers": n_layers, "alphas": alphas,
               "lape_alphas": lape_alphas if lape_targets else [], "lape_targets": lape_targets,
               "prompts": len(prompts), "normalised": cfg.normalise, "directions_file": "directions.safetensors",
               "tokens": {c: sums[c][3] for c in codes}, "summary": summary,
               "neurons_step": cfg.neurons_step if masks else None}
    best_keys = {(r["method"], r["lang"], r["layer"], r["alpha"]) for r in best_rows}
    shown = [s for s in samples if (s["method"], s["lang"], s["layer"], s["alpha"]) in best_keys
             or s["method"] == "none"]
    prov = provenance(model=info.to_dict(), detector="py3langid",
                      data={"corpus": corpus.name, "prompt_units": ids,
                            "units": {c: [u.id for u in train[c]] for c in codes}})
    return sr.write(KIND, results, {"best": best_rows, "conditions": conditions, "ppl_cost": ppl_rows,
                                    "generations": shown}, prov)
