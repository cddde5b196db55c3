"""The ``babelscope steer`` step: DiffMean directions (:mod:`babelscope.steer.diffmean`), the sweep over layers and
α with LAPE-neuron steering beside it, the best setting per language and its perplexity cost on the other languages
(:mod:`babelscope.steer.sweep`, which scores with :mod:`babelscope.steer.score`).

Means are computed on the *train* side of the id split (per language, ``sums/<lang>.safetensors``, re-read by a
re-run with the same key); prompts are the first half of held-out units that every language has, so each prompt
has a parallel reference in every language. Generations and perplexities go through the shared engine with a
per-request cache keyed by the model *and* the steering condition, so an interrupted run resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


@dataclass
class SteerInputs:
    """What the step reads and checks before its model loads."""

    corpus: Any
    codes: list[str]
    source: str
    targets: list[str]
    train: dict[str, list]
    ids: list[str]
    refs: dict[str, list[str]]
    n_layers: int
    layers: list[int]
    alphas: list[float]
    lape_alphas: list[float]
    masks: dict = field(default_factory=dict)
    nmeta: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)


def steer_inputs(sr) -> SteerInputs:
    """The options, languages, train/test sides, prompt units and LAPE neurons of a steer step, each checked with
    a one-line error; and the checksums of what was read (the step's inputs)."""
    from babelscope.data.views import language_codes, open_text_corpus, split_side
    from babelscope.runs import Step, load_results, text_sha256
    from babelscope.steps import results_sha256

    cfg = sr.cfg
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
    masks, nmeta, reads = {}, {}, {}
    if cfg.neurons_step not in ("none", ""):
        from babelscope.neurons.lape import load_neurons

        nsrc = Step(sr.run_dir, cfg.neurons_step)
        ndoc = load_results(nsrc.results_path)  # one-line error when the step has not run
        masks, nmeta = load_neurons(nsrc.path / ndoc["results"]["neurons_file"])
        reads[cfg.neurons_step] = results_sha256(sr.run_dir, cfg.neurons_step)
    inputs = {"train": {c: text_sha256(u.text for u in train[c]) for c in codes},
              "refs": {c: text_sha256(refs[c]) for c in codes}, **reads}
    return SteerInputs(corpus, codes, source, targets, train, ids, refs, n_layers, layers, alphas, lape_alphas,
                       masks, nmeta, inputs)


def language_means(sr, engine, inp: SteerInputs, ffns) -> dict[str, tuple]:
    """``{lang: (residual sums, norm sums, FFN sums, tokens)}`` over each language's train side, each saved as
    ``sums/<lang>.safetensors`` (rank 0) and re-read by a re-run with the same key."""
    from tqdm.auto import tqdm

    from babelscope.caches import json_sha256
    from babelscope.data.views import language_windows
    from babelscope.runs import is_main_process
    from babelscope.steer import diffmean
    from babelscope.tensorfiles import load_tensors, read_metadata, save_tensors

    cfg, checksum = sr.cfg, sr.model()[2].checksum
    sums = {}
    for code in tqdm(inp.codes, desc="means", unit="lang", leave=False, disable=not engine.is_main):
        key = json_sha256({"model": checksum, "lang": code, "text": inp.inputs["train"][code], "window": cfg.window,
                           "max_tokens": cfg.max_tokens, "dtype": cfg.dtype, "device": engine.device.type}, 16)
        path = sr.path / "sums" / f"{code}.safetensors"
        meta = read_metadata(path) if path.exists() else {}
        if meta.get("key") == key:
            t = load_tensors(path)
            sums[code] = (t["residual"], t["norms"], t["ffn"], int(meta["tokens"]))
            continue
        seqs = language_windows(engine, [u.text for u in inp.train[code]], cfg.window, cfg.max_tokens)
        s = diffmean.language_sums(sr.model()[0], seqs, cfg.batch_size, engine.pad_id, ffns)
        if s.tokens == 0:
            raise BabelscopeError(f"language {code}: no tokens for the means; raise --max-tokens or --window")
        sums[code] = (s.residual, s.norms, s.ffn, s.tokens)
        if is_main_process():
            save_tensors(path, {"residual": s.residual, "norms": s.norms, "ffn": s.ffn},
                         {"key": key, "lang": code, "tokens": s.tokens, "model": checksum})
    return sums


def steering_of(sr, inp: SteerInputs, sums: dict[str, tuple], ffns):
    """The :class:`~babelscope.steer.sweep.Steering` of the step (DiffMean directions from ``sums``, the LAPE
    neurons), its directions saved (rank 0) as ``directions.safetensors``."""
    from babelscope.runs import is_main_process
    from babelscope.steer.diffmean import language_directions
    from babelscope.steer.sweep import Steering
    from babelscope.tensorfiles import save_tensors

    codes, info = inp.codes, sr.model()[2]
    tokens = torch.tensor([sums[c][3] for c in codes], dtype=torch.float64)
    directions, mean_norms = language_directions(torch.stack([sums[c][0] for c in codes]),
                                                 torch.stack([sums[c][1] for c in codes]), tokens, sr.cfg.normalise)
    steering = Steering(sr.model()[0], ffns, codes, directions,
                        {c: (sums[c][2] / sums[c][3]).float() for c in codes}, inp.masks)
    if is_main_process():
        save_tensors(sr.path / "directions.safetensors",
                     {f"layer.{i}": directions[:, i] for i in range(inp.n_layers + 1)},
                     {"model": info.checksum, "model_name": info.name, "languages": codes,
                      "tokens": {c: sums[c][3] for c in codes}, "normalised": sr.cfg.normalise,
                      "mean_residual_norm": [float(x) for x in mean_norms], "corpus": inp.corpus.name,
                      "layers": inp.n_layers + 1, "sha": steering.directions_sha})
    return steering


def run(cfg: SteerConfig, run_dir, step: str = "steer", loaded=None) -> dict[str, Any]:
    """The ``babelscope steer`` step."""
    from tqdm.auto import tqdm

    from babelscope.data.languages import resolve_language
    from babelscope.data.views import SplitView
    from babelscope.evaluate.intervention import condition_checksum, perplexities
    from babelscope.neurons.ffn import ffn_modules
    from babelscope.runs import provenance
    from babelscope.steer.sweep import best_samples, ppl_cost, summarize, sweep
    from babelscope.steps import StepRun

    sr = StepRun(cfg, run_dir, step, loaded)
    inp = steer_inputs(sr)
    if (doc := sr.done(inputs=inp.inputs, write_config=False)) is not None:
        return doc
    model, tokenizer, info = sr.model("causal", "steering")
    if inp.masks and inp.nmeta.get("model") != info.checksum:
        raise BabelscopeError(f"{cfg.neurons_step}: LAPE neurons of another model; run `babelscope neurons find` "
                              f"with --model {cfg.model} first, or pass --neurons-step none")
    ffns = ffn_modules(model)
    sr.write_config()
    engine = sr.engine(cache=False, batch_size=cfg.batch_size, progress=False)
    sums = language_means(sr, engine, inp, ffns)
    steering = steering_of(sr, inp, sums, ffns)
    codes, targets = inp.codes, inp.targets

    def engine_for(*change: Any):  # the request cache knows the steered model by what was changed and how
        return sr.engine(checksum=condition_checksum(info.checksum, *change) if change else info.checksum,
                         batch_size=cfg.batch_size, progress=False)

    prompts = [prompt_of(t) for t in inp.refs[inp.source]]
    iso = {resolve_language(c).iso639_1: c for c in codes if resolve_language(c).iso639_1}
    lape_targets = steering.lape_targets(targets)
    total = len(targets) * len(inp.layers) * len(inp.alphas) + len(lape_targets) * len(inp.lape_alphas)
    with tqdm(total=total, desc="steer", unit="cond", leave=False, disable=not engine.is_main) as bar:
        conditions, samples = sweep(steering, prompts, targets, inp.layers, inp.alphas, inp.lape_alphas, inp.refs,
                                    iso, lambda change, p: engine_for(*change).generate(p, cfg.max_new_tokens),
                                    on_condition=lambda: bar.update(1))
    view = SplitView(inp.corpus, "test", cfg.test_fraction, cfg.seed)
    best_rows, ppl_rows = ppl_cost(steering, conditions, targets, lambda change: perplexities(
        engine_for(*change), view, codes, cfg.window, cfg.ppl_max_tokens))
    if not engine.is_main:
        return sr.wait()
    results = {"model": info.name, "model_checksum": info.checksum, "corpus": inp.corpus.name, "languages": codes,
               "source": inp.source, "targets": targets, "layers": inp.layers, "n_layers": inp.n_layers,
               "alphas": inp.alphas, "lape_alphas": inp.lape_alphas if lape_targets else [],
               "lape_targets": lape_targets, "prompts": len(prompts), "normalised": cfg.normalise,
               "directions_file": "directions.safetensors", "tokens": {c: sums[c][3] for c in codes},
               "summary": summarize(best_rows, conditions), "neurons_step": cfg.neurons_step if inp.masks else None}
    prov = provenance(model=info.to_dict(), detector="py3langid",
                      data={"corpus": inp.corpus.name, "prompt_units": inp.ids,
                            "units": {c: [u.id for u in inp.train[c]] for c in codes}})
    return sr.write(KIND, results, {"best": best_rows, "conditions": conditions, "ppl_cost": ppl_rows,
                                    "generations": best_samples(samples, best_rows)}, prov)
