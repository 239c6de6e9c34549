"""Incremental detokenization with stop strings, for engines that get token ids one by one.

An engine that produces token ids (the ``transformers`` engine) turns each output
sequence into text deltas with one :class:`TextStream`:

* incremental detokenization follows vLLM's prefix/read offset scheme: each step
  decodes a short window of tokens and keeps only what the new tokens added, and
  holds back text that ends in an incomplete UTF-8 character;
* stop strings are searched in all the text not yet handed out, and any suffix
  that may start a stop string is held back, so a stop string split across tokens
  is still caught and never emitted.

It only needs a ``decode`` function (token ids to text), so it works with any
tokenizer. (The ``vllm`` engine needs none of this: vLLM streams text it has
already detokenized and cut at the stop strings.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# Prompt tokens the detokenizer keeps as left context: SentencePiece-style tokenizers
# drop a word's leading space when it is the first token decoded.
CONTEXT_TOKENS = 5


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text``, if any."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


class TextStream:
    """The text of one output sequence, delta by delta, cut before its first stop string.

    Args:
        decode: token ids to text (e.g. ``tokenizer.decode(ids, skip_special_tokens=True)``).
        prompt_ids: the prompt; its last :data:`CONTEXT_TOKENS` ids are decoding context.
        stops: stop strings; the text ends before the earliest one.
    """

    def __init__(
        self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int], stops: Sequence[str]
    ) -> None:
        self.decode = decode
        self.stops = stops
        self.tokens: list[int] = list(prompt_ids[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)
        self.held = ""  # decoded text not yet handed out (may start a stop string)

    def append(self, token: int) -> None:
        """Add a generated token (decoded by the next :meth:`advance`)."""
        self.tokens.append(token)

    def advance(self, *, flush: bool) -> tuple[str, bool]:
        """Decode the tokens appended since the last call; returns ``(text, stopped)``.

        ``stopped``: a stop string turned up, ``text`` is all the text before it, and
        the sequence is over. Else with ``flush`` (the sequence has ended): all the
        text held so far. Else: the new text that cannot be the start of a stop
        string (maybe ``""``); the rest stays held.
        """
        self.held += self._decode_delta(flush=flush)
        cut = find_stop(self.held, self.stops) if self.stops else None
        if cut is not None:
            text, self.held = self.held[:cut], ""
            return text, True
        if flush:
            text, self.held = self.held, ""
            return text, False
        keep = stop_prefix_len(self.held, self.stops) if self.stops else 0
        text = self.held[: len(self.held) - keep]
        self.held = self.held[len(text) :]
        return text, False

    def _decode_delta(self, *, flush: bool) -> str:
        """New text since the last call (vLLM's prefix/read offsets)."""
        prefix = self.decode(self.tokens[self.prefix_offset : self.read_offset])
        full = self.decode(self.tokens[self.prefix_offset :])
        # a trailing U+FFFD is (usually) a multi-byte character whose other bytes are still to come
        if flush or (len(full) > len(prefix) and not full.endswith("\ufffd")):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            return full[len(prefix) :]
        return ""


__all__ = ["CONTEXT_TOKENS", "TextStream", "find_stop", "stop_prefix_len"]
