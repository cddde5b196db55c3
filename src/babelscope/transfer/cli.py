"""``babelscope transfer ...``: vocabulary extension, further pretraining, instruction tuning. Import-light."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Language capability transfer (Zhao et al. 2024; Zhang et al. 2024): extend the vocabulary, "
    "further pretrain (with forgetting curves and region freezing), instruction-tune. Steps chain in one run directory.",
    no_args_is_help=True,
)

#: Experiment commands (``babelscope run EXPERIMENT.yaml``): name -> "module:ConfigClass:run".
EXPERIMENT_COMMANDS: dict[str, str] = {}

# ------------------------------------------------------------------------------------------- vocabulary (vocab)


# ------------------------------------------------------------------------------------- further pretraining (pretrain)


# --------------------------------------------------------------------------------------- instruction tuning (sft)
