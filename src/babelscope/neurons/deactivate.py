"""Perplexity with a language's neurons deactivated (Tang et al., ACL 2024, §3.2, Figure 3) and generations.

For every language ``a`` whose language-specific neurons are set to zero (a pre-hook on the down projections,
:func:`babelscope.neurons.ffn.deactivated`) and every evaluation language ``b``, the matrix entry is

    R_{a,b} = PPL_b(neurons of a off) / PPL_b(base)

on text held out (by unit id) from the text the activations were counted on. Perplexity is that of
:mod:`babelscope.evaluate.perplexity` (disjoint BOS-prefixed windows), scored by the shared engine with a
per-request cache keyed by the model *and* the neurons switched off, so an interrupted run resumes. The paper's
finding: the diagonal rises most. A row of random neurons (the same number per layer as the language's, seeded)
is the control. Greedy generations of a probe prompt in the language (and in English) show what is lost.
"""

from __future__ import annotations

from typing import Any

import torch

from babelscope.errors import BabelscopeError
from babelscope.neurons.configs import DeactivateConfig

KIND = "neurons-deactivation"


def random_like(mask: torch.Tensor, seed: int) -> dict[int, torch.Tensor]:
    """Random neurons with the same count per layer as ``mask`` (layers, neurons), seeded."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer, row in enumerate(mask):
        n = int(row.sum())
        if n:
            out[layer] = torch.randperm(row.numel(), generator=gen)[:n].sort().values
    return out


def run(cfg: DeactivateConfig, run_dir, step: str = "neurons-deactivate", loaded=None) -> dict[str, Any]:
    """The ``babelscope neurons deactivate`` step."""
    from tqdm.auto import tqdm

    from babelscope.caches import digest
    from babelscope.data.views import SplitView, language_codes, open_text_corpus
    from babelscope.evaluate.intervention import PROMPTS, condition_checksum, perplexities
    from babelscope.models.engine import Engine
    from babelscope.neurons.ffn import deactivated, ffn_modules
    from babelscope.neurons.lape import load_neurons, neuron_indices
    from babelscope.runs import Step, load_results, provenance, text_sha256
    from babelscope.steps import StepRun, results_sha256

    sr = StepRun(cfg, run_dir, step, loaded)
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
    if (doc := sr.done(inputs=inputs, write_config=False)) is not None:  # config: once the model passed
        return doc
    model, tokenizer, info = sr.model()
    if meta.get("model") != info.checksum:
        raise BabelscopeError(
            f"{src.path}: neurons found on another model ({str(meta.get('model'))[:12]}…); run "
            f"`babelscope neurons find` with --model {cfg.model} first"
        )
    ffns = ffn_modules(model)
    sr.write_config()
    mask_sha = {c: digest([m.numpy().tobytes()], 16) for c, m in masks.items()}

    def engine_for(*change: Any) -> Engine:
        checksum = condition_checksum(info.checksum, *change) if change else info.checksum
        return sr.engine(checksum=checksum, batch_size=cfg.batch_size, progress=False)  # every rank, in step

    def prompts_for(lang: str) -> list[str]:
        return [c for c in dict.fromkeys([lang, "eng"]) if c in PROMPTS]

    base_engine = engine_for()
    base = perplexities(base_engine, view, codes, cfg.window, cfg.max_tokens)
    conditions = [(lang, "lape") for lang in masks] + ([(lang, "random") for lang in masks] if cfg.random else [])
    rows, generations = [], []
    if cfg.generate:
        gen_codes = list(dict.fromkeys(c for lang in masks for c in prompts_for(lang)))
        outs = base_engine.generate([PROMPTS[c] for c in gen_codes], cfg.max_new_tokens)
        generations += [{"off": "base", "neurons": "-", "lang": c, "prompt": PROMPTS[c], "output": o}
                        for c, o in zip(gen_codes, outs, strict=True)]
    bar = tqdm(total=len(conditions), desc="deactivate", unit="set", leave=False, disable=not base_engine.is_main)
    with bar:
        for lang, which in conditions:
            off = neuron_indices(masks[lang]) if which == "lape" else random_like(masks[lang], cfg.seed)
            engine = engine_for("neurons-off", lang, which, mask_sha[lang], cfg.seed if which == "random" else None)
            with deactivated(ffns, off) as n:
                after = perplexities(engine, view, codes, cfg.window, cfg.max_tokens)
                if cfg.generate and which == "lape" and prompts_for(lang):
                    gen = prompts_for(lang)
                    outs = engine.generate([PROMPTS[c] for c in gen], cfg.max_new_tokens)
                    generations += [{"off": lang, "neurons": n, "lang": c, "prompt": PROMPTS[c], "output": o}
                                    for c, o in zip(gen, outs, strict=True)]
            for code in codes:
                ratio = after[code]["ppl"] / base[code]["ppl"] if base[code]["ppl"] else None
                rows.append({"off": lang, "neurons": which, "count": n, "lang": code, "ppl": after[code]["ppl"],
                             "base_ppl": base[code]["ppl"], "ratio": ratio, "tokens": after[code]["tokens"]})
            bar.update(1)
    if not base_engine.is_main:
        return sr.wait()
    matrix = []
    for lang in masks:
        mine = {r["lang"]: r["ratio"] for r in rows if r["off"] == lang and r["neurons"] == "lape"}
        matrix.append({"off": lang, **{c: mine.get(c) for c in codes}})
    diag = [r[r["off"]] for r in matrix if r["off"] in codes and r.get(r["off"]) is not None]
    offdiag = [r[c] for r in matrix for c in codes if c != r["off"] and r.get(c) is not None]
    rand = [r["ratio"] for r in rows if r["neurons"] == "random" and r["off"] == r["lang"] and r["ratio"]]
    summary = {
        "mean_diagonal_ratio": sum(diag) / len(diag) if diag else None,
        "mean_off_diagonal_ratio": sum(offdiag) / len(offdiag) if offdiag else None,
        "mean_random_diagonal_ratio": sum(rand) / len(rand) if rand else None,
        "diagonal_is_row_max": sum(
            1 for r in matrix if r["off"] in codes and r[r["off"]] is not None
            and r[r["off"]] >= max(v for c, v in r.items() if c != "off" and v is not None)
        ),
        "rows": len(matrix),
    }
    results = {"model": info.name, "corpus": view.name, "deactivated": list(masks), "evaluation_languages": codes,
               "neurons_step": cfg.neurons_step, "summary": summary}
    prov = provenance(model=info.to_dict(),
                      data={"corpus": view.name, "units": {c: [u.id for u in view.units(c)] for c in codes}})
    return sr.write(KIND, results, {"matrix": matrix, "per_language": rows, "generations": generations}, prov)
