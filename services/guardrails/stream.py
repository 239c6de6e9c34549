"""Output checks on a stream, behind a bounded hold-back.

The newest ``holdback_tokens`` of each choice are held at the gateway; every
``scan_every_tokens`` new tokens the output chain scans the held text (with the
tail of what was already released as left context) and releases the oldest
chunks, down to the hold-back. Because a span check's longest entity
(``max_span_chars``) fits in the hold-back, a span split across chunks, at any
offset, is complete in the held text before any of it is released: it is
redacted in place, or the choice ends with ``finish_reason: "content_filter"``
before the first character of it leaves. At the end of a choice everything held
is scanned once more and released.

Redacting a chunk drops its logprobs (they would spell out the tokens). The
chunks the client sees keep the engine's token counts; usage is counted from the
engine's chunks, so a blocked or redacted answer still bills what was generated.
The first token reaches the client once ``holdback_tokens + 1`` tokens were
generated, and the client trails the engine by fewer than ``holdback_tokens +
scan_every_tokens`` tokens: that is the hold-back's TTFT cost
(benchmarks/guardrails.py measures it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.generation.protocol import GenerationChunk
from services.guardrails.base import Finding
from services.guardrails.chain import CheckRun, Decision, Guardrails, decide, error_result
from services.guardrails.config import ChainConfig
from services.guardrails.redact_spans import merge_spans

__all__ = ["OutputGuard"]

logger = logging.getLogger("llmops.guardrails")

#: released text kept as left context of the next scan (word boundaries, classifier windows)
CONTEXT_CHARS = 512
#: the char floor of the hold-back never exceeds this, whatever a check claims
MAX_HOLD_CHARS = 256


@dataclass
class _Held:
    text: str
    tokens: int
    logprobs: Any
    prompt_tokens: int | None
    finish_reason: str | None
    redacted: bool = False


@dataclass
class _Choice:
    held: list[_Held] = field(default_factory=list)
    context: str = ""
    unscanned: int = 0
    ended: bool = False
    swallowed: int = 0  # tokens the engine generated after the choice was ended

    @property
    def held_tokens(self) -> int:
        return sum(h.tokens for h in self.held)


class OutputGuard:
    """The output chain of one response (all its choices)."""

    def __init__(self, guardrails: Guardrails, model: str, runs: list[CheckRun], chain: ChainConfig) -> None:
        self.guardrails = guardrails
        self.model = model
        self.runs = runs
        self.holdback = chain.holdback_tokens
        self.every = chain.scan_every_tokens
        spans = [int(getattr(r.check, "max_span_chars", 0) or 0) for r in runs if r.spans]
        self.min_chars = min(max(spans, default=0), MAX_HOLD_CHARS)
        self.decisions: dict[str, Decision] = {r.name: Decision(r.name, "output") for r in runs}
        self._choices: dict[int, _Choice] = {}
        self._counted = False

    @classmethod
    def for_model(cls, guardrails: Guardrails | None, model: str) -> OutputGuard | None:
        if guardrails is None:
            return None
        runs = guardrails.output_runs(model)
        return cls(guardrails, model, runs, guardrails.chain(model)) if runs else None

    # -- the stream -------------------------------------------------------------------
    async def feed(self, ch: GenerationChunk) -> list[GenerationChunk]:
        """Take one engine chunk; return the chunks that may go to the client now."""
        st = self._choices.setdefault(ch.index, _Choice())
        if st.ended:  # a blocked choice: the engine's remaining text never leaves
            st.swallowed += ch.num_tokens
            return []
        st.held.append(_Held(ch.text, ch.num_tokens, ch.logprobs, ch.prompt_tokens, ch.finish_reason))
        st.unscanned += ch.num_tokens
        if ch.finish_reason is not None:
            return await self._step(ch.index, st, final=True)
        held_chars = sum(len(h.text) for h in st.held)
        if st.unscanned >= self.every and st.held_tokens > self.holdback and held_chars > self.min_chars:
            return await self._step(ch.index, st, final=False)
        return []

    async def finish(self) -> list[GenerationChunk]:
        """The stream ended: scan and release what every open choice still holds."""
        out: list[GenerationChunk] = []
        for idx, st in sorted(self._choices.items()):
            if not st.ended and st.held:
                out += await self._step(idx, st, final=True)
        return out

    def all_ended(self, n: int) -> bool:
        """Every one of ``n`` choices was ended by a block (the engine may stop)."""
        return len(self._choices) == n and all(st.ended for st in self._choices.values())

    def decisions_list(self) -> list[Decision]:
        return list(self.decisions.values())

    def count(self) -> None:
        """Record the response's decisions in metrics (once)."""
        if not self._counted:
            self._counted = True
            self.guardrails.count(self.decisions_list(), self.model)

    async def apply(self, items: Sequence[Any]) -> list[Any]:
        """A unary response's items, through the same chain (chunks replaced, the rest kept)."""
        out: list[Any] = []
        for item in items:
            out += await self.feed(item) if isinstance(item, GenerationChunk) else [item]
        out += await self.finish()
        self.count()
        # the tokens generated after a block still count (usage is billed on what was generated)
        for idx, st in self._choices.items():
            if st.swallowed:
                last = max(i for i, c in enumerate(out) if isinstance(c, GenerationChunk) and c.index == idx)
                out[last] = dataclasses.replace(out[last], num_tokens=out[last].num_tokens + st.swallowed)
        return out

    # -- one scan ---------------------------------------------------------------------
    def _scan(self, text: str) -> list[tuple[CheckRun, list[Finding] | Exception, float]]:
        results: list[tuple[CheckRun, list[Finding] | Exception, float]] = []
        for run in self.runs:
            t0 = time.perf_counter()
            try:
                found: list[Finding] | Exception = run.check.scan([text])[0]
            except Exception as exc:
                logger.warning("guardrail check %s failed on output", run.name, exc_info=True)
                found = exc
            results.append((run, found, time.perf_counter() - t0))
        return results

    async def _step(self, idx: int, st: _Choice, final: bool) -> list[GenerationChunk]:
        held_text = "".join(h.text for h in st.held)
        off = len(st.context)
        results = await asyncio.to_thread(self._scan, st.context + held_text)
        st.unscanned = 0
        cut: int | None = None  # a block: release held text before this offset, then end the choice
        redactions: list[Finding] = []
        for run, found, seconds in results:
            d = self.decisions[run.name]
            if isinstance(found, Exception):
                result = error_result(run.config)
                d.merge(result, (), None, seconds)
                if result == "error_closed":
                    cut = 0
                continue
            # what lies wholly in the released context was decided when it was held
            mine = [f for f in found if f.end > off]
            result = decide(run.config, mine)
            score = max((f.score for f in mine), default=None) if not run.spans else None
            d.merge(result, [f.label for f in mine], score, seconds)
            if result == "redacted":
                redactions += [Finding(f.label, max(f.start - off, 0), f.end - off, f.score) for f in mine]
            elif result == "blocked":
                at = min(max(f.start - off, 0) for f in mine) if run.spans else 0
                cut = at if cut is None else min(cut, at)
        if redactions:
            self._redact(st, redactions)
        if cut is not None:
            return self._end(idx, st, cut)
        if final:
            release = len(st.held)
        else:
            release, tokens, chars = 0, st.held_tokens, sum(len(h.text) for h in st.held)
            for h in st.held:
                if tokens - h.tokens < self.holdback or chars - len(h.text) < self.min_chars:
                    break
                release, tokens, chars = release + 1, tokens - h.tokens, chars - len(h.text)
        return self._release(idx, st, release)

    def _redact(self, st: _Choice, findings: list[Finding]) -> None:
        spans = merge_spans(findings)
        a = 0
        for h in st.held:
            b = a + len(h.text)
            pieces, pos, touched = [], a, False
            for s, e, label in spans:
                if e <= a or s >= b:
                    continue
                touched = True
                if s >= pos:
                    pieces.append(h.text[pos - a : s - a])
                    if s >= a:
                        pieces.append(f"[{label}]")
                pos = max(pos, min(e, b))
            if touched:
                pieces.append(h.text[pos - a :])
                h.text, h.logprobs, h.redacted = "".join(pieces), None, True
            a = b

    def _release(self, idx: int, st: _Choice, n: int) -> list[GenerationChunk]:
        out = []
        for h in st.held[:n]:
            out.append(
                GenerationChunk(
                    index=idx,
                    text=h.text,
                    num_tokens=h.tokens,
                    finish_reason=h.finish_reason,  # type: ignore[arg-type]
                    logprobs=h.logprobs,
                    prompt_tokens=h.prompt_tokens,
                )
            )
            st.context = (st.context + h.text)[-CONTEXT_CHARS:]
        del st.held[:n]
        return out

    def _end(self, idx: int, st: _Choice, cut: int) -> list[GenerationChunk]:
        """Release the held text before ``cut``, then end the choice with ``content_filter``."""
        out, pos = [], 0
        prompt_tokens = next((h.prompt_tokens for h in st.held if h.prompt_tokens is not None), None)
        sent_prompt = False
        for h in st.held:
            if pos >= cut:
                break
            text = h.text[: cut - pos]
            whole = len(text) == len(h.text)
            out.append(
                GenerationChunk(
                    index=idx,
                    text=text,
                    num_tokens=h.tokens,
                    logprobs=h.logprobs if whole else None,
                    prompt_tokens=h.prompt_tokens,
                )
            )
            sent_prompt = sent_prompt or h.prompt_tokens is not None
            pos += len(h.text)
        dropped = sum(h.tokens for h in st.held) - sum(c.num_tokens for c in out)
        out.append(
            GenerationChunk(
                index=idx,
                text="",
                num_tokens=dropped,
                finish_reason="content_filter",
                prompt_tokens=None if sent_prompt else prompt_tokens,
            )
        )
        st.held.clear()
        st.ended = True
        return out
