"""The prompt templates (package files ``prompts/*.txt``), filled with ``string.Template`` ($name placeholders)."""

from __future__ import annotations

import hashlib
from importlib import resources
from string import Template

NAMES = ("system", "vocab", "match")


def load_prompt(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown prompt {name!r}; prompts are {NAMES}")
    return resources.files("temarec.tags").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")


def prompt_hash(*names: str) -> str:
    """Identity of the templates behind a cached answer: edit a prompt file and old answers are not reused."""
    h = hashlib.sha256()
    for name in names:
        h.update(load_prompt(name).encode("utf-8"))
    return h.hexdigest()[:16]


def vocab_prompt(domain: str, n: int) -> str:
    return Template(load_prompt("vocab")).substitute(domain=domain, n=n)


def match_prompt(domain: str, item: str, tags: list[str]) -> str:
    return Template(load_prompt("match")).substitute(domain=domain, item=item, k=len(tags),
                                                     tags="\n".join(f"- {t}" for t in tags))


def show_prompts() -> str:
    return "\n".join(f"===== prompts/{name}.txt =====\n{load_prompt(name)}" for name in NAMES)
