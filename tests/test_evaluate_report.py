"""The evaluation report sections, rendered from real step results (tiny model, no mocks)."""

from __future__ import annotations

import json

from babelscope.evaluate.codeswitch import CodeSwitchConfig
from babelscope.evaluate.codeswitch import run as run_codeswitch
from babelscope.evaluate.knowledge import BenchConfig
from babelscope.evaluate.knowledge import run as run_bench
from babelscope.evaluate.pos import PosConfig
from babelscope.evaluate.pos import run as run_pos
from babelscope.evaluate.respond import RespondConfig
from babelscope.evaluate.respond import run as run_respond
from babelscope.models.loader import ModelInfo
from babelscope.report import render_report
from conftest import build_tiny


def test_sections_render_from_results(tmp_path):
    model, tok = build_tiny("gemma3")
    info = ModelInfo("tiny", "tiny", "causal", "gemma3_text", 1, 3, 32, len(tok), "abc", "memory", "float32")
    loaded = lambda: (model, tok, info)  # noqa: E731
    run_bench(BenchConfig(benchmark="xcopa", subsets="it,sw", path="embedded/xcopa-sample.jsonl", limit=4),
              tmp_path, "bench-xcopa", loaded=loaded)
    run_respond(RespondConfig(limit=2, max_new_tokens=3, judge="local", judge_max_tokens=3, pipeline_check=True),
                tmp_path, "respond", loaded=loaded)
    responses = tmp_path / "r.jsonl"
    responses.write_text(json.dumps({"id": "1", "lang": "zh", "response": "这是 deep learning 的例子。"},
                                    ensure_ascii=False) + "\n", encoding="utf-8")
    run_codeswitch(CodeSwitchConfig(responses=str(responses)), tmp_path, "codeswitch")
    run_pos(PosConfig(langs="de", treebanks="embedded", shots=1, runs=2, queries=1, max_words=12), tmp_path, "pos",
            loaded=loaded)
    html = render_report(tmp_path).read_text(encoding="utf-8")
    for title in ["xcopa (0-shot) on tiny", "Response quality of tiny judged by tiny (local)",
                  "Code-switching rate of gemma-3-270m", "In-context POS tagging with tiny",
                  "Pipeline check, not a quality measure"]:
        assert title in html, title
    assert html.count("<figure>") >= 3
    assert "deep learning [Latn]" in html
