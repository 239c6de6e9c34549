"""PII spans with Presidio's pattern recognizers: no spaCy model, no network, a few ms per prompt.

Presidio's ``AnalyzerEngine`` wants an NLP engine (its default loads, or downloads,
``en_core_web_lg``) and its e-mail recognizer asks ``tldextract`` for the public
suffix list over the network. Neither is acceptable on the gateway, so
:class:`PiiCheck` drives the recognizers itself: each is a Presidio
``EntityRecognizer`` called with no NLP artifacts. The number recognizers run
only on the text around its digits (:class:`_Windows`: a text without a digit
costs them nothing), and the check does the one thing the engine's lemma-based
context enhancer would have needed spaCy for: a weak match (a bare ``467 3395``,
a 9-digit passport number) counts only with a context word (``phone``, ``fax``,
``passport``) a few words before or just after it.

Where Presidio's own recognizer misses formats or is too slow, a recognizer here
replaces it: e-mail (anchored on ``@``, suffix checked against tldextract's
bundled snapshot, offline), phone (``phonenumbers`` over eight regions costs ~20 ms
on 9,000 characters and misses many international formats), card (12-19 digits,
any issuer prefix, Luhn) and IP (no CIDR ranges, no loopback or unspecified
addresses: networks and ``127.0.0.1`` identify nobody). IBAN (mod-97 and country
format), SSN, ITIN, NHS (mod 11), bank account and passport numbers are
Presidio's. The heavy import (``presidio_analyzer`` pulls in spaCy, torch and
transformers: ~3 s) is why the chain imports this module lazily.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import regex
from presidio_analyzer import EntityRecognizer, LocalRecognizer, Pattern, RecognizerResult
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    CryptoRecognizer,
    IbanRecognizer,
    NhsRecognizer,
    UrlRecognizer,
    UsBankRecognizer,
    UsItinRecognizer,
    UsLicenseRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)

from services.guardrails.base import Finding
from services.guardrails.redact_spans import merge_spans

__all__ = ["DEFAULT_ENTITIES", "SUPPORTED_ENTITIES", "PiiCheck", "redact"]

#: characters before / after a weak match searched for a context word
CONTEXT_BEFORE, CONTEXT_AFTER = 40, 16
_WORD = re.compile(r"[a-z]+")
#: what recognizers get for NLP artifacts: none (no spaCy); pattern recognizers do not read them
_NO_NLP: Any = None
#: the ``regex`` module (Presidio's) finds digit runs ~5x faster than ``re`` here
_DIGITS = regex.compile(r"\d+")
_SPACE, _SPACE_BEFORE = regex.compile(r"\s"), regex.compile(r"(?r)\s")  # (?r): searches backwards


class RegexRecognizer(LocalRecognizer):
    """A Presidio recognizer over a stdlib ``re`` pattern and a scoring function.

    ``score(match)`` returns the match's score, or None to drop it: the formats
    (dates, dotted quads, separators) are judged in Python, where a single regex
    would need a branch per country. The pattern's ``v`` group is the span.
    """

    def __init__(
        self, entity: str, pattern: re.Pattern[str], score: Callable[[re.Match[str]], float | None],
        context: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.pattern, self.score = pattern, score
        super().__init__(
            supported_entities=[entity], name=f"{entity.title()}Recognizer", context=list(context)
        )

    def load(self) -> None:  # nothing to load: the pattern is compiled
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        out = []
        for m in self.pattern.finditer(text):
            s = self.score(m)
            if s is not None:
                out.append(RecognizerResult(self.supported_entities[0], m.start("v"), m.end("v"), s))
        return out


# -- e-mail -----------------------------------------------------------------------------
_EMAIL_DOMAIN = re.compile(r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})\b(?!@)")
_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-'")


@functools.cache
def _suffixes() -> Any:
    """tldextract on its bundled public-suffix snapshot: no fetch, no disk cache."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


class EmailRecognizer(LocalRecognizer):
    """``local@domain.tld`` with a known public suffix (``x@host.local``, ``@app.route`` are not).

    Anchored on ``@``: a regex that may start at every word character costs ~0.3 ms
    on 9,000 characters; finding the ``@`` and walking left costs microseconds.
    """

    def __init__(self) -> None:
        super().__init__(supported_entities=["EMAIL_ADDRESS"], context=["email", "mail"])

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[RecognizerResult]:
        out = []
        for m in _EMAIL_DOMAIN.finditer(text):
            at = start = m.start()
            while start > 0 and text[start - 1] in _LOCAL_CHARS:
                start -= 1
            while start < at and text[start] in ".'-":
                start += 1
            if start == at or text[at - 1] == ".":
                continue
            parts = _suffixes()(m.group(1))
            if parts.suffix and parts.domain:
                out.append(RecognizerResult("EMAIL_ADDRESS", start, m.end(), 1.0))
        return out


# -- phone ------------------------------------------------------------------------------
_PHONE = re.compile(
    r"(?<![\w.\-/@#&=%$])(?P<v>"
    r"(?P<cc>\+[1-9]\d{0,2}(?:[ .-]?\(0\))?[ .-]?)?"  # +41, +41 (0); E.164 codes never start with 0
    r"(?P<area>\(\d{1,5}\)[ .-]?)?"  # (602), (08)
    r"(?P<body>\d+(?:[ .-]\d+){0,6})"
    r"(?P<ext>(?<=\d\d\d)[ ]?(?:x|ext\.?|extension)[ ]?\d{1,6})?"  # x4587, not 0x10
    r")(?![\w]|[.\-/]\d)"
)
_PHONE_CONTEXT = (
    "phone", "telephone", "tel", "mobile", "mob", "cell", "cellphone", "fax", "call", "calling", "called",
    "text", "sms", "whatsapp", "dial", "ring", "reach", "contact", "office", "desk", "home",
    "work", "landline", "hotline", "voicemail", "message", "messages", "answering", "answer",
    # "number" alone is a card's, a licence's, an order's as often: only these say whose
    "my number", "your number", "his number", "her number", "their number", "our number",
)  # fmt: skip
_YEAR = re.compile(r"(?:19|20)\d\d$")


def _date_like(groups: list[str]) -> bool:
    lens = [len(g) for g in groups]
    if lens == [4, 2, 2]:
        return bool(_YEAR.match(groups[0])) and 1 <= int(groups[1]) <= 12 and 1 <= int(groups[2]) <= 31
    if lens == [2, 2, 4]:
        return bool(_YEAR.match(groups[2])) and int(groups[0]) <= 31 and int(groups[1]) <= 31
    return lens == [4, 4] and all(_YEAR.match(g) for g in groups)  # 1999-2024


def _phone_score(m: re.Match[str]) -> float | None:
    """0.7 for formats only a phone number has, 0.4 (needs a context word) for the rest, None: not one."""
    body = m.group("body")
    seps = set(re.findall(r"[ .-]", body))
    if len(seps) > 1:  # "2003-08-28 12": mixed separators are dates and tables, not numbers
        return None
    groups = re.split(r"[ .-]", body)
    cc, area = m.group("cc"), m.group("area")
    digits = sum(c.isdigit() for c in (cc or "") + (area or "") + body)
    if not 7 <= digits <= 15 or len(set(re.sub(r"\D", "", body))) == 1:
        return None
    if not (cc or area) and (_date_like(groups) or (seps == {"."} and len(groups) == 4)):
        return None  # a date or a dotted quad (an IP, a version)
    lens = [len(g) for g in groups]
    national = digits <= 12 or body.startswith("00")  # longer without a country code: a card, an IBAN
    if (
        cc
        or area
        or m.group("ext")
        or lens == [3, 3, 4]
        or (national and len(groups) >= 4 and min(lens) >= 2)
    ):
        return 0.7
    return 0.4


# -- card -------------------------------------------------------------------------------
class CardRecognizer(CreditCardRecognizer):
    """Presidio's Luhn check over 12-19 digits in groups (its own pattern misses 12-digit Maestro
    and 2-series Mastercard / JCB numbers: 26 of the 136 cards of the synthetic set)."""

    PATTERNS = [Pattern("Card (Luhn)", r"(?<![\w.,+\-])\d{4,19}(?:[ -]\d{3,7}){0,4}(?![\w\-]|[.,]\d)", 0.3)]

    def __init__(self) -> None:
        super().__init__(patterns=self.PATTERNS)

    def validate_result(self, pattern_text: str) -> bool:
        digits = re.sub(r"\D", "", pattern_text)
        groups = re.split(r"[ -]", pattern_text)
        if (
            not 12 <= len(digits) <= 19
            or len(set(digits)) == 1
            or len(set(re.findall(r"[ -]", pattern_text))) > 1
        ):
            return False
        if len(groups) > 1 and min(len(g) for g in groups[:-1]) < 4:
            return False
        return bool(super().validate_result(digits))


# -- IP ---------------------------------------------------------------------------------
_IPV4 = re.compile(
    r"(?<![\w.])(?P<v>(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))(?!\w|\.\d|/\d)"
)
_IPV6 = re.compile(r"(?<![\w:.])(?P<v>(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4})(?![\w:]|\.\d|/\d)")


def _ip_score(m: re.Match[str]) -> float | None:
    """An address that could be a host's: not a network, a loopback, a netmask or ``::``-style stub."""
    v = m.group("v")
    try:
        ip = ipaddress.ip_address(v)
    except ValueError:
        return None
    if ip.version == 6 and sum(1 for g in v.split(":") if g) < 4:
        return None  # "1::2" is Python slicing far more often than an address
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
        return None
    if ip.version == 4 and (ip.is_reserved or v.startswith("255.")):
        return None  # 240/4, a netmask (IPv6 "reserved" is all but 2000::/3: kept)
    return 0.9


class SsnRecognizer(UsSsnRecognizer):
    """Presidio's ``ddd-dd-dddd`` (medium) pattern and its invalidation, but the published sample
    numbers (``123-45-6789``) still count: in a prompt or a log they read as an SSN all the same."""

    def __init__(self) -> None:
        super().__init__(patterns=[p for p in UsSsnRecognizer.PATTERNS if "medium" in p.name])

    def invalidate_result(self, pattern_text: str) -> bool:
        if pattern_text[0] == "9":
            return True  # area 9xx is never issued: those are ITINs
        if re.sub(r"\D", "", pattern_text) in ("123456789", "987654320", "078051120"):
            return len(set(re.findall(r"[ .-]", pattern_text))) > 1
        return bool(super().invalidate_result(pattern_text))


@dataclass(frozen=True)
class _Entity:
    """How one entity is found: its recognizer, where it runs, its longest span."""

    build: Callable[[], EntityRecognizer]
    max_chars: int
    #: None: the recognizer runs on the digit windows (see :class:`_Windows`); else on the whole
    #: text, and only when the text matches this gate
    gate: re.Pattern[str] | None = None
    #: weak everywhere: reported only with one of the recognizer's context words near it
    context_only: bool = False


_ENTITIES: dict[str, _Entity] = {
    "EMAIL_ADDRESS": _Entity(EmailRecognizer, 64, gate=re.compile("@")),
    "PHONE_NUMBER": _Entity(
        lambda: RegexRecognizer("PHONE_NUMBER", _PHONE, _phone_score, _PHONE_CONTEXT), 32
    ),
    "CREDIT_CARD": _Entity(CardRecognizer, 25),
    "IBAN_CODE": _Entity(
        lambda: IbanRecognizer(regex_flags=regex.DOTALL | regex.MULTILINE | regex.IGNORECASE), 42
    ),
    "US_SSN": _Entity(SsnRecognizer, 11),
    "IP_ADDRESS": _Entity(lambda: RegexRecognizer("IP_ADDRESS", _IPV4, _ip_score, ["ip", "ipv4"]), 15),
    "IPV6": _Entity(lambda: RegexRecognizer("IP_ADDRESS", _IPV6, _ip_score, ["ip", "ipv6"]), 45),
    "US_ITIN": _Entity(UsItinRecognizer, 11),
    "UK_NHS": _Entity(NhsRecognizer, 12, context_only=True),
    "US_BANK_NUMBER": _Entity(UsBankRecognizer, 17, context_only=True),
    "US_PASSPORT": _Entity(UsPassportRecognizer, 9, context_only=True),
    "US_DRIVER_LICENSE": _Entity(UsLicenseRecognizer, 19, context_only=True),
    "CRYPTO": _Entity(CryptoRecognizer, 62),
    "URL": _Entity(UrlRecognizer, 256, gate=re.compile(r"\w\.[a-z]{2}")),
}


class _Windows:
    """The text around its digits, joined by blank lines: where every number recognizer runs.

    Each digit run widened to its whitespace-delimited token and one token either side
    (an IBAN's letter groups, a phone's ``+41 (0)``), overlapping windows merged. No
    pattern here matches across a newline, and each window starts and ends at
    whitespace, so a recognizer finds in the joined text exactly what it finds in the
    whole, at a fraction of the cost: each regex pass over 9,000 characters is
    ~0.2-0.4 ms, over the windows of an ordinary prompt a few microseconds.
    """

    def __init__(self, text: str) -> None:
        spans: list[list[int]] = []
        core = -1  # end of the token holding the last digit run: later runs in it change nothing
        for m in _DIGITS.finditer(text):
            if m.start() < core:
                continue
            core = _token_end(text, m.end())
            e = _token_end(text, core + 1) if core < len(text) else core
            s = _token_start(text, m.start())
            s = _token_start(text, s - 1) if s > 0 else s
            if spans and s <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], e)
            else:
                spans.append([s, e])
        self.origins = [s for s, _ in spans]
        self.starts: list[int] = []
        parts, pos = [], 0
        for s, e in spans:
            self.starts.append(pos)
            parts.append(text[s:e])
            pos += e - s + 2
        self.text = "\n\n".join(parts)

    def origin(self, start: int, end: int) -> tuple[int, int] | None:
        """The span in the original text (None if it crosses a joint, which no pattern should)."""
        i = bisect.bisect_right(self.starts, start) - 1
        inside = self.starts[i] + len(self.text)  # upper bound, refined below
        if i + 1 < len(self.starts):
            inside = self.starts[i + 1] - 2
        if end > inside:
            return None
        shift = self.origins[i] - self.starts[i]
        return start + shift, end + shift


def _token_start(text: str, i: int) -> int:
    """Start of the whitespace-delimited token holding ``text[i]``."""
    m = _SPACE_BEFORE.search(text, 0, i)
    return m.end() if m else 0


def _token_end(text: str, i: int) -> int:
    """End of the token holding ``text[i - 1]``: the next whitespace at or after ``i``, or the end."""
    m = _SPACE.search(text, i)
    return m.start() if m else len(text)


#: detected unless configured otherwise: the goals' five plus the cheap, checksummed or context-gated rest
DEFAULT_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "US_ITIN",
    "UK_NHS", "US_BANK_NUMBER", "US_PASSPORT",
)  # fmt: skip
#: every entity a check can be configured with (US_DRIVER_LICENSE, CRYPTO and URL are off by default:
#: driver-licence formats are any letter-and-digits token, and URLs are everywhere in code and docs)
SUPPORTED_ENTITIES: tuple[str, ...] = (*DEFAULT_ENTITIES, "US_DRIVER_LICENSE", "CRYPTO", "URL")


class PiiCheck:
    """The ``pii`` span check.

    Args:
        entities: entity types to detect (default :data:`DEFAULT_ENTITIES`; see
            :data:`SUPPORTED_ENTITIES`). ``IP_ADDRESS`` covers IPv4 and IPv6.
        score_threshold: a finding's score must reach it. Validated matches (Luhn,
            mod 97, a known suffix) score 1.0, phone formats 0.7, Presidio's medium
            patterns 0.5; weak matches score 0.4 or less and pass only with a
            context word (+0.35, as Presidio's context enhancer).
        allow_list: values never reported (compared case-insensitively), e.g. a
            support address that may appear in answers.
    """

    kind = "pii"
    spans = True

    def __init__(
        self,
        entities: Sequence[str] | None = None,
        score_threshold: float = 0.5,
        allow_list: Sequence[str] = (),
        context_boost: float = 0.35,
    ) -> None:
        wanted = list(DEFAULT_ENTITIES if entities is None else entities)
        unknown = sorted(set(wanted) - set(SUPPORTED_ENTITIES))
        if unknown:
            raise ValueError(f"entities: unknown {unknown}; supported: {list(SUPPORTED_ENTITIES)}")
        if not 0 < score_threshold <= 1:
            raise ValueError(f"score_threshold must be in (0, 1], got {score_threshold}")
        self.entities = tuple(dict.fromkeys(wanted))
        keys = [e for e in self.entities for e in ((e, "IPV6") if e == "IP_ADDRESS" else (e,))]
        self._runs = [(_ENTITIES[k], _ENTITIES[k].build()) for k in keys]
        self.score_threshold = score_threshold
        self.context_boost = context_boost
        self.allow = frozenset(a.casefold() for a in allow_list)
        #: the longest entity reported whole (the stream hold-back covers it)
        self.max_span_chars = max((spec.max_chars for spec, _ in self._runs), default=0)
        self._rank = {e: i for i, e in enumerate(self.entities)}
        if "EMAIL_ADDRESS" in self.entities:
            _suffixes()  # load the suffix snapshot now (~50 ms), not on the first e-mail of a request

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        return [self.find(t) for t in texts]

    def find(self, text: str) -> list[Finding]:
        """The PII spans of one text, sorted; equal spans of two entities keep the higher score."""
        found: dict[tuple[int, int], Finding] = {}
        wins: _Windows | None = None
        for spec, rec in self._runs:
            if spec.gate is None:
                wins = _Windows(text) if wins is None else wins
                if not wins.text:
                    continue
                results = rec.analyze(wins.text, rec.supported_entities, _NO_NLP)
                spans = [wins.origin(r.start, r.end) for r in results]
            elif spec.gate.search(text):
                results = rec.analyze(text, rec.supported_entities, _NO_NLP)
                spans = [(r.start, r.end) for r in results]
            else:
                continue
            ctx = {w.lower() for w in rec.context}
            for r, span in zip(results, spans, strict=True):
                if span is None:
                    continue
                start, end = span
                score = float(r.score)
                if spec.context_only or score < self.score_threshold:
                    if not _has_context(text, start, end, ctx):
                        continue
                    # a context word confirms a weak match (Presidio's enhancer alone would leave a
                    # 0.05 bank-number pattern at 0.4, under any useful threshold)
                    score = max(min(1.0, score + self.context_boost), self.score_threshold)
                if score < self.score_threshold or text[start:end].casefold() in self.allow:
                    continue
                f = Finding(r.entity_type, start, end, round(score, 4))
                old = found.get(span)
                if old is None or (f.score, -self._rank.get(f.label, 99)) > (
                    old.score,
                    -self._rank.get(old.label, 99),
                ):
                    found[span] = f
        return _drop_contained(found.values())


def _drop_contained(findings: Iterable[Finding]) -> list[Finding]:
    """Findings not inside a surer one: the digit groups of an IBAN are not also a phone number."""
    ordered = sorted(findings, key=lambda f: (f.start, -f.end))
    return [
        f for f in ordered
        if not any(g is not f and g.start <= f.start and f.end <= g.end and g.score > f.score for g in ordered)
    ]  # fmt: skip


def _has_context(text: str, start: int, end: int, words: set[str]) -> bool:
    """A context word in the few words before (or just after) the match: Presidio's enhancer without lemmas."""
    if not words:
        return False
    window = text[max(0, start - CONTEXT_BEFORE) : start].lower()
    before, after = _WORD.findall(window), _WORD.findall(text[end : end + CONTEXT_AFTER].lower())
    if words.intersection(before[-6:]) or words.intersection(after[:2]):
        return True
    return any(" " in w and w in window for w in words)  # phrases: "national health service"


def redact(
    text: str,
    findings: Sequence[Finding],
    style: Literal["label", "mask"] = "label",
    labels: Mapping[str, str] | None = None,
) -> str:
    """``text`` with every finding replaced: ``[EMAIL_ADDRESS]`` (``style="label"``, labels renamed
    through ``labels``) or ``*`` of the same length (``"mask"``). Overlapping or touching spans are
    merged first, as the stream redacts them, so one entity inside another is one replacement."""
    parts, pos = [], 0
    for s, e, label in merge_spans(findings):
        s, e = max(s, pos), min(e, len(text))
        if e <= s:
            continue
        parts.append(text[pos:s])
        parts.append("*" * (e - s) if style == "mask" else f"[{(labels or {}).get(label, label)}]")
        pos = e
    parts.append(text[pos:])
    return "".join(parts)
