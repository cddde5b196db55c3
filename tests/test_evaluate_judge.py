"""Judge pipeline end to end against a real OpenAI-compatible server (ours, backed by transformers) on localhost."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from babelscope.errors import BabelscopeError
from babelscope.evaluate.judge import JudgeError, OpenAIJudge, judge_all, parse_scores
from babelscope.evaluate.judge_server import make_server
from babelscope.evaluate.respond import RespondConfig, run
from babelscope.models.loader import ModelInfo
from babelscope.runs import RequestCache
from conftest import build_tiny


def serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny("gemma3")
    info = ModelInfo("tiny", "tiny", "causal", "gemma3_text", 1, 3, 32, len(tok), "abc", "memory", "float32")
    return model, tok, info


@pytest.fixture(scope="module")
def tiny_server(tiny):
    model, tok, _ = tiny
    server = make_server(model, tok, "tiny")
    url = serve(server)
    yield url
    server.shutdown()


class Flaky(BaseHTTPRequestHandler):
    """Answers 503 to the first ``fails`` requests, sleeps ``delay`` s, then forwards to the real server."""

    fails = 0
    delay = 0.0
    target = ""
    seen_auth: list[str] = []

    def log_message(self, *args):
        return

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen_auth.append(self.headers.get("Authorization", ""))
        if type(self).fails > 0:
            type(self).fails -= 1
            self.send_response(503)
            self.end_headers()
            return
        time.sleep(type(self).delay)
        req = urllib.request.Request(type(self).target + "/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req) as resp:
                data = resp.read()
        except OSError:  # the test has finished and the real server is gone
            self.send_response(502)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def flaky(tiny_server):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    Flaky.target, Flaky.fails, Flaky.delay, Flaky.seen_auth = tiny_server, 0, 0.0, []
    url = serve(server)
    yield url
    server.shutdown()


def test_parse_scores_is_robust():
    want = {"ACC": 2, "F": 3, "INFO": 1, "LC": 2, "H": 3}
    assert parse_scores("ACC: 2\nF: 3\nINFO: 1\nLC: 2\nH: 3") == want
    assert parse_scores('Sure! {"ACC": 2, "F": 3, "INFO": 1, "LC": 2, "H": 3}') == want
    assert parse_scores("accuracy = 2; fluency: 3, informativeness: 1, logical coherence: 2, harmlessness：3") == want
    assert parse_scores("ACC: 4\nF: 3\nINFO: 1\nLC: 2\nH: 3") is None  # out of range
    assert parse_scores("ACC: 2 F: 3") is None and parse_scores("") is None


def test_server_speaks_openai_chat(tiny_server):
    with urllib.request.urlopen(tiny_server + "/models") as resp:
        assert json.loads(resp.read())["data"][0]["id"] == "tiny"
    text = OpenAIJudge(tiny_server, "tiny", max_tokens=5)([{"role": "user", "content": "Hello"}])
    assert isinstance(text, str) and text  # a real (random-weight) model's greedy continuation


def test_respond_step_end_to_end_keeps_raw_output_and_resumes(tiny, tiny_server, tmp_path, monkeypatch):
    model, tok, info = tiny
    monkeypatch.setenv("BS_TEST_KEY", "sk-secret-123")
    cfg = RespondConfig(instructions="embedded", limit=3, max_new_tokens=4, judge="openai", judge_url=tiny_server,
                        judge_api_model="tiny", api_key_env="BS_TEST_KEY", timeout=30, retries=1)
    doc = run(cfg, tmp_path, "respond", loaded=lambda: (model, tok, info))
    rows = doc["tables"]["per_item"]["rows"]
    assert len(rows) == 3 and all(r["status"] in ("ok", "unparsed") for r in rows)
    assert all(r["judge_raw"] for r in rows)  # the raw judge output is kept with each score
    cache_file = tmp_path / "respond" / "cache" / "judgments.jsonl"
    assert len(cache_file.read_text().splitlines()) == 3
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert "sk-secret-123" not in path.read_text(errors="ignore")  # the key is never stored
    again = run(cfg, tmp_path, "respond", loaded=lambda: pytest.fail("finished step reloaded its model"))
    assert again["tables"]["per_item"]["rows"] == rows


def test_retries_on_5xx_and_sends_key(flaky, monkeypatch):
    monkeypatch.setenv("BS_TEST_KEY", "sk-abc")
    Flaky.fails = 2
    judge = OpenAIJudge(flaky, "tiny", api_key_env="BS_TEST_KEY", retries=3, backoff=0.01, max_tokens=3)
    assert isinstance(judge([{"role": "user", "content": "Hi"}]), str)
    assert len(Flaky.seen_auth) == 3 and set(Flaky.seen_auth) == {"Bearer sk-abc"}


def test_failures_are_recorded_and_judgments_kept(flaky, tmp_path):
    cache = RequestCache(tmp_path / "j.jsonl")
    items = [{"id": str(i), "instruction": f"Q{i}", "response": "A", "reference": "R"} for i in range(3)]
    ok = OpenAIJudge(flaky, "tiny", retries=0, max_tokens=3)
    first = judge_all(items[:2], ok, cache, lambda it: it["id"])
    assert [r["status"] in ("ok", "unparsed") for r in first] == [True, True]
    Flaky.delay = 2.0
    slow = OpenAIJudge(flaky, "tiny", timeout=0.5, retries=1, backoff=0.01)
    out = judge_all(items, slow, cache, lambda it: it["id"])
    assert out[0]["raw"] == first[0]["raw"] and out[1]["raw"] == first[1]["raw"]  # cached, not re-asked
    assert out[2]["status"].startswith("failed: no answer") and "2 tries" in out[2]["status"]
    down = OpenAIJudge("http://127.0.0.1:9/v1", "x", timeout=2, retries=1, backoff=0.01)
    with pytest.raises(JudgeError, match="no answer from http://127.0.0.1:9/v1"):
        down([{"role": "user", "content": "x"}])
    assert len(RequestCache(tmp_path / "j.jsonl")) == 2


def test_garbage_and_bad_requests(tiny_server):
    garbage = judge_all([{"id": "g", "instruction": "Q", "response": "A", "reference": "R"}],
                        lambda messages: "I cannot score this, sorry!!", RequestCache(None), lambda it: it["id"])
    assert garbage[0]["status"] == "unparsed" and garbage[0]["scores"] is None
    with pytest.raises(JudgeError, match="HTTP 404"):
        OpenAIJudge(tiny_server.replace("/v1", "/nope"), "tiny", retries=0)([{"role": "user", "content": "x"}])


def test_openai_judge_needs_url(tmp_path):
    with pytest.raises(BabelscopeError, match="--judge-url"):
        run(RespondConfig(judge="openai"), tmp_path, "respond", loaded=lambda: pytest.fail("loaded"))


@pytest.mark.slow
def test_real_model_served_and_judging(default_model, tmp_path):
    """The embedded default model answers our instructions and judges them through the HTTP server."""
    from babelscope.evaluate.codeswitch import CodeSwitchConfig
    from babelscope.evaluate.codeswitch import run as run_codeswitch

    model, tok, info = default_model
    server = make_server(model, tok, info.name)
    url = serve(server)
    try:
        cfg = RespondConfig(instructions="embedded", langs="zh,de", max_new_tokens=16, judge="openai",
                            judge_url=url, judge_api_model=info.name, timeout=300, retries=1, pipeline_check=True)
        doc = run(cfg, tmp_path, "respond", loaded=lambda: default_model)
    finally:
        server.shutdown()
    rows = doc["tables"]["per_item"]["rows"]
    assert [r["lang"] for r in rows] == ["zh", "zh", "de"]
    # the 270M base model sometimes ends its turn at once (an empty answer); the judge still sees every item
    assert any(r["response"] for r in rows) and all(isinstance(r["response"], str) for r in rows)
    assert all(r["judge_raw"] for r in rows)
    assert doc["results"]["pipeline_check"] is True
    cs = run_codeswitch(CodeSwitchConfig(responses="respond"), tmp_path, "codeswitch")
    langs = {r["lang"]: r for r in cs["tables"]["per_language"]["rows"]}
    assert set(langs) == {"zh", "de"} and all(0 <= r["rate"] <= 1 for r in langs.values())


def test_instruction_sets(tmp_path):
    from babelscope.evaluate.respond import read_instructions

    belle = read_instructions("belle")
    assert len(belle) == 1000 and belle[0]["lang"] == "zh" and belle[0]["reference"]
    assert {it["lang"] for it in read_instructions("embedded")} == {"zh", "de", "fr", "es", "ru"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Hi", "lang": "en"}\n{"lang": "en"}\n', encoding="utf-8")
    with pytest.raises(BabelscopeError, match=r"bad\.jsonl:2: no 'instruction'"):
        read_instructions(str(bad))


def test_cli_bad_input_exits_2(monkeypatch, capsys):
    import sys

    from babelscope.cli import main

    monkeypatch.setattr(sys, "argv", ["babelscope", "eval", "bench", "nope"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown benchmark 'nope'")


def test_local_choice_scoring_always_scores_and_picks_the_most_likely(tiny, tmp_path):
    """``judge_scoring="choice"``: a (tiny, random) model that never writes the reply format still gives five
    scores, each the argmax of log P(" d" | prompt so far + "<criterion>:") over d = 0..3, with the chosen lines
    kept in the prompt; the judge's identity (and so the cache key) says how it scored."""
    from babelscope.evaluate.judge import CRITERIA, LocalJudge, chat_prompt, judge_messages
    from babelscope.models.engine import Engine

    model, tok, info = tiny
    engine = Engine(model, tok, batch_size=4, progress=False, checksum=info.checksum)
    judge = LocalJudge(engine, scoring="choice")
    messages = judge_messages("Say hi.", "Hi there.", "Hello.")
    reply = judge(messages)
    scores = parse_scores(reply)
    assert scores is not None and set(scores) == set(CRITERIA)
    prefix = chat_prompt(tok, messages)
    for crit in CRITERIA:  # recompute each choice by hand
        lls = [engine.loglikelihood([(prefix + f"{crit}:", f" {d}")])[0].logprob for d in range(4)]
        assert scores[crit] == max(range(4), key=lls.__getitem__)
        prefix += f"{crit}: {scores[crit]}\n"
    assert LocalJudge(engine).identity != judge.identity
    cfg = RespondConfig(instructions="embedded", limit=2, max_new_tokens=4, judge="local", judge_scoring="choice")
    doc = run(cfg, tmp_path, "respond", loaded=lambda: (model, tok, info))
    rows = doc["tables"]["per_item"]["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["AVG"] is not None for r in rows)
    assert "choice scoring" in json.dumps(doc["results"])
    with pytest.raises(BabelscopeError, match="--judge-scoring"):
        run(RespondConfig(judge="openai", judge_scoring="choice"), tmp_path, "r2", loaded=lambda: pytest.fail())
