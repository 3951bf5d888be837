"""Tagging backends: build the configured vocabulary and matching backends (heavy imports stay inside)."""

from __future__ import annotations

from temarec.config import TagsConfig
from temarec.tags.backends.base import MatchBackend, VocabBackend
from temarec.cache import Cache
from temarec.tags.encoder import Encoder


def _transport(kind: str, cfg: TagsConfig):
    if kind == "openai":
        from temarec.tags.backends.openai import OpenAITransport

        return OpenAITransport(cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout_s, cfg.structured_output)
    from temarec.tags.backends.llamacpp import LlamaCppTransport

    return LlamaCppTransport(cfg.gguf_path)


def make_vocab_backend(cfg: TagsConfig, cache: Cache) -> VocabBackend:
    if cfg.vocab_backend == "mined":
        from temarec.tags.backends.mined import MinedVocab

        return MinedVocab(Encoder(cfg.encoder, cache), seed=cfg.seed)
    from temarec.tags.backends.base import CallStats
    from temarec.tags.backends.llm import Chat, LLMVocab

    chat = Chat(_transport(cfg.vocab_backend, cfg), cfg.max_retries, cfg.retry_backoff_s, CallStats())
    return LLMVocab(chat, cache)


def make_match_backend(cfg: TagsConfig, cache: Cache) -> MatchBackend:
    if cfg.match_backend == "embedding":
        from temarec.tags.backends.embedding import EmbeddingMatch

        return EmbeddingMatch(Encoder(cfg.encoder, cache), cfg.embed_cos_range)
    if cfg.match_backend == "keyword":
        from temarec.tags.backends.keyword import KeywordMatch

        return KeywordMatch()
    from temarec.tags.backends.base import CallStats
    from temarec.tags.backends.llm import Chat, LLMMatcher

    chat = Chat(_transport(cfg.match_backend, cfg), cfg.max_retries, cfg.retry_backoff_s, CallStats())
    return LLMMatcher(chat, cache, cfg.tags_per_request, cfg.concurrency)
