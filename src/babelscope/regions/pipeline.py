"""The whole regions study as one experiment step (``command: regions``): importance, select, ablate, scan.

The four results land in ``<step>-importance``, ``<step>-select``, ``<step>-ablate`` and ``<step>-scan`` and
each is skipped when already done, so the pipeline resumes where it stopped.
"""

from __future__ import annotations

from typing import Any

from babelscope.regions.configs import RegionsConfig


def run(cfg: RegionsConfig, run_dir, step: str = "regions", loaded=None) -> dict[str, Any]:
    from babelscope.regions import ablate, importance, scan, select, steps
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
    steps.run_importance(
        importance.ImportanceConfig(langs=cfg.langs, max_tokens=cfg.max_tokens, **shared),
        run_dir,
        f"{step}-importance",
        loaded,
    )
    steps.run_select(
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
    steps.run_ablate(
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
    return steps.run_scan(
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
