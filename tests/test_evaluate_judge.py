"""Judge pipeline end to end against a real OpenAI-compatible server: ``transformers serve`` (transformers' own)
started by the tests on loopback with tiny real-architecture models saved to disk (no mock)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from babelscope.errors import BabelscopeError
from babelscope.evaluate.judge import JudgeError, OpenAIJudge, judge_all, parse_scores
from babelscope.evaluate.respond import RespondConfig, run
from babelscope.models.loader import ModelInfo
from babelscope.runs import RequestCache
from conftest import build_tiny

CHAT_TEMPLATE = ("{% for m in messages %}<bos>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant\n{% endif %}")


def serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_transformers_serve(*model: str, timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """``transformers serve [MODEL] --host 127.0.0.1 --port P --device cpu`` as a child process; returns it and
    its ``/v1`` URL once ``/health`` answers."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    proc = subprocess.Popen([str(exe), "serve", *model, "--host", "127.0.0.1", "--port", str(port), "--device",
                             "cpu", "--log-level", "warning"], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    stop(proc)
    pytest.fail("transformers serve did not answer /health in time")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_tiny("gemma3")
    info = ModelInfo("tiny", "tiny", "causal", "gemma3_text", 1, 3, 32, len(tok), "abc", "memory", "float32")
    return model, tok, info


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> dict[str, str]:
    """Tiny Llama judges on disk: two chat models (other seeds: other weights) and a base model (no template)."""
    out = {}
    for name, seed, chat in [("chat", 0, True), ("chat2", 1, True), ("base", 0, False)]:
        path = tmp_path_factory.mktemp(f"judge-{name}")
        model, tok = build_tiny("llama", seed=seed)
        model.config.max_position_embeddings = 4096  # rotary positions: the judge prompt (bytes of Chinese) fits
        if chat:
            tok.chat_template = CHAT_TEMPLATE
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = str(path)
    return out


@pytest.fixture(scope="module")
def tiny_server(judges):
    """One ``transformers serve`` (not pinned: it loads whichever local model a request names)."""
    proc, url = start_transformers_serve()
    yield url
    stop(proc)


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


def test_server_speaks_openai_chat(tiny_server, judges):
    text = OpenAIJudge(tiny_server, judges["chat"], max_tokens=5)([{"role": "user", "content": "Hello"}])
    assert isinstance(text, str) and text  # a real (random-weight) model's greedy reply through its chat template
    with urllib.request.urlopen(tiny_server + "/models") as resp:  # the model it has loaded
        assert judges["chat"] in [m["id"] for m in json.loads(resp.read())["data"]]


def test_respond_step_end_to_end_keeps_raw_output_resumes_and_keys_the_cache_by_judge(tiny, tiny_server, judges,
                                                                                        tmp_path, monkeypatch):
    model, tok, info = tiny
    monkeypatch.setenv("BS_TEST_KEY", "sk-secret-123")
    cfg = RespondConfig(instructions="embedded", limit=3, max_new_tokens=4, judge="openai", judge_url=tiny_server,
                        judge_api_model=judges["chat"], api_key_env="BS_TEST_KEY", timeout=60, retries=1,
                        judge_max_tokens=12)
    doc = run(cfg, tmp_path, "respond", loaded=lambda: (model, tok, info))
    rows = doc["tables"]["per_item"]["rows"]
    assert len(rows) == 3 and all(r["status"] in ("ok", "unparsed") for r in rows)
    assert all(r["judge_raw"] for r in rows)  # the raw judge output is kept with each score
    summary = doc["results"]["summary"]  # a random-weight judge: its replies parse or are counted as unparsed
    assert summary["judged"] + summary["unparsed"] + summary["failed"] == 3 and summary["failed"] == 0
    cache_file = tmp_path / "respond" / "cache" / "judgments.jsonl"
    assert len(cache_file.read_text().splitlines()) == 3
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert "sk-secret-123" not in path.read_text(errors="ignore")  # the key is never stored
    again = run(cfg, tmp_path, "respond", loaded=lambda: pytest.fail("finished step reloaded its model"))
    assert again["tables"]["per_item"]["rows"] == rows
    # another judge (other weights at the same server) is asked anew; the same judge again is served from cache
    other = RespondConfig(**{**vars(cfg), "judge_api_model": judges["chat2"]})
    run(other, tmp_path, "respond", loaded=lambda: (model, tok, info))
    assert len(cache_file.read_text().splitlines()) == 6
    back = run(RespondConfig(**{**vars(cfg), "timeout": 61}), tmp_path, "respond", loaded=lambda: (model, tok, info))
    assert len(cache_file.read_text().splitlines()) == 6
    assert [r["judge_raw"] for r in back["tables"]["per_item"]["rows"]] == [r["judge_raw"] for r in rows]


def test_retries_on_5xx_and_sends_key(flaky, judges, monkeypatch):
    monkeypatch.setenv("BS_TEST_KEY", "sk-abc")
    Flaky.fails = 2
    judge = OpenAIJudge(flaky, judges["chat"], api_key_env="BS_TEST_KEY", retries=3, max_tokens=3)
    assert isinstance(judge([{"role": "user", "content": "Hi"}]), str)
    assert len(Flaky.seen_auth) == 3 and set(Flaky.seen_auth) == {"Bearer sk-abc"}


def test_failures_are_recorded_and_judgments_kept(flaky, judges, tmp_path):
    cache = RequestCache(tmp_path / "j.jsonl")
    items = [{"id": str(i), "instruction": f"Q{i}", "response": "A", "reference": "R"} for i in range(3)]
    ok = OpenAIJudge(flaky, judges["chat"], retries=0, max_tokens=3)
    first = judge_all(items[:2], ok, cache, lambda it: it["id"])
    assert [r["status"] in ("ok", "unparsed") for r in first] == [True, True]
    Flaky.delay = 2.0
    slow = OpenAIJudge(flaky, judges["chat"], timeout=0.5, retries=1)
    out = judge_all(items, slow, cache, lambda it: it["id"])
    assert out[0]["raw"] == first[0]["raw"] and out[1]["raw"] == first[1]["raw"]  # cached, not re-asked
    assert out[2]["status"].startswith("failed: no answer") and "2 tries" in out[2]["status"]
    down = OpenAIJudge("http://127.0.0.1:9/v1", "x", timeout=2, retries=1)
    with pytest.raises(JudgeError, match="no answer from http://127.0.0.1:9/v1"):
        down([{"role": "user", "content": "x"}])
    assert len(RequestCache(tmp_path / "j.jsonl")) == 2


def test_garbage_and_bad_requests(tiny_server, judges):
    garbage = judge_all([{"id": "g", "instruction": "Q", "response": "A", "reference": "R"}],
                        lambda messages: "I cannot score this, sorry!!", RequestCache(None), lambda it: it["id"])
    assert garbage[0]["status"] == "unparsed" and garbage[0]["scores"] is None
    with pytest.raises(JudgeError, match="HTTP 404"):
        OpenAIJudge(tiny_server.replace("/v1", "/nope"), judges["chat"], retries=0)(
            [{"role": "user", "content": "x"}])


def test_openai_judge_needs_url(tmp_path):
    with pytest.raises(BabelscopeError, match="--judge-url"):
        run(RespondConfig(judge="openai"), tmp_path, "respond", loaded=lambda: pytest.fail("loaded"))


def respond_cli(run_dir: Path, model_dir: Path, url: str, judge_model: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "babelscope.cli", "eval", "respond", "--model", str(model_dir),
                           "--instructions", "embedded", "--limit", "2", "--max-new-tokens", "4", "--judge", "openai",
                           "--judge-url", url, "--judge-api-model", judge_model, "--retries", "0", "--timeout", "30",
                           "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["not a chat model", "does not answer"])
def test_bad_judge_one_line_exit_2_responses_kept(tiny_server, judges, tiny_dir, tmp_path, case):
    """A judge model without a chat template, or a judge URL where nothing listens: one line, exit 2, and the
    generated responses are in the results file (a re-run with a working judge judges them)."""
    if case == "not a chat model":
        proc = respond_cli(tmp_path, tiny_dir, tiny_server, judges["base"])
    else:
        proc = respond_cli(tmp_path, tiny_dir, f"http://127.0.0.1:{free_port()}/v1", judges["chat"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]  # (above: progress bars)
    assert len(errors) == 1 and case in errors[0] and "are kept in" in errors[0]
    assert "Traceback" not in proc.stderr
    rows = json.loads((tmp_path / "respond" / "results.json").read_text())["tables"]["per_item"]["rows"]
    assert len(rows) == 2 and all(r["status"].startswith("failed") for r in rows)
    assert all(isinstance(r["response"], str) for r in rows)


@pytest.mark.slow
def test_real_model_served_by_transformers_serve(default_model, tmp_path):
    """The embedded default model answers our instructions; served by ``transformers serve`` as a judge it is
    refused (a base model has no chat template): one line, exit 2, the real responses kept."""
    model, tok, info = default_model
    proc, url = start_transformers_serve(info.source)
    try:
        cfg = RespondConfig(instructions="embedded", langs="zh,de", max_new_tokens=16, judge="openai",
                            judge_url=url, judge_api_model=info.source, timeout=300, retries=1, pipeline_check=True)
        with pytest.raises(BabelscopeError, match="is not a chat model") as err:
            run(cfg, tmp_path, "respond", loaded=lambda: default_model)
    finally:
        stop(proc)
    assert "\n" not in str(err.value)
    rows = json.loads((tmp_path / "respond" / "results.json").read_text())["tables"]["per_item"]["rows"]
    assert [r["lang"] for r in rows] == ["zh", "zh", "de"] and any(r["response"] for r in rows)


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


def test_local_each_scoring_scores_every_criterion_on_its_own(tiny, tmp_path):
    """``judge_scoring="each"``: every criterion is the argmax of log P(" d" | prompt + "<criterion>:"), with none
    of the other criteria's scores in its context; a judge of its own identity."""
    from babelscope.evaluate.judge import CRITERIA, LocalJudge, chat_prompt, judge_messages
    from babelscope.models.engine import Engine

    model, tok, info = tiny
    engine = Engine(model, tok, batch_size=4, progress=False, checksum=info.checksum)
    judge = LocalJudge(engine, scoring="each")
    messages = judge_messages("Say hi.", "Hi there.", "Hello.")
    scores = parse_scores(judge(messages))
    assert scores is not None and set(scores) == set(CRITERIA)
    prefix = chat_prompt(tok, messages)
    for crit in CRITERIA:  # recomputed one request at a time, from the bare prompt
        lls = [engine.loglikelihood([(prefix + f"{crit}:", f" {d}")])[0].logprob for d in range(4)]
        assert scores[crit] == max(range(4), key=lls.__getitem__)
    assert len({LocalJudge(engine).identity, LocalJudge(engine, scoring="choice").identity, judge.identity}) == 3
    with pytest.raises(BabelscopeError, match="--judge-scoring 'each': use generate, or choice / each with"):
        run(RespondConfig(judge="openai", judge_scoring="each"), tmp_path, "r", loaded=lambda: pytest.fail())


def test_judge_by_named_model_is_checked_before_loading(tmp_path):
    """``judge: qwen2.5-coder-1.5b`` (a named model run locally) is accepted; anything else is refused in one line
    that names the choices, before any model loads."""
    with pytest.raises(BabelscopeError, match="qwen2.5-coder-1.5b"):
        run(RespondConfig(judge="gpt-judge"), tmp_path, "r1", loaded=lambda: pytest.fail("loaded"))
    with pytest.raises(BabelscopeError, match="give one judge model"):
        run(RespondConfig(judge="qwen2.5-coder-1.5b", judge_model="smollm2-135m"), tmp_path, "r2",
            loaded=lambda: pytest.fail("loaded"))
