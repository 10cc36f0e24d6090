"""A small OpenAI-compatible judge on 127.0.0.1, for testing AlpacaEval's real evaluator without OpenAI.

It answers ``POST /v1/chat/completions`` the way GPT-4 answers alpaca_eval's two judge prompts, in the
exact formats their parsers read, with one deterministic rule: **the longer answer is better** (the first
one shown on a tie in length).

- ``alpaca_eval_gpt4`` (AlpacaEval 1.0) shows ``"model": "model_1"`` / ``"model_2"`` with their ``"answer"``s
  and parses a Python list of ranks (``ranking_parser``): we reply ``[{'model': ..., 'rank': 1}, ...]``.
- ``weighted_alpaca_eval_gpt4_turbo`` (AlpacaEval 2.0) shows ``"model_identifier": "m"`` / ``"M"`` with their
  ``"output"``s, asks for one token with ``logprobs``, and reads P(m) off ``top_logprobs`` (``logprob_parser``):
  we give the longer answer's identifier probability ``P_LONGER`` = 0.9 and the other 0.1.

Every request is recorded (``server.requests``), so a test can count what a run cost.
Start it standalone with ``python -m tests.fake_openai_judge --port 8765`` and point a client at
``OPENAI_BASE_URL=http://127.0.0.1:8765/v1``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

P_LONGER = 0.9  # the weighted judge's probability that the longer answer is better
# A quoted answer in either judge prompt: ("model" or "model_identifier", its name, the answer's text).
ANSWER = re.compile(r'"(model|model_identifier)": "([^"]+)",\s*"(?:answer|output)": """(.*?)"""', re.DOTALL)


def verdict(prompt: str) -> tuple[str, list[str], str]:
    """The judge prompt's format ("ranking" or "identifier"), its two model names, and the name of the better one."""
    found = ANSWER.findall(prompt)
    if len(found) != 2:
        raise ValueError(f"expected two quoted answers in the judge prompt, found {len(found)}")
    (kind, first, answer_1), (_, second, answer_2) = found
    better = first if len(answer_1) >= len(answer_2) else second
    return ("ranking" if kind == "model" else "identifier"), [first, second], better


def reply(body: dict) -> dict:
    """A ``chat.completion`` answering one alpaca_eval judge request."""
    prompt = "\n".join(m["content"] if isinstance(m["content"], str) else json.dumps(m["content"]) for m in body["messages"])
    kind, names, better = verdict(prompt)
    logprobs = None
    if kind == "ranking":
        ranks = [{"model": n, "rank": 1 if n == better else 2} for n in names]
        content = repr(ranks)
    else:
        content = better
        worse = next(n for n in names if n != better)
        top = [{"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in ((better, P_LONGER), (worse, 1 - P_LONGER))]
        logprobs = {"content": [dict(top[0], top_logprobs=top[: body.get("top_logprobs") or 2])]} if body.get("logprobs") else None
    prompt_tokens = len(prompt) // 4
    return {
        "id": f"chatcmpl-fake-{abs(hash(prompt)) % 10**8}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1, "total_tokens": prompt_tokens + 1},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with self.server.lock:
            self.server.requests.append({"path": self.path, "model": body.get("model"), "logprobs": body.get("logprobs")})
            if getattr(self.server, "verbose", False):
                print(f"request {len(self.server.requests)}: POST {self.path} model={body.get('model')}", flush=True)
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"this fake judge serves only /v1/chat/completions, not {self.path}"}})
        try:
            self._send(200, reply(body))
        except (KeyError, ValueError) as e:
            self._send(400, {"error": {"message": f"fake judge: {e}", "type": "invalid_request_error"}})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


class FakeJudge:
    """The server in a background thread: ``with FakeJudge() as judge: ... judge.base_url, judge.requests``."""

    def __init__(self, port: int = 0):
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.server.requests, self.server.lock = [], threading.Lock()
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def requests(self) -> list[dict]:
        return self.server.requests

    def __enter__(self) -> "FakeJudge":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    port = parser.parse_args().port
    server = FakeJudge(port).server
    server.verbose = True  # one line per request
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill PID` stops it as Ctrl-C does
    print(f"fake OpenAI-compatible judge on http://127.0.0.1:{server.server_address[1]}/v1 (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        print(f"{len(server.requests)} requests served", flush=True)


if __name__ == "__main__":
    main()
