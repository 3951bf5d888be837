"""A tiny random llama-architecture model written as GGUF with the ``gguf`` package: a test fixture, never a tagger.

Two transformer blocks, hidden size 64, random weights: it writes nonsense. What it has is everything a real chat
GGUF has, so llama.cpp loads and runs it exactly as it would a real model:

* a byte-level BPE tokenizer (GPT-2 style): the 256 byte tokens, so it can spell any text (JSON included), plus
  merges that build the words of the prompts and of the generated world, so prompts and answers take a realistic
  number of tokens;
* ChatML control tokens and a ChatML chat template, read by llama-cpp-python's chat handler and its server;
* the llama hyper-parameters (heads, RoPE, RMS norm) in the GGUF metadata.

The tags backends constrain its output with a JSON-schema grammar, so every answer is well-formed even though
every word in it is random.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # bos, turn start, turn end (= eos)
JSON_PIECES = ['{"', '":', '",', '"}', '},', '}}', ' {"', ' "', '": ', '"tags', '"tag', '"score', '"scores']


def byte_symbols() -> list[str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (a space is 'Ġ'), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def merges_for(words: list[str], symbols: list[str]) -> list[tuple[str, str]]:
    """Left-to-right merges that build each word (and its space-prefixed form) from its bytes."""
    merges: dict[tuple[str, str], None] = {}
    for word in words:
        for form in (word, " " + word):
            pieces = [symbols[b] for b in form.encode("utf-8")]
            left = pieces[0]
            for right in pieces[1:]:
                merges.setdefault((left, right))
                left += right
    return list(merges)


def corpus_words(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(w for t in texts for w in re.findall(r"[a-z]+|\d+", t.lower()) if len(w) > 1))


def write_tiny_llama(path: Path, texts: list[str], seed: int = 0, dim: int = 64, layers: int = 2, heads: int = 4,
                     ff: int = 128, n_ctx: int = 4096) -> Path:
    """Write the model to ``path``; ``texts`` (prompts, titles) give the words the tokenizer spells in one token."""
    import gguf

    symbols = byte_symbols()
    merges = merges_for(corpus_words(texts) + JSON_PIECES, symbols)
    tokens = list(dict.fromkeys(symbols + [a + b for a, b in merges])) + CONTROL
    types = [gguf.TokenType.NORMAL] * (len(tokens) - len(CONTROL)) + [gguf.TokenType.CONTROL] * len(CONTROL)
    vocab = len(tokens)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("temarec tiny random llama (test fixture)")
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(dim)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(dim // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:  # numpy (rows, cols) = GGUF (cols, rows), as llama.cpp expects
        return rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), size=shape).astype(np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab, dim))  # (V, D)
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(dim, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{name}.weight", weight(dim, dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(dim, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ff, dim))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ff, dim))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(dim, ff))
    writer.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    writer.add_tensor("output.weight", weight(vocab, dim))  # (V, D)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
