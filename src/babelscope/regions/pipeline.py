"""The whole regions study as one experiment step (``command: regions``): importance, select, ablate, scan.

The four results land in ``<step>-importance``, ``<step>-select``, ``<step>-ablate`` and ``<step>-scan`` and
each is skipped when already done, so the pipeline resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from babelscope.regions.ablate import EVAL_LANGS


@dataclass
class RegionsConfig:
    model: str = "gemma-3-270m"
    corpus: str = "udhr-sample"
    langs: str = "eng,fra,deu,spa,rus,cmn-Hans"  # importance languages
    max_tokens: int = 2048  # importance tokens per language
    eval_langs: str = EVAL_LANGS
    eval_max_tokens: int | None = None
    k: str = "0.01,0.03"
    scope: str = "tensor,global"
    monolingual: bool = True
    skip_zeros: bool = True  # Bottom-k / Random-k among weights with Imp > 0 (see regions.select)
    generate: bool = True
    gen_langs: str = "eng,cmn-Hans,fra,deu,spa,rus,jpn,arb"
    max_new_tokens: int = 16
    scan_langs: str = "eng,fra,deu,cmn-Hans,rus"
    scan_layer: int = 1
    scan_norm: str = "post_attention_layernorm"
    scan_mode: str = "zero"
    scan_dims: str = "quick"
    scan_top_n: int = 8
    scan_max_tokens: int | None = 128
    window: int = 512
    batch_size: int = 4
    dtype: str = "float32"
    device: str | None = None


def run(cfg: RegionsConfig, run_dir, step: str = "regions", loaded=None) -> dict[str, Any]:
    from babelscope.regions import ablate, importance, scan, select
    from babelscope.runs import check_step_name
    from babelscope.steps import check_config

    check_config(cfg)
    check_step_name(step)
    shared = {
        "model": cfg.model,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "window": cfg.window,
        "batch_size": cfg.batch_size,
        "corpus": cfg.corpus,
    }
    importance.run(
        importance.ImportanceConfig(langs=cfg.langs, max_tokens=cfg.max_tokens, **shared),
        run_dir,
        f"{step}-importance",
        loaded,
    )
    select.run(
        select.SelectConfig(
            importance_step=f"{step}-importance",
            k=cfg.k,
            scope=cfg.scope,
            monolingual=cfg.monolingual,
            skip_zeros=cfg.skip_zeros,
        ),
        run_dir,
        f"{step}-select",
        loaded,
    )
    ablate.run(
        ablate.AblateConfig(
            select_step=f"{step}-select",
            langs=cfg.eval_langs,
            k=cfg.k,
            scope=cfg.scope,
            max_tokens=cfg.eval_max_tokens,
            generate=cfg.generate,
            gen_langs=cfg.gen_langs,
            max_new_tokens=cfg.max_new_tokens,
            **shared,
        ),
        run_dir,
        f"{step}-ablate",
        loaded,
    )
    return scan.run(
        scan.ScanConfig(
            langs=cfg.scan_langs,
            layer=cfg.scan_layer,
            norm=cfg.scan_norm,
            mode=cfg.scan_mode,
            dims=cfg.scan_dims,
            top_n=cfg.scan_top_n,
            max_tokens=cfg.scan_max_tokens,
            **shared,
        ),
        run_dir,
        f"{step}-scan",
        loaded,
    )
