"""``babelscope lens ...``: the latent language per layer (Wendler et al. 2024) by the logit lens. Import-light.

Each command's options are the fields of its step's config in :mod:`babelscope.lens.configs`."""

from __future__ import annotations

import typer

from babelscope.commands import Command, Results, StepFunction, command_table
from babelscope.lens.configs import LensScriptConfig, LensTranslateConfig
from babelscope.options import results_table, step_command

app = typer.Typer(
    help="The latent language per layer (Wendler et al. 2024, 'Do Llamas Work in English?'): each layer's "
    "residual stream decoded through the model's own final norm and unembedding (the logit lens).",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``), the objects the command line below mounts too.
LENS_TRANSLATE = Command("lens-translate", LensTranslateConfig, StepFunction("babelscope.lens.steps", "run_translate"),
                         (Results("lens-translation", "lens:translation_section"),))
LENS_SCRIPT = Command("lens-script", LensScriptConfig, StepFunction("babelscope.lens.steps", "run_script"),
                      (Results("lens-script", "lens:script_section"),))
EXPERIMENT_COMMANDS = command_table(LENS_TRANSLATE, LENS_SCRIPT)

step_command(app, "translate", LENS_TRANSLATE, step="lens-translate",
             show=results_table("summary", ["lang", "items", "dropped_overlap", "english_peak_layer",
                                            "english_peak_p", "final_p_target", "final_top1"],
                                "logit lens: translation"),
             help="Per layer, the lens probability of the translation vs of its English word (items with overlapping "
             "token sets dropped).")

step_command(app, "script", LENS_SCRIPT, step="lens-script",
             show=results_table("summary", ["lang", "script", "positions", "latin_first", "latin_peak_layer",
                                            "latin_peak_share", "latin_final", "own_final"], "logit lens: scripts"),
             help="Per layer, the share of the lens distribution on Latin-script tokens, the text's own script and "
             "others.")
