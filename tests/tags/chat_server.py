"""A real local HTTP server speaking the chat-completions protocol, with deterministic answers and scripted faults.

Answers: a vocabulary prompt gets the first N tags of a fixed list per domain; a matching prompt gets, for each
listed tag, 95 when a word of the tag occurs in the item's title, else 1 + crc32(title, tag) % 50.
Faults (``server.faults``, consumed one per request in arrival order; ``server.always`` applies to every request):
    malformed   content that is not JSON           500        HTTP 500
    timeout     answer after the client gave up    truncated  JSON cut in half, finish_reason "length"
    bad_tag     a tag that was not requested       range      a score of 150
    fenced      valid JSON inside a code fence     429        HTTP 429 with Retry-After: 0
    schema400   HTTP 400 to a json_schema request   401        HTTP 401
    schema422   HTTP 422 to a json_schema request (FastAPI's validation error)
    schema500   HTTP 500 to a json_schema request, worded as llama-cpp-python's server words it
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TAGS = {
    "Food": ["coffee", "tea", "chocolate", "snack", "organic", "spice", "pasta", "candy", "sauce", "cereal"],
    "Kitchen": ["cookware", "knife", "storage", "coffee", "baking", "glass", "cleaning", "bedding", "mug", "tea"],
}


def vocab_answer(prompt: str) -> dict:
    domain = re.search(r"^Domain: (.+)$", prompt, re.M).group(1).strip()
    n = int(re.search(r"List exactly (\d+)", prompt).group(1))
    names = (TAGS.get(domain, []) + [f"{domain.lower()} tag {i}" for i in range(n)])[:n]
    return {"tags": [{"tag": t, "score": round(1.0 - i / (2 * n), 3)} for i, t in enumerate(names)]}


def match_score(title: str, tag: str) -> int:
    words = set(re.findall(r"[a-z]+", title.lower()))
    if any(w in words or w + "s" in words for w in tag.split()):
        return 95
    return 1 + zlib.crc32(f"{title}|{tag}".encode()) % 50


def match_answer(prompt: str) -> dict:
    title = re.search(r"^Title: (.*)$", prompt, re.M).group(1)
    tags = re.findall(r"^- (.+)$", prompt, re.M)
    return {"scores": {t: match_score(title, t) for t in tags}}


class CountingServer(ThreadingHTTPServer):
    """Knows how many accepted connections are still being handled (``open``, guarded by ``idle``)."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.open = 0
        self.idle = threading.Condition()

    def process_request(self, request, client_address):  # the accepting thread, before the handler starts
        with self.idle:
            self.open += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.idle:
                self.open -= 1
                self.idle.notify_all()


class ChatServer:
    def __init__(self, client_timeout_s: float = 0.5):
        self.requests: list[dict] = []
        self.faults: collections.deque[str] = collections.deque()
        self.always: str | None = None
        self.delay_s = 0.0
        self.client_timeout_s = client_timeout_s
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # settle()'s marker: not a chat request, not recorded
                self.send_response(204)
                self.end_headers()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    fault = server.faults.popleft() if server.faults else server.always
                server.respond(self, body, fault)

        self.httpd = CountingServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def settle(self, timeout_s: float = 600.0) -> None:
        """Return once every connection opened before this call has been handled. A client killed right after
        sending leaves its request in the socket queues; without this, it may be counted only after the test has
        moved on. Connections are accepted in the order they were made, so once a marker request sent now is
        answered, every earlier one has been accepted; then wait for their handlers to finish."""
        with urllib.request.urlopen(self.url + "/settle", timeout=timeout_s):
            pass
        with self.httpd.idle:
            assert self.httpd.idle.wait_for(lambda: self.httpd.open == 0, timeout_s), \
                f"{self.httpd.open} connections still open after {timeout_s:g} s"

    def match_requests(self) -> int:
        return sum("Rate how well" in r["messages"][1]["content"] for r in self.requests)

    def respond(self, h: BaseHTTPRequestHandler, body: dict, fault: str | None) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        status = {"500": 500, "429": 429, "401": 401, "schema400": 400, "schema422": 422,
                  "schema500": 500}.get(fault or "")
        if fault and fault.startswith("schema") and body.get("response_format", {}).get("type") != "json_schema":
            status = None
        if status:
            refusal = (b"{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                       b"'msg': \"Input should be 'text' or 'json_object'\"}")
            message = {"schema400": b'{"error": "response_format json_schema is not supported"}',
                       "schema422": b'{"detail": [{"type": "literal_error", "loc": ["body", "response_format", '
                                    b'"type"]}]}',
                       "schema500": b'{"error": {"message": "1 validation error: ' + refusal + b'", '
                                    b'"type": "internal_server_error"}}'}.get(fault or "", b"{}")
            h.send_response(status)
            if status == 429:
                h.send_header("Retry-After", "0")
            h.send_header("Content-Length", str(len(message)))
            h.end_headers()
            h.wfile.write(message)
            return
        if fault == "timeout":
            time.sleep(self.client_timeout_s + 0.4)
        prompt = body["messages"][1]["content"]
        answer = vocab_answer(prompt) if "List exactly" in prompt else match_answer(prompt)
        content = json.dumps(answer)
        finish = "stop"
        if fault == "malformed":
            content = "Sure! Here are the scores: {scores: maybe}"
        elif fault == "truncated":
            content, finish = content[: len(content) // 2], "length"
        elif fault == "bad_tag":
            key = "tags" if "tags" in answer else "scores"
            if key == "scores":
                answer["scores"]["not in the vocabulary"] = 50
            else:
                answer["tags"] = answer["tags"][:1]
            content = json.dumps(answer)
        elif fault == "range":
            if "scores" in answer:
                first = next(iter(answer["scores"]))
                answer["scores"][first] = 150
            else:
                answer["tags"][0]["score"] = 7
            content = json.dumps(answer)
        elif fault == "fenced":
            content = f"```json\n{content}\n```"
        envelope = json.dumps({"id": "x", "object": "chat.completion", "model": body.get("model"),
                               "choices": [{"index": 0, "finish_reason": finish,
                                            "message": {"role": "assistant", "content": content}}]}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(envelope)))
        h.end_headers()
        try:
            h.wfile.write(envelope)
        except (BrokenPipeError, ConnectionResetError):
            pass
