"""``babelscope lens ...``: the latent language per layer (Wendler et al. 2024) by the logit lens. Import-light."""

from __future__ import annotations

from typing import Annotated

import typer

from babelscope.options import Device, Dtype, Model, RunDir, config_from, print_results, run_dir_for

app = typer.Typer(
    help="The latent language per layer (Wendler et al. 2024, 'Do Llamas Work in English?'): each layer's "
    "residual stream decoded through the model's own final norm and unembedding (the logit lens).",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``): name -> "module:ConfigClass:run".
EXPERIMENT_COMMANDS = {
    "lens-translate": "babelscope.lens.translate:LensTranslateConfig:run",
    "lens-script": "babelscope.lens.script:LensScriptConfig:run",
}

Layers = Annotated[str, typer.Option(help="all, or layers like 0,4,8-12 (0 = embeddings, i = output of block i).")]
Batch = Annotated[int, typer.Option(help="Sequences per forward pass.")]


def _show(doc: dict, columns: list[str], title: str, out, step: str) -> None:
    rows = doc["tables"]["summary"]["rows"] if doc else []
    print_results(doc, rows, columns, title, out / step / "results.json")


@app.command("translate")
def translate_cmd(
    model: Model = "gemma-3-270m",
    words: Annotated[
        str, typer.Option(help="TSV word list (concept + one column per language), or 'embedded' (52 nouns).")
    ] = "embedded",
    source: Annotated[str, typer.Option(help="Language of the words in the prompt.")] = "fra",
    targets: Annotated[
        str, typer.Option(help="Comma-separated target languages (columns of the word list).")
    ] = "cmn-Hans,jpn,kor,rus,arb,hin",
    shots: Annotated[int, typer.Option(help="Demonstrations before the query.")] = 4,
    layers: Layers = "all",
    max_items: Annotated[int | None, typer.Option(help="At most this many concepts per target.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the demonstrations' choice.")] = 0,
    batch_size: Batch = 16,
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "lens-translate",
) -> None:
    """Per layer, the lens probability of the translation vs of its English word (items with overlapping
    token sets dropped)."""
    from babelscope.lens.translate import LensTranslateConfig, run

    cfg = config_from(LensTranslateConfig, locals())
    out = run_dir_for(run_dir, model)
    _show(run(cfg, out, step=step), ["lang", "items", "dropped_overlap", "english_peak_layer", "english_peak_p",
                                     "final_p_target", "final_top1"], "logit lens: translation", out, step)


@app.command("script")
def script_cmd(
    model: Model = "gemma-3-270m",
    corpus: Annotated[str, typer.Option(help="udhr-sample (embedded), udhr, pud or a text file.")] = "udhr-sample",
    langs: Annotated[
        str, typer.Option(help="Comma-separated (non-Latin-script) languages to read.")
    ] = "cmn-Hans,jpn,kor,rus,arb,hin",
    max_tokens: Annotated[int, typer.Option(help="Positions decoded per language.")] = 256,
    window: Annotated[int, typer.Option(help="Tokens per window; each starts with BOS.")] = 256,
    layers: Layers = "all",
    batch_size: Batch = 4,
    dtype: Dtype = "float32",
    device: Device = None,
    run_dir: RunDir = None,
    step: Annotated[str, typer.Option(help="Step folder name.")] = "lens-script",
) -> None:
    """Per layer, the share of the lens distribution on Latin-script tokens, the text's own script and others."""
    from babelscope.lens.script import LensScriptConfig, run

    cfg = config_from(LensScriptConfig, locals())
    out = run_dir_for(run_dir, model)
    _show(run(cfg, out, step=step), ["lang", "script", "positions", "latin_first", "latin_peak_layer",
                                     "latin_peak_share", "latin_final", "own_final"], "logit lens: scripts", out,
          step)
