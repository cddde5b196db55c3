"""Config fields declare their constraints (babelscope.fields.opt) and check_config checks them; configs import
no command-line library."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from babelscope.errors import BabelscopeError
from babelscope.fields import opt
from babelscope.steps import check_config


def test_declared_constraints_replace_the_name_defaults():
    from babelscope.neurons.configs import OverlapConfig
    from babelscope.transfer.configs import PretrainConfig, VocabConfig

    assert check_config(OverlapConfig(draws=0)).draws == 0  # 0 = no random control
    with pytest.raises(BabelscopeError, match="--draws -1: must be 0 or more"):
        check_config(OverlapConfig(draws=-1))
    assert check_config(PretrainConfig(max_grad_norm=0.0)).max_grad_norm == 0  # 0 = no clipping
    assert check_config(VocabConfig(quality_langs="")).quality_langs == ""
    with pytest.raises(BabelscopeError, match="no language given"):
        check_config(VocabConfig(check_langs=" , "))


def test_minimum_may_be_empty_and_choices():
    @dataclass
    class Demo:
        max_items: int = opt(3, "A count by its name: positive.")
        floor: float = opt(0.5, "A declared minimum.", minimum=0.25)
        langs: str = opt("eng", "A language list.")
        mode: str = opt("a", "A closed set.", choices=("a", "b"))

    check_config(Demo())
    with pytest.raises(BabelscopeError, match="--max-items 0: must be a positive number"):
        check_config(Demo(max_items=0))
    with pytest.raises(BabelscopeError, match="--floor 0.1: must be 0.25 or more"):
        check_config(Demo(floor=0.1))
    with pytest.raises(BabelscopeError, match="--langs '': no language given"):
        check_config(Demo(langs=""))
    with pytest.raises(BabelscopeError, match="--mode 'c': use one of a, b"):
        check_config(Demo(mode="c"))


def test_configs_import_no_command_line_library():
    code = ("import sys, babelscope.regions.configs, babelscope.neurons.configs, babelscope.transfer.configs, "
            "babelscope.syntax.configs, babelscope.lens.configs; print('typer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
