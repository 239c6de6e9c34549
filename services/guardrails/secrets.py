"""The ``secrets`` span check: API keys, tokens and private keys in prompts and answers.

Provider credentials are found by their documented prefixes and shapes (AWS key
ids, GitHub / GitLab / Hugging Face / npm tokens, ``sk-`` keys of OpenAI and
Anthropic style, Slack, Stripe, Google, SendGrid, JWTs, Bearer tokens, passwords
in URLs). A PEM private key is found by its header alone, so a stream can be
stopped before the key body is released; when the body follows, the span covers it.
Anything else counts only when it is *assigned to a secret-ish name*
(``password = ...``, ``"api_key": ...``, ``AWS_SECRET_ACCESS_KEY=...``) and looks
like a value rather than code: a git SHA, a UUID or a base64 image is not a secret
on its own, ``token = tokens[0]`` or ``api_key: str | None = None`` is not one at all.

Every pattern starts at a literal (``AKIA``, ``ghp_``, ``-----BEGIN``, a keyword),
and a regex runs only where its literal occurs: ``str.find`` costs microseconds
on 9,000 characters where a regex pass costs ~0.2-0.8 ms.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from services.guardrails.base import Finding

__all__ = ["LABELS", "SecretsCheck"]

_PEM = (
    r"-----BEGIN(?: [A-Z0-9]+)* PRIVATE KEY(?: BLOCK)?-----"
    r"(?:\r?\n(?:[A-Za-z0-9+/=]{1,80}|[A-Za-z-]+: [^\r\n]*)|\r?\n(?=\r?\n))*"  # the body, headers, blank lines
    r"(?:\r?\n-----END(?: [A-Z0-9]+)* PRIVATE KEY(?: BLOCK)?-----)?"
)
#: (label, literals that start it, pattern matched at each literal's position)
_TOKENS: tuple[tuple[str, tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (label, lits, re.compile(p))
    for label, lits, p in (
        ("PRIVATE_KEY", ("-----BEGIN",), _PEM),
        ("AWS_ACCESS_KEY_ID", ("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
         r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])"),
        ("GITHUB_TOKEN", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
         r"\b(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,255})(?![A-Za-z0-9])"),
        ("GITLAB_TOKEN", ("glpat-",), r"\bglpat-[A-Za-z0-9_-]{20,}"),
        ("ANTHROPIC_API_KEY", ("sk-ant-",), r"\bsk-ant-[A-Za-z0-9_-]{20,}"),
        ("OPENAI_API_KEY", ("sk-",), r"\bsk-(?!ant-)[A-Za-z0-9_-]{20,}"),
        ("STRIPE_KEY", ("sk_live_", "sk_test_", "rk_live_", "rk_test_"), r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),
        ("SLACK_TOKEN", ("xox", "xapp-"), r"\b(?:xox[abposre]|xapp-\d)-[A-Za-z0-9-]{10,}"),
        ("SLACK_WEBHOOK", ("hooks.slack.com/",),
         r"hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+"),
        ("GOOGLE_API_KEY", ("AIza",), r"\bAIza[0-9A-Za-z_-]{35}"),
        ("HUGGINGFACE_TOKEN", ("hf_",), r"\bhf_[A-Za-z0-9]{34,}"),
        ("NPM_TOKEN", ("npm_",), r"\bnpm_[A-Za-z0-9]{36}(?![A-Za-z0-9])"),
        ("SENDGRID_KEY", ("SG.",), r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
        ("JWT", ("eyJ",), r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
        ("BEARER_TOKEN", ("bearer",), r"(?i)\bbearer[ \t]+(?P<v>[A-Za-z0-9._~+/-]{8,}=*)"),
        ("URL_CREDENTIALS", ("://",), r"://[^\s:/@\"'<>]{1,64}:(?P<v>[^\s:/@\"'<>]{3,128})@"),
    )
)  # fmt: skip
_GENERIC = "SECRET"
#: every label the check reports (log redaction maps them all to [SECRET])
LABELS: tuple[str, ...] = (
    *dict.fromkeys(label for label, _, _ in _TOKENS),
    "AWS_SECRET_ACCESS_KEY",
    _GENERIC,
)

#: names a value is a secret under; the name must end with one ("max_tokens", "token_count" do not)
_KEYWORDS = ("password", "passwd", "pwd", "passphrase", "secret", "token", "api_key", "api-key", "apikey",
             "access_key", "accesskey", "private_key", "credential", "credentials", "auth_key")  # fmt: skip
_PASSWORDISH = ("password", "passwd", "pwd", "passphrase")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_.-]")
_VALUE = re.compile(r"[\"']?[ \t]{0,3}(?::=|=>|:|=)[ \t]{0,3}(?P<q>[\"'`]?)(?P<v>[^\s\"'`,;)\]}>]{6,256})")
_PLACEHOLDER = re.compile(
    r"(?i)^(?:x+|\*+|\.+|-+|changeme|change_me|password|passw0rd|secret|token|none|null|nil|true|false|"
    r"undefined|empty|redacted|example|sample|dummy|placeholder|test|testing|default|string|str|bytes)$"
    r"|your[_-]|<|\$|\{|%\(|\.\.\.|example|placeholder|redacted|dummy"
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$|^[A-Za-z_]\w*(?:\.\w+)+$")
_CODE = re.compile(r"[()\[]|^(?:/|\./|~/|https?:)|^\d+(?:\.\d+)*$")
_SLUG = re.compile(r"^(?:[a-z]+(?:[-_.][a-z]+)*|[A-Z]+(?:[-_][A-Z]+)*)$")
_KEBAB = re.compile(r"^[a-z]+(?:-[a-z]+)+$")
_CONT = re.compile(
    r"(?P<v>[A-Za-z0-9+/=_.~-]+|(?:\r?\n(?:[A-Za-z0-9+/=]{1,80}|-----END[A-Z0-9 ]* PRIVATE KEY(?: BLOCK)?-----))+)"
)


#: lower-casing that keeps every index (``str.lower`` may not: "İ" becomes two characters)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(text: str) -> str:
    """``text`` lower-cased with every index kept (``str.translate`` is ~10x slower: only the fallback)."""
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


def _entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _classes(s: str) -> int:
    return sum((any(c.islower() for c in s), any(c.isupper() for c in s), any(c.isdigit() for c in s),
                any(not c.isalnum() for c in s)))  # fmt: skip


def _value_ok(value: str, quoted: bool, passwordish: bool, min_entropy: float) -> bool:
    """True for a value that reads as a credential, not code, a placeholder or a name."""
    if _PLACEHOLDER.search(value) or _CODE.search(value) or _SLUG.match(value):
        return False
    if _IDENTIFIER.match(value) and not any(c.isdigit() for c in value):
        return False  # password=password_var, token=settings.TOKEN
    if passwordish:
        return len(value) >= 6 and _classes(value) >= 2
    if not quoted and not any(c.isdigit() for c in value):
        return False  # an unquoted word in code or YAML is a reference, not a value
    return len(value) >= (8 if quoted else 12) and _classes(value) >= 2 and _entropy(value) >= min_entropy


class SecretsCheck:
    """The ``secrets`` span check.

    Args:
        generic: also report values assigned to secret-ish names (``SECRET``).
        min_entropy: bits per character a generic (non-password) value needs.
    """

    kind = "secrets"
    spans = True
    #: provider tokens are matched from their prefix: the hold-back must show the prefix and
    #: enough of the body at once (40 characters) and, for a redaction to cover it whole, the
    #: token itself: 96 covers AWS, GitHub (93), Slack, Google, npm, most JWTs and assignments.
    #: Longer tokens (OpenAI project keys, PEM bodies) are still caught: what follows a
    #: redacted ``[OPENAI_API_KEY]`` marker in the next scan is the same secret's tail.
    max_span_chars = 96

    def __init__(self, generic: bool = True, min_entropy: float = 3.0) -> None:
        self.generic = generic
        self.min_entropy = min_entropy

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        return [self.find(t) for t in texts]

    def find(self, text: str) -> list[Finding]:
        """The secret spans of one text, sorted, overlaps resolved to the first (most specific) label."""
        found: list[Finding] = []
        lower: str | None = None
        for label, lits, pattern in _TOKENS:
            hay = text
            if label == "BEARER_TOKEN":
                lower = _lower(text) if lower is None else lower
                hay = lower
            for lit in lits:
                i = hay.find(lit)
                while i >= 0:
                    m = pattern.match(text, i)
                    if m is not None and self._token_ok(label, m):
                        # a URL's password alone (the user and host stay readable); "Bearer <token>" whole
                        s, e = m.span("v") if label == "URL_CREDENTIALS" else m.span()
                        found.append(Finding(label, s, e, 1.0))
                    i = hay.find(lit, i + len(lit))
        if self.generic:
            lower = _lower(text) if lower is None else lower
            found += self._assigned(text, lower)
        found += self._continued(text)
        return _first_wins(found)

    @staticmethod
    def _token_ok(label: str, m: re.Match[str]) -> bool:
        if label == "OPENAI_API_KEY":  # "sk-" + kebab-case words is a CSS class or a slug
            return not _KEBAB.match(m.group()[3:])
        if label == "BEARER_TOKEN":
            v = m.group("v")
            return not _PLACEHOLDER.search(v) and (_classes(v) >= 2 or any(c.isdigit() for c in v))
        if label == "URL_CREDENTIALS":
            return not _PLACEHOLDER.search(m.group("v"))
        return True

    def _assigned(self, text: str, lower: str) -> list[Finding]:
        """``name = value`` where the name ends with a secret keyword and the value looks like one."""
        out = []
        for kw in _KEYWORDS:
            i = lower.find(kw)
            while i >= 0:
                end = i + len(kw)
                if end >= len(text) or not (text[end].isalnum() or text[end] == "_"):
                    m = _VALUE.match(text, end)
                    if m is not None:
                        start = i
                        while start > 0 and _NAME_CHAR.match(text[start - 1]) and i - start < 64:
                            start -= 1
                        name = lower[start:end]
                        value = m.group("v").rstrip(".")
                        if _value_ok(value, bool(m.group("q")), kw in _PASSWORDISH, self.min_entropy):
                            aws = "aws" in name and re.fullmatch(r"[A-Za-z0-9/+]{40}", value)
                            s = m.start("v")
                            out.append(
                                Finding("AWS_SECRET_ACCESS_KEY" if aws else _GENERIC, s, s + len(value), 0.8)
                            )
                i = lower.find(kw, end)
        return out

    @staticmethod
    def _continued(text: str) -> list[Finding]:
        """The tail of a secret whose head an earlier stream scan already redacted to ``[LABEL]``."""
        out = []
        i = text.find("]")
        while i >= 0:
            j = text.rfind("[", max(0, i - 24), i)
            if j >= 0 and text[j + 1 : i] in LABELS:
                m = _CONT.match(text, i + 1)
                if m is not None and (
                    text[j + 1 : i] == "PRIVATE_KEY" or not m.group().startswith(("\n", "\r"))
                ):
                    out.append(Finding(text[j + 1 : i], m.start(), m.end(), 1.0))
            i = text.find("]", i + 1)
        return out


def _first_wins(findings: list[Finding]) -> list[Finding]:
    """Sorted findings without overlaps: a provider pattern (listed first) beats the generic one."""
    order = {label: n for n, label in enumerate(LABELS)}
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (order.get(f.label, 99), f.start)):
        if not any(f.start < k.end and k.start < f.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)
