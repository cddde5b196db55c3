"""``babelscope neurons ...``: language-specific neurons (Tang et al., ACL 2024). Import-light.

Each command's options are the fields of its step's config in :mod:`babelscope.neurons.configs`."""

from __future__ import annotations

from pathlib import Path

import typer

from babelscope.commands import Command, Results, StepFunction, command_table
from babelscope.neurons.configs import DeactivateConfig, NeuronsConfig, OverlapConfig, PlndConfig
from babelscope.options import results_table, step_command

app = typer.Typer(
    help="Language-specific neurons (Tang et al., ACL 2024): activation probabilities of every FFN neuron per "
    "language, LAPE selection, deactivation perplexities and generations, and the overlap with the linguistic "
    "regions. Steps chain inside one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``), the objects the command line below mounts too.
NEURONS = Command("neurons", NeuronsConfig, StepFunction("babelscope.neurons.steps", "run_find"),
                  (Results("neurons", "neurons:neurons_section"),),
                  StepFunction("babelscope.neurons.lape", "plan_check"))
NEURONS_DEACTIVATE = Command("neurons-deactivate", DeactivateConfig,
                             StepFunction("babelscope.neurons.steps", "run_deactivate"),
                             (Results("neurons-deactivation", "neurons:deactivation_section"),))
NEURONS_OVERLAP = Command("neurons-overlap", OverlapConfig, StepFunction("babelscope.neurons.steps", "run_overlap"),
                          (Results("neurons-overlap", "neurons:overlap_section"),),
                          StepFunction("babelscope.neurons.overlap", "plan_check"))
NEURONS_PLND = Command("neurons-plnd", PlndConfig, StepFunction("babelscope.neurons.steps", "run_plnd"),
                       (Results("neurons-plnd", "neurons:plnd_section"),))
EXPERIMENT_COMMANDS = command_table(NEURONS, NEURONS_DEACTIVATE, NEURONS_OVERLAP, NEURONS_PLND)

step_command(app, "find", NEURONS, step="neurons",
             show=results_table("per_language", ["lang", "name", "tokens", "neurons", "only_this_language"],
                                "language-specific neurons", limit=60),
             help="Activation probability of every FFN neuron per language, LAPE, and the language-specific neurons.")


def _show_matrix(doc: dict, cfg: DeactivateConfig, results_path: Path) -> None:
    columns = ["off", *doc["results"]["evaluation_languages"]]
    results_table("matrix", columns, "perplexity ratio (neurons off / base)", limit=60)(doc, cfg, results_path)


step_command(app, "deactivate", NEURONS_DEACTIVATE, step="neurons-deactivate",
             show=_show_matrix,
             help="Perplexity matrix (rows: language whose neurons are off, columns: language evaluated, ratio to "
             "base).")

step_command(app, "overlap", NEURONS_OVERLAP, step="neurons-overlap",
             show=results_table("overlap", ["lang", "region", "neurons", "weight_share", "weight_random_layer_matched",
                                            "weight_p_layer_matched", "weight_random_active", "weight_p_active"],
                                "LAPE neurons in the regions", limit=60),
             help="How much of each language's LAPE neurons the rows/columns of its Top-k region touch, against "
             "random.")

step_command(app, "plnd", NEURONS_PLND, step="neurons-plnd",
             show=results_table("per_language", ["lang", "name", "documents", "tokens", "neurons",
                                                 "only_this_language"], "PLND language neurons", limit=60),
             help="Parallel language-specific neuron detection (Zhao et al., NeurIPS 2024): each FFN neuron's "
             "importance |a_j| x ||W_down[:, j]|| for all neurons of a layer in one pass, the neurons consistently "
             "important for a language, and their overlap with LAPE neurons and regions against random sets. "
             "`neurons deactivate --neurons-step neurons-plnd` switches them off.")
