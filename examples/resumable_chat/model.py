"""The fake model: a deterministic answer of a few hundred tokens per
question, so that a test (or a person) knows the exact text to expect."""

from __future__ import annotations

import hashlib
import random

WORDS = [
    "cache", "stream", "token", "redis", "replica", "answer", "browser", "reload", "instance", "proxy",
    "event", "resume", "subscriber", "producer", "region", "namespace", "prefix", "cluster", "latency",
    "steady", "pace", "model", "question", "deterministic", "abort", "heartbeat", "reconnect", "upstream",
    "nginx", "buffer", "tab",
]

#: Tokens in every answer.
TOKENS = 300


def answer_tokens(question: str, count: int = TOKENS) -> list[str]:
    """The answer to ``question``: ``count`` tokens (a word and a space, a
    sentence ends every 8 to 16 words), the same on every instance."""
    seed = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    rng = random.Random(seed)
    tokens: list[str] = []
    sentence = 0
    end = rng.randint(8, 16)
    for index in range(count):
        word = rng.choice(WORDS)
        if sentence == 0:
            word = word.capitalize()
        sentence += 1
        last = index == count - 1
        if sentence == end or last:
            tokens.append(word + ".")
            sentence, end = 0, rng.randint(8, 16)
        else:
            tokens.append(word)
        if not last:
            tokens[-1] += " "
    return tokens


def answer_text(question: str, count: int = TOKENS) -> str:
    """The whole answer, as the page shows it when the stream is done."""
    return "".join(answer_tokens(question, count))
