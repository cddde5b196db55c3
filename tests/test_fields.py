"""Config fields declare their constraints (babelscope.fields.opt) and check_config checks them; configs import
no command-line library."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import types
import typing
from dataclasses import dataclass
from typing import Any

import pytest

from babelscope.errors import BabelscopeError
from babelscope.fields import count, languages, limits, opt
from babelscope.steps import check_config


def test_declared_constraints_are_checked():
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
        max_items: int = count(3, "A count: positive.")
        floor: float = opt(0.5, "A declared minimum.", minimum=0.25)
        langs: str = languages("eng", "A language list.")
        mode: str = opt("a", "A closed set.", choices=("a", "b"))
        max_other: int = opt(0, "Named like a count, declares nothing: nothing is checked.")
        other_langs: str = opt("", "Named like a language list, declares nothing.")

    check_config(Demo())
    check_config(Demo(max_other=-3, other_langs=""))  # a field's name gives it no constraint
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


# ------------------------------------------------------------------------- every command's config fields
def _table_configs() -> dict[str, type]:
    from babelscope.registry import all_commands

    return {name: cmd.config for name, cmd in sorted(all_commands().items())}


def _fields(config: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(config)
    return [(f, hints[f.name]) for f in dataclasses.fields(config)]


def _allows(hint: Any) -> set[type]:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return {a for a in args if isinstance(a, type)} - {type(None)}


#: (command, field): (minimum, may_be_empty), as the name rules that fields.py used to apply gave them
EXPECTED = {
    ("ppl", "window"): (1, True), ("ppl", "max_tokens"): (1, True), ("ppl", "batch_size"): (1, True),
    ("ppl", "langs"): (None, False), ("transfer-pretrain", "seed"): (None, True), ("pos", "shots"): (0, True),
    ("respond", "retries"): (0, True), ("respond", "judge_max_tokens"): (1, True),
    ("neurons-overlap", "draws"): (0, True), ("locate", "draws"): (1, True),
    ("syntax-otdd", "mantel_perm"): (1, True), ("syntax-rsa", "n_perm"): (1, True),
    ("syntax-meta", "min_count"): (1, True), ("syntax-meta", "test_langs"): (None, False),
    ("transfer-pretrain", "max_grad_norm"): (0, True), ("transfer-pretrain", "eval_batch_size"): (1, True),
    ("transfer-pretrain", "ssu_langs"): (None, False), ("transfer-sft", "micro_batch_size"): (1, True),
    ("transfer-vocab", "quality_langs"): (None, True), ("transfer-vocab", "check_langs"): (None, False),
    ("regions", "scan_top_n"): (1, True), ("codeswitch", "min_letters"): (1, True),
}


def test_table_fields_declare_the_expected_constraints():
    configs = _table_configs()
    for (command, name), (minimum, may_be_empty) in EXPECTED.items():
        field = configs[command].__dataclass_fields__[name]
        got = limits(field)
        assert (got.minimum, got.may_be_empty) == (minimum, may_be_empty), (command, name, got)


#: the names that mark an int field as a count of things (the rules fields.py used to apply, kept as a check)
COUNT_LIKE = re.compile(r"^max_|_max_|batch_size$|(^|_)(window|limit|samples|draws|queries|runs|top_n|n_perm|"
                        r"perm|shots|retries|min_count|min_words|min_letters)$")


def test_no_count_field_skips_its_minimum():
    """A new int field named like a count (max_*, *_batch_size, window, samples ...) states its minimum (count(),
    or opt(..., minimum=)): fields.py no longer infers one from the name. A minimum is stated only on numbers
    (check_config checks it only there), and every language list says whether it may be empty."""
    missing, on_text, lists = [], [], []
    for command, config in _table_configs().items():
        for field, hint in _fields(config):
            allowed, got = _allows(hint), limits(field)
            if int in allowed and COUNT_LIKE.search(field.name) and got.minimum is None:
                missing.append(f"{command}.{field.name}")
            if got.minimum is not None and not allowed & {int, float}:
                on_text.append(f"{command}.{field.name}")
            if (field.name == "langs" or field.name.endswith("_langs")) and got.may_be_empty \
                    and (command, field.name) not in {("transfer-vocab", "quality_langs")}:
                lists.append(f"{command}.{field.name}")
    assert not missing, f"count fields without a minimum: {missing}"
    assert not on_text, f"a minimum on a field that is not a number: {on_text}"
    assert not lists, f"language lists that may be empty without saying so: {lists}"
