"""``babelscope regions ...``: importance, select, ablate, scan-dims (Zhang et al. 2024). Import-light.

Each command's options are the fields of its step's config in :mod:`babelscope.regions.configs`."""

from __future__ import annotations

import typer

from babelscope.commands import Command, Results, StepFunction, command_table
from babelscope.options import print_results, results_table, step_command
from babelscope.regions.configs import AblateConfig, ImportanceConfig, RegionsConfig, ScanConfig, SelectConfig

app = typer.Typer(
    help="Linguistic regions (Zhang et al., ACL 2024): per-language parameter importance, Top/Bottom/Random-k "
    "regions, removal and dimension perturbation. Steps chain inside one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``), the objects the command line below mounts too.
IMPORTANCE_RESULTS = Results("regions-importance", "regions:importance_section")
SELECT_RESULTS = Results("regions-select", "regions:select_section")
ABLATION_RESULTS = Results("regions-ablation", "regions:ablation_section")
SCAN_RESULTS = Results("regions-scan", "regions:scan_section")
REGIONS = Command("regions", RegionsConfig, StepFunction("babelscope.regions.pipeline"),
                  (IMPORTANCE_RESULTS, SELECT_RESULTS, ABLATION_RESULTS, SCAN_RESULTS))  # one step folder each
REGIONS_IMPORTANCE = Command("regions-importance", ImportanceConfig,
                             StepFunction("babelscope.regions.steps", "run_importance"), (IMPORTANCE_RESULTS,),
                             StepFunction("babelscope.regions.importance", "plan_check"))
REGIONS_SELECT = Command("regions-select", SelectConfig, StepFunction("babelscope.regions.steps", "run_select"),
                         (SELECT_RESULTS,))
REGIONS_ABLATE = Command("regions-ablate", AblateConfig, StepFunction("babelscope.regions.steps", "run_ablate"),
                         (ABLATION_RESULTS,), StepFunction("babelscope.regions.steps", "plan_check_ablate"))
REGIONS_SCAN = Command("regions-scan", ScanConfig, StepFunction("babelscope.regions.steps", "run_scan"),
                       (SCAN_RESULTS,))
EXPERIMENT_COMMANDS = command_table(REGIONS, REGIONS_IMPORTANCE, REGIONS_SELECT, REGIONS_ABLATE, REGIONS_SCAN)

step_command(app, "importance", REGIONS_IMPORTANCE, step="regions-importance",
             show=results_table("per_language", ["lang", "name", "tokens", "ppl", "sum_abs_score"],
                                lambda doc, cfg: f"importance ({cfg.method})"),
             help="Per-language importance S = θ ⊙ ∂L/∂θ (one safetensors file per language) and Imp = Σ|S|.")

step_command(app, "select", REGIONS_SELECT, step="regions-select",
             show=results_table("regions", ["region", "k", "scope", "parameters", "norm_entries", "zero_importance",
                                            "file"], "regions"),
             help="Top-k / Bottom-k / Random-k and monolingual region masks, overlaps and the per-matrix table.")


def _show_ablate(doc: dict, cfg: AblateConfig, results_path) -> None:
    print_results(doc, doc["results"]["summary"], ["region", "k", "scope", "changed", "median_ratio",
                                                   "median_ratio_heldout_langs"], "perplexity after / before",
                  results_path)


step_command(app, "ablate", REGIONS_ABLATE, step="regions-ablate", show=_show_ablate,
             help="Perplexity per language with each region removed (Base / Top / Bottom / Random), and generations.")

step_command(app, "scan-dims", REGIONS_SCAN, step="regions-scan",
             show=results_table("dims", ["dim", "act_max", "act_rank", "ppl", "ratio", "broken"],
                                lambda doc, cfg: f"{doc['results']['norm']} ({cfg.mode}); base PPL "
                                f"{doc['results']['base_ppl']:.2f}", limit=20),
             help="Perturb each dimension of a norm's scale γ and flag those that break the model.")
