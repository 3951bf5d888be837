"""Transport for a local GGUF model through llama-cpp-python, output constrained by a JSON-schema grammar.

Optional extra (it compiles llama.cpp from source): ``pip install 'temarec[llamacpp]'``. The schema of each request
(``llm.vocab_schema`` / ``llm.match_schema``) is turned into a GBNF grammar by llama-cpp-python, so the model can only
write an answer of the requested shape: exactly N tags, every requested tag scored once, scores on their scale.
Tested end to end on a tiny random GGUF model (tests/tags/test_llamacpp.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from temarec.extras import require
from temarec.tags.backends.llm import Answer, Truncated


class LlamaCppTransport:
    name = "llamacpp"

    def __init__(self, gguf_path: str, n_ctx: int = 4096):
        if not gguf_path or not Path(gguf_path).is_file():
            raise ValueError(f"tags.gguf_path {gguf_path!r} is not a file: point it at a local .gguf model")
        Llama = require("llama_cpp", "llamacpp", "the llamacpp backend").Llama
        path = Path(gguf_path)
        self.model = f"{path.name}:{path.stat().st_size}"
        # n_gpu_layers=-1: every layer on the GPU when llama.cpp was built with one; ignored by a CPU build
        self._llm = Llama(model_path=str(path), n_ctx=n_ctx, n_gpu_layers=-1, seed=0, verbose=False)
        self._lock = threading.Lock()  # one model, one generation at a time

    def describe(self) -> str:
        return f"llama.cpp {self.model.split(':')[0]}"

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int) -> Answer:
        with self._lock:
            # Forget the previous prompt: llama-cpp-python would otherwise reuse its cached prefix, and the answer
            # (cached under this prompt alone) could then depend on which request came before it.
            self._llm.reset()
            out = self._llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens,
                                                   response_format={"type": "json_object", "schema": schema})
        choice = out["choices"][0]
        if choice.get("finish_reason") == "length":
            raise Truncated(f"the answer was cut off at max_tokens={max_tokens} (truncated JSON)")
        usage = out.get("usage") or {}
        return Answer(choice["message"]["content"] or "", usage.get("prompt_tokens", 0),
                      usage.get("completion_tokens", 0))
