"""A small OpenAI-compatible chat server backed by a local Hugging Face model (stdlib ``http.server``).

``POST /v1/chat/completions`` ({"model", "messages", "max_tokens"}) answers greedily with the model's chat
template (plain text for base models); ``GET /v1/models`` lists the model. One request at a time. Used as a
real judge endpoint in tests and demos::

    python -m babelscope.evaluate.judge_server --model gemma-3-270m --port 8000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def make_server(model, tokenizer, name: str, host: str = "127.0.0.1", port: int = 0,
                max_tokens_cap: int = 256) -> ThreadingHTTPServer:
    """A server (not started) answering chat completions with ``model``; ``port=0`` picks a free port."""
    from babelscope.evaluate.judge import chat_prompt
    from babelscope.models.engine import Engine

    engine = Engine(model, tokenizer, batch_size=1, progress=False)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet; never logs headers (API keys)
            return

        def _send(self, code: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                messages = req["messages"]
                max_tokens = min(int(req.get("max_tokens") or 64), max_tokens_cap)
            except (ValueError, KeyError, TypeError) as exc:
                self._send(400, {"error": {"message": f"bad request: {exc}"}})
                return
            with lock:
                text = engine.generate([chat_prompt(tokenizer, messages)], max_tokens, [], desc="serve")[0]
            self._send(200, {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "model": name,
                             "created": int(time.time()),
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}]})

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible chat server for a local model.")
    parser.add_argument("--model", default="gemma-3-270m", help="model spec (default: the embedded model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    args = parser.parse_args()
    from babelscope.models import load_model

    model, tok, info = load_model(args.model)
    server = make_server(model, tok, info.name, args.host, args.port)
    print(f"serving {info.name} on http://{args.host}:{server.server_address[1]}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
