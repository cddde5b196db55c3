"""The step runner and what it guarantees: caches keyed by everything that changes a result, finished steps
recomputed when their config or inputs change, non-finite scores refused, experiment files checked whole, bad
options refused before any model loads, resumable caches, normal file permissions, Ctrl-C."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from babelscope.errors import BabelscopeError
from babelscope.evaluate.perplexity import PplConfig
from babelscope.evaluate.perplexity import run as run_ppl
from conftest import SENTENCES, build_tiny


@pytest.fixture(scope="module")
def tiny():
    from babelscope.models.loader import describe

    model, tok = build_tiny("gemma3")
    return model, tok, describe(model, tok, "tiny", "memory")


def _no_load():
    pytest.fail("the model was loaded before the options were checked")


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"id": f"u{i}", "lang": lang, "text": (text + " ") * (i + 1)}
            for lang, text in zip(["eng", "fra"], SENTENCES[:2], strict=True) for i in range(2)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _nll(doc):
    return {r["lang"]: r["nll"] for r in doc["tables"]["per_language"]["rows"]}


# ------------------------------------------------------------------------------------------- cache keys
def test_dtype_rerun_in_the_same_run_dir_recomputes(tiny, corpus, tmp_path):
    """A bfloat16 re-run in a float32 run directory scores again (the old cache held float32 answers under
    the same key and reported them labelled bfloat16)."""
    model, tok, info = tiny
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    cfg = PplConfig(model="tiny", corpus=f"{corpus}#parallel=true", langs="en,fr", window=8)
    f32 = run_ppl(cfg, tmp_path / "a", loaded=lambda: (model, tok, info))
    cfg16 = PplConfig(**{**vars(cfg), "dtype": "bfloat16"})
    again = run_ppl(cfg16, tmp_path / "a", loaded=lambda: (bf16, tok, info))  # same checksum: the dtype differs
    fresh = run_ppl(cfg16, tmp_path / "b", loaded=lambda: (bf16, tok, info))
    assert _nll(again) == _nll(fresh)
    assert _nll(again) != _nll(f32)  # bfloat16 rounds: not the float32 numbers


def test_engine_identity_holds_dtype_device_and_tokenizer(tiny):
    from babelscope.models.engine import Engine

    model, tok, info = tiny
    base = Engine(model, tok, checksum=info.checksum, progress=False)
    other_tok = copy.deepcopy(tok)
    other_tok.add_tokens(["<extra-token>"])
    assert Engine(model, copy.deepcopy(tok), checksum=info.checksum).identity == base.identity  # same state
    assert Engine(model, other_tok, checksum=info.checksum).identity != base.identity
    assert Engine(copy.deepcopy(model).half(), tok, checksum=info.checksum).identity != base.identity
    assert Engine(model, tok, checksum="other weights").identity != base.identity


def test_judge_cache_keys_prompt_judge_and_max_tokens(monkeypatch):
    from babelscope.evaluate import judge as judge_mod
    from babelscope.evaluate.judge import OpenAIJudge, judge_all, judgment_key
    from babelscope.runs import RequestCache

    calls = []

    class Fake(OpenAIJudge):
        def __call__(self, messages):
            calls.append(messages)
            return "ACC: 1\nF: 1\nINFO: 1\nLC: 1\nH: 1"

    items = [{"instruction": "Say hi", "response": "hi", "reference": ""}]
    cache = RequestCache(None)
    judge = Fake("http://127.0.0.1:1/v1", "m1")
    judge_all(items, judge, cache, lambda it: judgment_key(judge, it))
    judge_all(items, judge, cache, lambda it: judgment_key(judge, it))
    assert len(calls) == 1  # cached
    judge.max_tokens = 8
    judge_all(items, judge, cache, lambda it: judgment_key(judge, it))
    other = Fake("http://127.0.0.1:1/v1", "m2")
    judge_all(items, other, cache, lambda it: judgment_key(other, it))
    monkeypatch.setattr(judge_mod, "JUDGE_PROMPT", judge_mod.JUDGE_PROMPT.replace("strict", "lenient"))
    judge_all(items, other, cache, lambda it: judgment_key(other, it))
    assert len(calls) == 4 and "lenient" in calls[-1][0]["content"]


# ------------------------------------------------------------------------------------------- finished steps
def test_changed_config_or_edited_corpus_recomputes(tiny, tmp_path):
    model, tok, info = tiny
    loaded = lambda: (model, tok, info)  # noqa: E731
    path = tmp_path / "eng.txt"
    path.write_text("One line of text.\nA second line.\n", encoding="utf-8")
    cfg = PplConfig(model="tiny", corpus=str(path), langs="all", window=8)
    first = run_ppl(cfg, tmp_path / "run", loaded=loaded)
    assert first["results"]["summary"]["units"] == 2
    prov = first["provenance"]  # the machine and the wall time of the run that wrote it, shown in the report
    assert prov["seconds"] >= 0 and prov["machine"]["cpu"] and prov["machine"]["torch_threads"] >= 1
    assert run_ppl(cfg, tmp_path / "run", loaded=_no_load)["provenance"] == first["provenance"]  # done: skipped
    path.write_text("One line of text.\nA second line.\nAnd a third one.\n", encoding="utf-8")
    edited = run_ppl(cfg, tmp_path / "run", loaded=loaded)
    assert edited["results"]["summary"]["units"] == 3  # the data checksum is compared, not only recorded
    fewer = run_ppl(PplConfig(**{**vars(cfg), "max_units": 1}), tmp_path / "run", loaded=loaded)
    assert fewer["results"]["summary"]["units"] == 1 and fewer["config"]["max_units"] == 1


def test_upstream_step_rerun_makes_downstream_recompute(tiny, tmp_path):
    from babelscope.regions import importance, select

    model, tok, info = tiny
    loaded = lambda: (model, tok, info)  # noqa: E731
    importance.run(importance.ImportanceConfig(langs="eng,fra", max_tokens=16, window=16), tmp_path, "imp", loaded)
    sel = select.run(select.SelectConfig(importance_step="imp", k="0.05", scope="tensor"), tmp_path, "sel")
    assert sel["results"]["languages"] == ["eng", "fra"]
    importance.run(importance.ImportanceConfig(langs="eng,deu", max_tokens=16, window=16), tmp_path, "imp", loaded)
    sel2 = select.run(select.SelectConfig(importance_step="imp", k="0.05", scope="tensor"), tmp_path, "sel")
    assert sel2["results"]["languages"] == ["eng", "deu"]  # same select config, new importance: recomputed


def test_non_finite_scores_fail_and_are_never_cached(tiny, corpus, tmp_path):
    model, tok, info = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))  # what float16 overflow does to the 270M model
    cfg = PplConfig(model="tiny", corpus=f"{corpus}#parallel=true", langs="en,fr", window=8, dtype="float16")
    with pytest.raises(BabelscopeError, match="float32"):
        run_ppl(cfg, tmp_path, loaded=lambda: (broken, tok, info))
    assert not (tmp_path / "ppl" / "results.json").exists()
    for cache in (tmp_path / "ppl" / "cache").glob("*.jsonl"):
        assert "NaN" not in cache.read_text() and "null" not in cache.read_text()
    fixed = run_ppl(PplConfig(**{**vars(cfg), "dtype": "float32"}), tmp_path, loaded=lambda: (model, tok, info))
    fresh = run_ppl(PplConfig(**{**vars(cfg), "dtype": "float32"}), tmp_path / "fresh",
                    loaded=lambda: (model, tok, info))
    assert _nll(fixed) == _nll(fresh)


def test_cut_cache_line_is_repaired_so_no_record_is_lost(tmp_path):
    from babelscope.runs import RequestCache

    path = tmp_path / "c.jsonl"
    RequestCache(path).put_many({"k1": [1.5, True, 3], "k2": "text"})
    with open(path, "a") as fh:
        fh.write('{"k": "k3", "v": [0.')  # killed mid-line
    again = RequestCache(path)
    assert len(again) == 2
    again.put_many({"k4": [2.5, False, 1]})
    RequestCache(path).put_many({"k5": "more"})
    final = RequestCache(path)
    assert {k: final[k] for k in ("k1", "k2", "k4", "k5")} and len(final) == 4
    assert all(json.loads(line) for line in path.read_text().splitlines())  # every line whole
    with pytest.raises(BabelscopeError, match="float32"):
        final.put_many({"k6": [float("nan"), True, 1]})
    assert "k6" not in RequestCache(path)


def test_results_files_get_normal_permissions(tmp_path):
    from babelscope.runs import Step

    old = os.umask(0o022)
    try:
        Step(tmp_path, "s").write_results("k", {}, {"x": 1}, {"rows": [{"a": 1}]})
    finally:
        os.umask(old)
    for name in ("results.json", "rows.csv"):
        assert stat.S_IMODE((tmp_path / "s" / name).stat().st_mode) == 0o644


def test_converted_steps_skip_recompute_and_refuse_without_writing(tiny, tiny_dir, tmp_path):
    """Steps written on the old contract, now on the runner: a finished step is skipped without loading the model
    or tokenizer, an edited corpus recomputes, and a refusal that needs the model leaves no step folder."""
    from babelscope.evaluate.tokens import TokensConfig
    from babelscope.evaluate.tokens import run as run_tokens
    from babelscope.lens.script import LensScriptConfig
    from babelscope.lens.script import run as run_lens

    model, tok, info = tiny
    loaded = lambda: (model, tok, info)  # noqa: E731
    path = tmp_path / "eng.txt"
    path.write_text("One line of text.\nA second line.\n", encoding="utf-8")
    cfg = LensScriptConfig(model="tiny", corpus=str(path), langs="all", max_tokens=8, window=8)
    first = run_lens(cfg, tmp_path / "run", loaded=loaded)
    assert run_lens(cfg, tmp_path / "run", loaded=_no_load)["provenance"] == first["provenance"]
    path.write_text("One line of text.\nAnother second line, longer.\n", encoding="utf-8")
    assert run_lens(cfg, tmp_path / "run", loaded=loaded)["provenance"] != first["provenance"]
    with pytest.raises(BabelscopeError, match="out of range"):
        run_lens(LensScriptConfig(**{**vars(cfg), "layers": "99"}), tmp_path / "run", "lens-bad", loaded=loaded)
    assert not (tmp_path / "run" / "lens-bad").exists()  # no config.yaml either: refused before the run started
    tcfg = TokensConfig(model=str(tiny_dir), corpus=str(path), langs="all", reference="", ud="none")
    doc = run_tokens(tcfg, tmp_path / "run")
    assert doc["results"]["tokenizers"][tiny_dir.name]["sha256"] and "tokenizer_sha256" not in doc["config"]
    assert run_tokens(tcfg, tmp_path / "run")["provenance"] == doc["provenance"]
    path.write_text("A third version.\n", encoding="utf-8")
    assert run_tokens(tcfg, tmp_path / "run")["results"]["summary"][tiny_dir.name]["tokens"] != doc["results"][
        "summary"][tiny_dir.name]["tokens"]


def test_not_counts_of_the_converted_configs():
    """Fields named like counts whose 0 means something (no clipping, no random control) are accepted."""
    from babelscope.neurons.overlap import OverlapConfig
    from babelscope.steps import check_config
    from babelscope.transfer.pretrain import PretrainConfig
    from babelscope.transfer.sft import SftConfig

    assert check_config(OverlapConfig(draws=0)).draws == 0
    assert check_config(PretrainConfig(max_grad_norm=0.0)).max_grad_norm == 0
    assert check_config(SftConfig(max_grad_norm=0.0)).max_grad_norm == 0
    with pytest.raises(BabelscopeError, match="--micro-batch-size 0"):
        check_config(SftConfig(micro_batch_size=0))


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("option", "value", "match"), [
    ("langs", "", "no language"), ("langs", " , ", "no language"), ("max_units", -1, "--max-units -1"),
    ("max_units", 0, "--max-units 0"), ("max_tokens", -5, "--max-tokens"), ("batch_size", 0, "--batch-size 0"),
    ("batch_size", -1, "--batch-size"), ("window", "big", "--window 'big': expected int"),
    ("dtype", "float8", "--dtype"),
])
def test_bad_options_refused_before_loading(corpus, tmp_path, option, value, match):
    cfg = PplConfig(model="tiny", corpus=str(corpus))
    setattr(cfg, option, value)
    with pytest.raises(BabelscopeError, match=match):
        run_ppl(cfg, tmp_path, loaded=_no_load)
    assert not (tmp_path / "ppl").exists()


def test_other_counts_step_name_device_and_run_dir(corpus, tmp_path, monkeypatch):
    from babelscope.evaluate.knowledge import BenchConfig
    from babelscope.evaluate.knowledge import run as run_bench
    from babelscope.evaluate.respond import RespondConfig
    from babelscope.evaluate.respond import run as run_respond

    with pytest.raises(BabelscopeError, match="--limit -1"):
        run_bench(BenchConfig(limit=-1), tmp_path, loaded=_no_load)
    with pytest.raises(BabelscopeError, match="--max-new-tokens"):
        run_respond(RespondConfig(max_new_tokens=-5), tmp_path, loaded=_no_load)
    with pytest.raises(BabelscopeError, match="--judge-url"):
        run_respond(RespondConfig(judge="openai", judge_url="127.0.0.1:9/v1", judge_api_model="m"), tmp_path,
                    loaded=_no_load)
    with pytest.raises(BabelscopeError, match="--step ''"):
        run_ppl(PplConfig(corpus=str(corpus)), tmp_path, step="", loaded=_no_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BabelscopeError, match="no CUDA"):
        run_ppl(PplConfig(corpus=str(corpus), device="cuda"), tmp_path, loaded=_no_load)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(BabelscopeError, match="is a file"):
        run_ppl(PplConfig(corpus=str(corpus)), afile, loaded=_no_load)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path / "ro") else real_access(p, m))
    (tmp_path / "ro").mkdir()
    with pytest.raises(BabelscopeError, match="not writable"):
        run_ppl(PplConfig(corpus=str(corpus)), tmp_path / "ro", loaded=_no_load)


def test_cli_run_dir_file_and_report_exit_2(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    for args in (["ppl", "--run-dir", str(afile)], ["report", str(afile)], ["report", str(tmp_path / "none")]):
        proc = subprocess.run([sys.executable, "-m", "babelscope.cli", *args], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    import typer

    from babelscope import cli

    app = typer.Typer()

    @app.command()
    def slow() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(sys, "argv", ["babelscope"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 130
    assert "interrupted; re-run the same command to resume" in capsys.readouterr().err


def test_bom_and_trailing_blank_lines(tmp_path):
    from babelscope.data import open_corpus

    (tmp_path / "eng.txt").write_text("\ufeffFirst line.\nSecond line.\n\n", encoding="utf-8")
    (tmp_path / "fra.txt").write_text("Première ligne.\nDeuxième ligne.\n", encoding="utf-8")
    corpus = open_corpus(str(tmp_path))
    assert corpus.parallel  # one trailing blank line does not make the folder non-parallel
    assert corpus.units("eng")[0].text == "First line."  # the byte-order mark is not text


# ------------------------------------------------------------------------------------------- experiment files
def _experiment(tmp_path, steps: str, defaults: str = "{model: tiny}") -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(f"run_dir: {tmp_path / 'run'}\ndefaults: {defaults}\nsteps:\n{steps}", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(("steps", "defaults", "match"), [
    ("  - {command: ppl, step: a}\n  - {command: nope}\n", "{model: tiny}", r"step 2 \(nope\): unknown command"),
    ("  - {command: ppl, step: a}\n  - {command: ppl, step: b, windw: 8}\n", "{model: tiny}", r"step 2.*windw"),
    ("  - {command: ppl, step: a}\n  - {command: ppl, step: a}\n", "{model: tiny}", "also step 1"),
    ("  - {command: ppl, step: a}\n  - {command: ppl, step: b, window: big}\n", "{model: tiny}",
     r"step 2 \(ppl\): --window 'big'"),
    ("  - {command: ppl}\n", "{model: tiny, modle: x}", r"defaults \['modle'\]"),
    ("  - {command: ppl, step: ''}\n", "{model: tiny}", "--step ''"),
    ("  - {command: ppl, max_units: -1}\n", "{model: tiny}", "--max-units -1"),
    ("  - {command: regions-ablate}\n", "{model: tiny}",
     r"step 1 \(regions-ablate\): .*regions-select/results.json: no results file"),  # and no select step before it
    ("  - {command: regions-importance}\n  - {command: regions-select}\n  - {command: regions-ablate, mode: melt}\n",
     "{model: tiny}", r"step 3 \(regions-ablate\): --mode 'melt'"),
    ("  - {command: ppl, step: a}\n  - {command: transfer-table, steps: 'a,b', labels: 'x (1, 2),y'}\n",
     "{model: tiny}", r"step 2 \(transfer-table\): --labels .*3 labels for 2 steps"),
])
def test_experiment_checked_whole_before_anything_runs(tmp_path, steps, defaults, match):
    from babelscope.experiment import run_file

    with pytest.raises(BabelscopeError, match=match):
        run_file(_experiment(tmp_path, steps, defaults))
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was written


def test_set_overrides_an_option_in_every_step(tmp_path):
    from babelscope.experiment import apply_overrides, load_experiment, plan

    path = _experiment(tmp_path, "  - {command: ppl, step: a}\n  - {command: ppl, step: b, window: 16}\n")
    doc = apply_overrides(path, load_experiment(path), ["model=other", "window=32"])
    steps = plan(path, doc)
    assert [s.cfg.model for s in steps] == ["other", "other"]
    assert [s.cfg.window for s in steps] == [32, 32]  # read as YAML (a number); over a step's own option too
    assert load_experiment(path)["steps"][1]["window"] == 16  # the file's document is not changed
    with pytest.raises(BabelscopeError, match=r"--set 'model': give KEY=VALUE"):
        apply_overrides(path, load_experiment(path), ["model"])
    with pytest.raises(BabelscopeError, match=r"--set 'step=c': a step's step is not an option"):
        apply_overrides(path, load_experiment(path), ["step=c"])
    with pytest.raises(BabelscopeError, match=r"defaults \['modle'\]"):  # the spelling check of defaults
        plan(path, apply_overrides(path, load_experiment(path), ["modle=x"]))


def test_yaml_keys_stay_words(tmp_path):
    """YAML 1.1 reads an ``off:`` key as False; `neurons deactivate --off` is an option."""
    from babelscope.experiment import load_experiment

    path = _experiment(tmp_path, "  - {command: neurons-deactivate, off: 'deu', random: no}\n")
    step = load_experiment(path)["steps"][0]
    assert step == {"command": "neurons-deactivate", "off": "deu", "random": False}  # values keep their types


def test_experiment_with_bom_and_registry_without_cli(tmp_path):
    from babelscope.experiment import load_experiment, plan

    path = tmp_path / "bom.yaml"
    path.write_text("\ufeffsteps:\n  - {command: ppl}\n", encoding="utf-8")
    assert plan(path, load_experiment(path))[0].step == "ppl"
    code = "import sys, babelscope.experiment as e; e.all_commands(); print('babelscope.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the experiment runner does not import the command line


def test_unreachable_judge_fails_loudly_and_keeps_the_responses(tiny, tmp_path):
    from babelscope.evaluate.respond import RespondConfig
    from babelscope.evaluate.respond import run as run_respond
    from babelscope.runs import load_results

    model, tok, info = tiny
    cfg = RespondConfig(instructions="embedded", limit=2, max_new_tokens=3, judge="openai",
                        judge_url="http://127.0.0.1:9/v1", judge_api_model="m", retries=0, timeout=5)
    with pytest.raises(BabelscopeError, match="2/2 judgments failed"):
        run_respond(cfg, tmp_path, loaded=lambda: (model, tok, info))
    rows = load_results(tmp_path / "respond")["tables"]["per_item"]["rows"]
    assert len(rows) == 2 and all(r["status"].startswith("failed") for r in rows)
    assert all(isinstance(r["response"], str) for r in rows)  # the responses are kept (and cached)
    with pytest.raises(BabelscopeError, match="2/2 judgments failed"):  # not counted as done: judged again
        run_respond(cfg, tmp_path, loaded=lambda: (model, tok, info))


def test_model_rewritten_at_the_same_path_recomputes(corpus, tmp_path):
    """A model directory whose weights were rewritten (e.g. further trained in place) is another model."""
    model_dir = tmp_path / "model"
    build_tiny("gemma3", model_dir, seed=0)
    cfg = PplConfig(model=str(model_dir), corpus=f"{corpus}#parallel=true", langs="en", window=8)
    first = run_ppl(cfg, tmp_path / "run")
    assert run_ppl(cfg, tmp_path / "run", loaded=_no_load)["provenance"] == first["provenance"]
    build_tiny("gemma3", model_dir, seed=1)
    second = run_ppl(cfg, tmp_path / "run")
    assert second["provenance"]["model"]["checksum"] != first["provenance"]["model"]["checksum"]
    assert _nll(second) != _nll(first)


def test_non_finite_importance_loss_is_refused(tiny, tmp_path):
    from babelscope.regions import importance

    model, tok, info = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.model.norm.weight.fill_(float("nan"))
    with pytest.raises(BabelscopeError, match="float32"):
        importance.run(importance.ImportanceConfig(langs="eng", max_tokens=16, window=16), tmp_path, "imp",
                       lambda: (broken, tok, info))
    assert not list((tmp_path / "imp").rglob("*.safetensors")) and not (tmp_path / "imp" / "results.json").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "examples").glob("*.yaml")))
def test_every_example_experiment_passes_the_full_check(name):
    """Every shipped experiment (the demo included) is checked whole before anything runs: commands, options,
    types, counts and language lists of every step, as `babelscope run` does first."""
    from babelscope.experiment import plan

    steps = plan(Path(__file__).parents[1] / "examples" / name)
    assert steps and len({s.step for s in steps}) == len(steps)


def test_run_dir_placeholder_follows_the_run_directory(tmp_path, monkeypatch):
    """`{run_dir}` in a step's (or the defaults') string values is the run directory of this run: the file's
    `run_dir`, or the one given to `babelscope run --run-dir`, so the demo's later steps read what its earlier
    steps wrote wherever the run goes, from any working directory."""
    from babelscope.experiment import plan

    demo = Path(__file__).parents[1] / "examples" / "demo.yaml"
    monkeypatch.chdir(tmp_path)  # another working directory
    by_step = {s.step: s.cfg for s in plan(demo)}
    assert by_step["tokens"].model == "gemma-3-270m,runs/demo/vocab/model"  # the file's run_dir
    assert by_step["respond-sft"].model == "runs/demo/sft/model"
    other = tmp_path / "elsewhere"
    by_step = {s.step: s.cfg for s in plan(demo, run_dir=other)}
    assert by_step["tokens"].model == f"gemma-3-270m,{other}/vocab/model"
    assert by_step["respond-sft"].model == f"{other}/sft/model"
    assert by_step["respond-sft"].judge_model == "gemma-3-270m"  # other values untouched
    zhao = {s.step: s.cfg for s in plan(demo.with_name("zhao2024.yaml"), run_dir=other)}
    assert zhao["sft-vocab-pt48"].train_tokens == f"{other}/vocab/model"
    assert zhao["respond-base"].instructions == f"{other}/sft-base/heldout.jsonl"
    freeze = {s.step: s.cfg for s in plan(demo.with_name("freeze.yaml"), run_dir=other)}
    assert freeze["pretrain-core"].freeze_region == f"{other}/regions-select/masks/top-k0.01-tensor.safetensors"
    for name in ("demo", "zhao2024", "freeze"):  # no example names its own run directory in a step
        text = demo.with_name(f"{name}.yaml").read_text(encoding="utf-8")
        assert f": runs/{name}/" not in text and f',runs/{name}/' not in text and f'"runs/{name}/' not in text
    # in the defaults too, and the placeholder may not be the run directory itself
    path = _experiment(tmp_path, "  - {command: ppl, corpus: \"{run_dir}/texts\"}\n", '{model: "{run_dir}/m"}')
    (cfg,) = [s.cfg for s in plan(path, run_dir="x/y")]
    assert (cfg.model, cfg.corpus) == ("x/y/m", "x/y/texts")
    with pytest.raises(BabelscopeError, match="cannot refer to"):
        plan(path, run_dir="{run_dir}/z")


@pytest.mark.parametrize("step", ["  - {command: ppl, model: {run_dir}/m}\n",
                                  "  - command: ppl\n    model: {run_dir}\n"])
def test_unquoted_run_dir_placeholder_says_to_quote_it(tmp_path, step):
    from babelscope.experiment import run_file

    with pytest.raises(BabelscopeError, match="quote"):
        run_file(_experiment(tmp_path, step))
    assert not (tmp_path / "run").exists()


def test_a_language_list_may_be_empty_where_the_config_says_so():
    from babelscope.steps import check_config
    from babelscope.transfer.vocab import VocabConfig

    check_config(VocabConfig(lang="tr", train="pud-sample", quality_langs=""))  # the target alone
    with pytest.raises(BabelscopeError, match="--check-langs"):
        check_config(VocabConfig(lang="tr", train="pud-sample", check_langs=" , "))


def test_finished_step_on_another_device_type_recomputes(tiny, corpus, tmp_path, monkeypatch):
    """``device`` is left out of the compared config (``cuda`` and ``cuda:1`` give the same numbers), but a result
    computed on another kind of device (other kernels) is not reused: the device type is one of the inputs."""
    import babelscope.steps as steps

    model, tok, info = tiny
    cfg = PplConfig(model="tiny", corpus=f"{corpus}#parallel=true", langs="en,fr", window=8)
    run_ppl(cfg, tmp_path / "run", loaded=lambda: (model, tok, info))
    assert run_ppl(cfg, tmp_path / "run", loaded=_no_load)  # same device type: finished, nothing loaded
    monkeypatch.setattr(steps, "device_type", lambda device: "cuda")
    calls = []
    run_ppl(cfg, tmp_path / "run", loaded=lambda: calls.append(1) or (model, tok, info))
    assert calls  # another device type: scored again


def test_plan_checks_each_steps_options_before_step_one(tmp_path):
    """A bad option of a later step (LAPE rate, overlap k, importance method) is refused while the experiment is
    planned, before step 1 runs."""
    import yaml

    from babelscope.errors import BabelscopeError
    from babelscope.experiment import run_file

    first = {"command": "tokens", "step": "tokens", "langs": "eng"}
    for later, message in [({"command": "neurons", "top_rate": 1.5}, "--top-rate 1.5"),
                           ({"command": "neurons-overlap", "k": 2.0}, "--k 2.0"),
                           ({"command": "regions-importance", "method": "nope"}, "--method 'nope'")]:
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "steps": [first, later]}))
        with pytest.raises(BabelscopeError, match=f"step 2 .*{message}"):
            run_file(path)
        assert not (tmp_path / "run").exists()
