"""Item text and the light normalisation shared by the keyword matcher, the mined vocabulary and the vote."""

from __future__ import annotations

import hashlib
import re
from typing import Any

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")

STOPWORDS = frozenset("""
a an and are as at be by for from has have in into is it its of on or s the this that to with without
your you our we not no all any each per plus &
""".split())


def item_text(title: Any, description: Any) -> str:
    """Title and description joined into one text; '' when the item has neither (it then gets no tags)."""
    parts = [str(x).strip() for x in (title, description) if isinstance(x, str) and x.strip()]
    return ". ".join(parts)


def normalize_tag(tag: str) -> str:
    """Casefold, collapse whitespace, strip edge punctuation: 'Baking Tools.' and ' baking  tools' vote together."""
    return _EDGE_PUNCT.sub("", _SPACE.sub(" ", str(tag).casefold()).strip())


def tokens(text: str) -> list[str]:
    """Lower-case alphanumeric tokens (an apostrophe suffix stays attached: "bob's")."""
    return _TOKEN.findall(text.casefold())


def stem(token: str) -> str:
    """Light plural folding so 'cookies' ~ 'cookie', 'berries' ~ 'berry', 'glasses' ~ 'glass', 'mugs' ~ 'mug'.

    Not a linguistic stemmer: it only has to map a tag's words and an item's words to the same key.
    """
    t = token
    if len(t) > 4 and t.endswith("ies"):
        t = t[:-3] + "i"
    elif len(t) > 4 and t.endswith(("sses", "shes", "ches", "xes", "zes")):
        t = t[:-2]
    elif len(t) > 3 and t.endswith("s") and not t.endswith(("ss", "us", "is")):
        t = t[:-1]
    if len(t) > 3 and t.endswith("ie"):
        t = t[:-1]
    elif len(t) > 3 and t.endswith("y"):
        t = t[:-1] + "i"
    return t


def content_stems(text: str) -> list[str]:
    """Stems of the non-stopword tokens, in order."""
    return [stem(t) for t in tokens(text) if t not in STOPWORDS]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
