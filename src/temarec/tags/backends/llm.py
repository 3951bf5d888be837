"""LLM backends, transport-independent: prompts, JSON schemas, tolerant parsing, validation, retries, caching.

A transport (``openai.py``: any chat-completions server; ``llamacpp.py``: a local GGUF model) turns messages into
the model's text. Everything else lives here, so both transports validate and retry the same way:

* every answer is parsed tolerantly (code fences, ``<think>`` blocks and prose around the JSON are skipped) and
  validated (tag count, score range, every requested tag scored once, no tag outside the request); an invalid
  answer is asked again with the reason appended, a transient error (timeout, refused connection, 429, 5xx) is
  retried with exponential backoff, ``max_retries`` times in all;
* every validated answer is cached under (backend, model, prompt-template hash, prompt hash), committed as soon as it
  arrives, so a killed run loses only requests in flight;
* matching sends one request per item and group of ``tags_per_request`` tags, ``concurrency`` at a time.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from temarec.tags.backends.base import CallStats, Item, MatchResult, Progress, TagsError
from temarec.cache import Cache, cache_key
from temarec.tags.templates import load_prompt, match_prompt, prompt_hash, vocab_prompt
from temarec.tags.text import normalize_tag, text_hash

log = logging.getLogger(__name__)

ABORT_AFTER_CONSECUTIVE_FAILURES = 10


class InvalidOutput(ValueError):
    """The model answered, but not with what was asked; the message says what was wrong."""


class Truncated(InvalidOutput):
    """The answer stopped at max_tokens: the retry gets twice the budget."""


class TransientError(RuntimeError):
    """Worth retrying: timeout, connection refused or reset, 408/409/429/5xx, a truncated HTTP body."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class FatalError(RuntimeError):
    """Retrying cannot help (bad key, wrong URL or model name): the run stops."""


class CallFailed(RuntimeError):
    """One request failed after all retries."""


@dataclass(frozen=True)
class Answer:
    """A model's text and what it cost, in the model's own tokens (0 where the server does not say)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Transport(Protocol):
    name: str  # backend name, part of the cache key
    model: str  # model identity, part of the cache key

    def describe(self) -> str: ...

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int) -> Answer: ...


# ---------------------------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


def extract_json(text: str) -> Any:
    """The JSON value in a model's answer, tolerating fences, reasoning blocks and prose around it."""
    body = _FENCE.sub("", _THINK.sub("", text or "").strip()).strip()
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if starts:
        start = min(starts)
        end = body.rfind("}" if body[start] == "{" else "]")
        if end > start:
            try:
                return json.loads(body[start:end + 1])
            except json.JSONDecodeError as exc:
                raise InvalidOutput(f"the answer is not valid JSON ({exc.msg} at char {exc.pos})") from exc
        raise InvalidOutput(f"the answer is not valid JSON (cut off?): {body[-60:]!r}")
    raise InvalidOutput(f"the answer holds no JSON object: {body[:80]!r}")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidOutput(f"{what} is not a number: {value!r}")
    try:
        number = float(value)
    except ValueError as exc:
        raise InvalidOutput(f"{what} is not a number: {value!r}") from exc
    if not math.isfinite(number):
        raise InvalidOutput(f"{what} is not finite: {value!r}")
    return number


def _pairs(obj: Any, list_key: str) -> list[tuple[Any, Any]]:
    """(tag, score) pairs from {list_key: [{tag, score}] | {tag: score}}, a bare list or a bare mapping."""
    if isinstance(obj, dict) and list_key in obj:
        obj = obj[list_key]
    if isinstance(obj, dict):
        return list(obj.items())
    if isinstance(obj, list):
        pairs = []
        for entry in obj:
            if isinstance(entry, dict) and "tag" in entry and "score" in entry:
                pairs.append((entry["tag"], entry["score"]))
            elif isinstance(entry, (list, tuple)) and len(entry) == 2:
                pairs.append((entry[0], entry[1]))
            else:
                raise InvalidOutput(f"entry {entry!r} is not a tag with a score")
        return pairs
    raise InvalidOutput(f"expected an object with {list_key!r}, got {type(obj).__name__}")


def parse_vocab(text: str, n: int) -> list[tuple[str, float]]:
    """A vocabulary answer -> N (tag, score) pairs; scores must lie in [0, 1]; fewer than N distinct tags is
    invalid, more are cut to the first N."""
    out: dict[str, float] = {}
    for tag, score in _pairs(extract_json(text), "tags"):
        if not isinstance(tag, str) or not normalize_tag(tag):
            raise InvalidOutput(f"tag {tag!r} is not a non-empty string")
        s = _number(score, f"the score of {tag!r}")
        if not 0.0 <= s <= 1.0:
            raise InvalidOutput(f"the score of {tag!r} is {s}, outside [0, 1]")
        out.setdefault(normalize_tag(tag), s)
    if len(out) < n:
        raise InvalidOutput(f"{len(out)} distinct tags, {n} were asked for")
    return list(out.items())[:n]


def parse_scores(text: str, tags: Sequence[str]) -> list[int]:
    """A matching answer -> one integer score 1-100 per requested tag, in request order."""
    wanted = {normalize_tag(t): i for i, t in enumerate(tags)}
    got: dict[int, int] = {}
    extra = []
    for tag, score in _pairs(extract_json(text), "scores"):
        i = wanted.get(normalize_tag(str(tag)))
        if i is None:
            extra.append(str(tag))
            continue
        s = _number(score, f"the score of {tag!r}")
        if not 1.0 <= s <= 100.0:
            raise InvalidOutput(f"the score of {tag!r} is {s:g}, outside 1-100")
        got[i] = int(math.floor(s + 0.5))
    if extra:
        raise InvalidOutput(f"tag(s) outside the requested list: {extra[:5]}")
    missing = [tags[i] for i in range(len(tags)) if i not in got]
    if missing:
        raise InvalidOutput(f"{len(missing)} requested tag(s) not scored, e.g. {missing[:3]}")
    return [got[i] for i in range(len(tags))]


# The schemas are written in the JSON-schema subset every constrained-decoding engine enforces (llama.cpp's grammar
# converter ignores minimum/maximum and minLength/maxLength; OpenAI's strict mode refuses the latter): ranges are
# enums, a tag's length is a pattern. A bounded answer also means a bounded generation: max_tokens below is the
# longest answer the schema allows at one token per character (an upper bound for any tokenizer on ASCII text).
MAX_TAG_CHARS = 40
TAG_PATTERN = rf'^[^"\\\x00-\x1f]{{1,{MAX_TAG_CHARS}}}$'  # 1-40 characters, none needing a JSON escape
VOCAB_SCORES = [round(i / 100, 2) for i in range(101)]  # [0, 1] in steps of 0.01


def vocab_schema(n: int) -> dict[str, Any]:
    entry = {"type": "object", "additionalProperties": False, "required": ["tag", "score"],
             "properties": {"tag": {"type": "string", "pattern": TAG_PATTERN},
                            "score": {"type": "number", "enum": VOCAB_SCORES}}}
    return {"type": "object", "additionalProperties": False, "required": ["tags"],
            "properties": {"tags": {"type": "array", "minItems": n, "maxItems": n, "items": entry}}}


def vocab_max_tokens(n: int) -> int:
    return 16 + n * (MAX_TAG_CHARS + 28)  # {"tag": "<tag>", "score": 0.25},


def match_schema(tags: Sequence[str]) -> dict[str, Any]:
    scores = {"type": "object", "additionalProperties": False, "required": list(tags),
              "properties": {t: {"$ref": "#/$defs/score"} for t in tags}}
    return {"type": "object", "additionalProperties": False, "required": ["scores"], "properties": {"scores": scores},
            "$defs": {"score": {"type": "integer", "enum": list(range(1, 101))}}}


def match_max_tokens(tags: Sequence[str]) -> int:
    return 16 + sum(len(json.dumps(t)) + 8 for t in tags)  # "<tag>": 100,


# ---------------------------------------------------------------------------------------------- asking

class Chat:
    """Ask a transport, validate, and retry (backoff on transient errors, a corrective turn on invalid answers)."""

    def __init__(self, transport: Transport, max_retries: int, backoff_s: float, stats: CallStats):
        self.transport = transport
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.stats = stats
        self.system = load_prompt("system").strip()

    def ask(self, prompt: str, schema: dict[str, Any], max_tokens: int, parse: Callable[[str], Any]) -> Any:
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}]
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.add(retried=1)
            self.stats.add(calls=1)
            answer = ""
            try:
                reply = self.transport.complete(messages, schema, max_tokens)
                self.stats.add(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
                answer = reply.text
                return parse(answer)
            except InvalidOutput as exc:
                last = f"invalid answer: {exc}"
                if isinstance(exc, Truncated):
                    max_tokens *= 2
                log.debug("%s (attempt %d)", last, attempt + 1)
                retry = [{"role": "assistant", "content": answer[:4000]}] if answer else []
                messages = messages[:2] + retry + [
                    {"role": "user", "content": f"That answer was not valid: {exc}. Answer again with the JSON "
                                                "object only, exactly in the requested format."}]
            except TransientError as exc:
                last = str(exc)
                log.debug("%s (attempt %d)", last, attempt + 1)
                if attempt < self.max_retries:
                    wait = exc.retry_after if exc.retry_after is not None else self.backoff_s * 2 ** attempt
                    time.sleep(min(wait, 60.0) * (1.0 + 0.25 * random.random()))
        raise CallFailed(f"gave up after {self.max_retries + 1} attempts: {last}")


class LLMVocab:
    """Eq. (1): the same domain prompt asked R times at temperature 0; each round is cached on its own."""

    def __init__(self, chat: Chat, cache: Cache):
        self.chat = chat
        self.cache = cache
        self.stats = chat.stats

    def describe(self) -> str:
        return f"LLM vocabulary ({self.chat.transport.describe()})"

    def propose(self, domain: str, corpus: Mapping[str, Sequence[str]], n: int,
                rounds: int) -> list[list[tuple[str, float]]]:
        prompt = vocab_prompt(domain, n)
        t = self.chat.transport
        responses = []
        for r in range(rounds):
            key = cache_key(kind="vocab", backend=t.name, model=t.model, template=prompt_hash("system", "vocab"),
                            prompt=text_hash(prompt), round=r)
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.add(from_cache=1)
                responses.append([(tag, float(s)) for tag, s in json.loads(hit)])
                continue
            try:
                pairs = self.chat.ask(prompt, vocab_schema(n), vocab_max_tokens(n), lambda a: parse_vocab(a, n))
            except CallFailed as exc:
                raise TagsError(f"vocabulary for {domain!r}, round {r + 1}/{rounds}: {exc}") from exc
            except FatalError as exc:
                raise TagsError(str(exc)) from exc
            self.cache.put(key, json.dumps(pairs).encode("utf-8"))
            responses.append(pairs)
        return responses


class LLMMatcher:
    """Item-tag matching by the LLM: one request per (item, group of tags), ``concurrency`` in flight."""

    def __init__(self, chat: Chat, cache: Cache, tags_per_request: int, concurrency: int,
                 abort_after: int = ABORT_AFTER_CONSECUTIVE_FAILURES):
        self.chat = chat
        self.cache = cache
        self.tags_per_request = tags_per_request
        self.concurrency = concurrency
        self.abort_after = abort_after
        self.stats = chat.stats

    def describe(self) -> str:
        return f"LLM matching ({self.chat.transport.describe()}, {self.tags_per_request} tags per request)"

    def score(self, items: Sequence[Item], tags: Sequence[str], progress: Progress) -> MatchResult:
        k = self.tags_per_request
        groups = [list(tags[i:i + k]) for i in range(0, len(tags), k)]
        t = self.chat.transport
        template = prompt_hash("system", "match")
        prompts = {}
        keys = {}
        for i, item in enumerate(items):
            for g, group in enumerate(groups):
                prompts[i, g] = match_prompt(item.domain, item.render(), group)
                keys[i, g] = cache_key(kind="match", backend=t.name, model=t.model, template=template,
                                       item=text_hash(item.render()), prompt=text_hash(prompts[i, g]))
        scores = np.zeros((len(items), len(tags)), dtype=np.uint8)
        failed = np.zeros(len(items), dtype=bool)
        left = np.full(len(items), len(groups))
        errors: list[str] = []

        def fill(i: int, g: int, values: Sequence[int]) -> None:
            scores[i, g * k: g * k + len(values)] = values
            left[i] -= 1
            if left[i] == 0:
                progress.update(1)

        cached = self.cache.get_many(keys.values())
        pending = []
        for (i, g), key in keys.items():
            if key in cached:
                fill(i, g, json.loads(cached[key]))
            else:
                pending.append((i, g))
        self.stats.add(from_cache=len(keys) - len(pending))
        if pending:
            self._run(pending, prompts, keys, groups, fill, failed, errors, progress)
        return MatchResult(scores=scores, failed=failed, errors=errors)

    def _run(self, pending: list[tuple[int, int]], prompts: dict, keys: dict, groups: list[list[str]],
             fill: Callable, failed: np.ndarray, errors: list[str], progress: Progress) -> None:
        def ask(i: int, g: int) -> list[int]:
            group = groups[g]
            values = self.chat.ask(prompts[i, g], match_schema(group), match_max_tokens(group),
                                   lambda a: parse_scores(a, group))
            # committed by the worker that got it, not when the main thread gets round to it: the window holds
            # 2 x concurrency futures, so answers waiting for the main thread could outnumber the requests in flight
            self.cache.put(keys[i, g], json.dumps(values).encode("utf-8"))
            return values

        consecutive = 0
        todo = iter(pending)
        with cf.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            running: dict[cf.Future, tuple[int, int]] = {}
            try:
                while True:
                    while len(running) < 2 * self.concurrency:  # bounded window: memory stays flat on big catalogues
                        nxt = next(todo, None)
                        if nxt is None:
                            break
                        running[pool.submit(ask, *nxt)] = nxt
                    if not running:
                        break
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for future in sorted(done, key=lambda f: running[f]):
                        i, g = running.pop(future)
                        try:
                            values = future.result()
                        except CallFailed as exc:
                            self.stats.add(failed=1)
                            consecutive += 1
                            if not failed[i]:
                                failed[i] = True
                                progress.update(1)
                            if len(errors) < 5:
                                errors.append(f"item {i}, tags {groups[g][0]!r}..: {exc}")
                            log.warning("request failed for good: %s", exc)
                            if consecutive >= self.abort_after:
                                raise TagsError(f"{consecutive} requests in a row failed after all retries; last: "
                                                f"{exc}. Is {self.chat.transport.describe()} up? Finished work is "
                                                "cached: rerun to resume") from exc
                            continue
                        consecutive = 0
                        if not failed[i]:
                            fill(i, g, values)
            except FatalError as exc:
                raise TagsError(f"{exc}. Finished work is cached: rerun to resume") from exc
            finally:
                for future in running:
                    future.cancel()
