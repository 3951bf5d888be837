"""Transport for any OpenAI-compatible chat-completions server: vLLM, Ollama, llama.cpp server, LM Studio, OpenAI.

Standard library HTTP only (no client package). Structured output is tried in the strongest form the server takes:
``json_schema`` (vLLM, llama.cpp's own server, LM Studio, OpenAI, recent Ollama), then ``json_object`` carrying the
schema in a ``schema`` field (llama-cpp-python's server, which refuses ``json_schema``, turns it into a grammar;
servers that do not know the field ignore it), then plain text parsed tolerantly. A 400, 422 or 500 whose body
names the response format moves one step down, once for the whole run (llama-cpp-python's server answers a
``json_schema`` request with a 500 that quotes its validation error).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

from temarec.tags.backends.llm import Answer, FatalError, InvalidOutput, TransientError, Truncated

MODES = ("json_schema", "json_object", "none")


class OpenAITransport:
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 structured_output: str = "auto"):
        if not model:
            raise ValueError("tags.model is empty: name the served model, e.g. --set tags.model=qwen2.5:7b-instruct")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.timeout_s = timeout_s
        self.mode = "json_schema" if structured_output == "auto" else structured_output
        self.fallback = structured_output == "auto"
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"openai-compatible {self.model} at {self.url.rsplit('/chat/completions', 1)[0]}"

    def _body(self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int, mode: str) -> bytes:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        if mode == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        elif mode == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return json.dumps(body).encode("utf-8")

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int) -> Answer:
        while True:
            mode = self.mode
            try:
                return self._post(self._body(messages, schema, max_tokens, mode), max_tokens)
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                if exc.code in (400, 422, 500) and self.fallback and mode != "none" and \
                        any(w in detail.lower() for w in ("response_format", "json_schema", "schema", "json_object")):
                    with self._lock:  # one step down for every later request
                        if self.mode == mode:
                            self.mode = MODES[MODES.index(mode) + 1]
                    continue
                if exc.code in (401, 403, 404):
                    raise FatalError(f"{self.url} answered HTTP {exc.code} ({detail.strip()[:120]}): check "
                                     f"tags.base_url, tags.model and the API key variable") from exc
                if exc.code in (408, 409, 429) or exc.code >= 500:
                    retry_after = exc.headers.get("Retry-After") if exc.headers else None
                    wait = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
                    raise TransientError(f"HTTP {exc.code} from {self.url}", retry_after=wait) from exc
                raise InvalidOutput(f"HTTP {exc.code} from {self.url}: {detail.strip()[:200]}") from exc

    def _post(self, data: bytes, max_tokens: int) -> Answer:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError:
            raise
        except (TimeoutError, socket.timeout) as exc:
            raise TransientError(f"no answer from {self.url} within {self.timeout_s:g} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise TransientError(f"no answer from {self.url} within {self.timeout_s:g} s") from exc
            raise TransientError(f"cannot reach {self.url}: {exc.reason}") from exc
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise TransientError(f"connection to {self.url} broke: {exc!r}") from exc
        try:
            envelope = json.loads(raw)
            choice = envelope["choices"][0]
            content = choice["message"]["content"] or ""
            usage = envelope.get("usage") or {}
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise TransientError(f"malformed chat-completions envelope from {self.url}: {raw[:120]!r}") from exc
        if choice.get("finish_reason") == "length":
            raise Truncated(f"the answer was cut off at max_tokens={max_tokens} (truncated JSON)")
        return Answer(content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
