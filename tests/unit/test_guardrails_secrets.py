"""The secrets check: provider keys, tokens, private keys; ordinary code is not a secret; streams don't leak."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from services.generation.protocol import GenerationChunk
from services.guardrails.chain import Guardrails
from services.guardrails.secrets import LABELS, SecretsCheck
from services.guardrails.stream import OutputGuard

pytestmark = pytest.mark.unit

_rng = random.Random(7)


def _rand(n: int, alphabet: str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


OPENAI_PROJECT_KEY = "sk-proj-" + _rand(
    156, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(_rand(64, "ABCDEFGHIJKLMNOPabcdefghijklmnop0123456789+/") for _ in range(20))
    + "\n-----END RSA PRIVATE KEY-----"
)
FOUND = [
    ("aws AKIAZ7QX3RKDLW2M9PTY here", "AWS_ACCESS_KEY_ID", "AKIAZ7QX3RKDLW2M9PTY"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8uKmP4Rt", "AWS_SECRET_ACCESS_KEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8uKmP4Rt"),
    ("token ghp_" + "a1B2" * 9 + " ok", "GITHUB_TOKEN", "ghp_" + "a1B2" * 9),
    ("gho_" + "Zq9x" * 9, "GITHUB_TOKEN", "gho_" + "Zq9x" * 9),
    ("pat github_pat_11ABCDEFG0" + "x" * 12 + "_" + "Y7" * 29, "GITHUB_TOKEN", "github_pat_11ABCDEFG0" + "x" * 12 + "_" + "Y7" * 29),
    ("OPENAI_API_KEY=sk-proj-Zx81QmPq02LkTr55VbNs9WcQ", "OPENAI_API_KEY", "sk-proj-Zx81QmPq02LkTr55VbNs9WcQ"),
    ("key sk-ant-api03-" + "Qw3rTy" * 5 + " end", "ANTHROPIC_API_KEY", "sk-ant-api03-" + "Qw3rTy" * 5),
    ("slack xoxb-1234567890-abcdefghij", "SLACK_TOKEN", "xoxb-1234567890-abcdefghij"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc.", "STRIPE_KEY", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("google AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "GOOGLE_API_KEY", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"),
    ("HF_TOKEN=hf_" + "AbCd1234" * 5, "HUGGINGFACE_TOKEN", "hf_" + "AbCd1234" * 5),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "JWT", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("Authorization: Bearer abc.def.ghi123", "BEARER_TOKEN", "Bearer abc.def.ghi123"),
    ("postgres://admin:Zx81_kq9@db.internal:5432/app", "URL_CREDENTIALS", "Zx81_kq9"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "PRIVATE_KEY", "-----BEGIN OPENSSH PRIVATE KEY-----"),
    ("here:\n-----BEGIN PRIVATE KEY-----\nMIIE", "PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nMIIE"),
    ("password = 'Tr0ub4dor&3-horse-Battery'", "SECRET", "Tr0ub4dor&3-horse-Battery"),
    ("db:\n  password: s3cr3tP4ss\n", "SECRET", "s3cr3tP4ss"),
    ('{"api_key": "a8f5f167f44f4964e6c998dee827110c"}', "SECRET", "a8f5f167f44f4964e6c998dee827110c"),
    ("CLIENT_SECRET=550e8400-e29b-41d4-a716-446655440000", "SECRET", "550e8400-e29b-41d4-a716-446655440000"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "label", "value"), FOUND)
def test_each_secret_is_found(text: str, label: str, value: str) -> None:
    found = SecretsCheck().scan([text])[0]
    assert [(f.label, text[f.start : f.end]) for f in found] == [(label, value)]
    assert label in LABELS


def test_a_whole_pem_block_is_one_span_from_header_to_footer() -> None:
    text = f"key:\n{PEM}\nthanks"
    (f,) = SecretsCheck().find(text)
    assert f.label == "PRIVATE_KEY" and text[f.start : f.end] == PEM


@pytest.mark.parametrize(
    "text",
    [
        "git checkout 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39",
        "request 123e4567-e89b-12d3-a456-426614174000 failed",
        "![logo](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==)",
        "token_count = compute_tokens(prompt)",
        "password = get_password_from_vault()",
        "max_tokens: 256",
        "token = tokens[0]",
        "api_key: str | None = None",
        "secret_key = os.environ['SECRET_KEY']",
        "client_secret = settings.CLIENT_SECRET",
        "password: ${DB_PASSWORD}",
        'auth_token: "YOUR_TOKEN_HERE"',
        'pad_token = "<|endoftext|>"',
        "token_type = 'bearer'",
        "Bearer authentication is described in RFC 6750; send Authorization: Bearer <token>",
        "postgres://user:password@localhost/db",
        "the sk-learn-style-kebab-case-class and task-abcdefghijklmnopqrstuvwxyz",
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
        "[EMAIL_ADDRESS]tailOfSomething",  # only a secret's marker continues a secret
    ],
)
def test_ordinary_code_is_not_a_secret(text: str) -> None:
    assert SecretsCheck().scan([text]) == [[]]


def test_generic_assignments_can_be_turned_off_and_the_tail_after_a_marker_is_found() -> None:
    assert SecretsCheck(generic=False).find("password = 'Tr0ub4dor&3'") == []
    text = "[OPENAI_API_KEY]tailOfTheKey_123 and [PRIVATE_KEY]\nMIIEowIBAAKCAQEA1234567890abcdef\n-----END RSA PRIVATE KEY-----"
    found = SecretsCheck().find(text)
    assert [(f.label, text[f.start : f.end]) for f in found] == [
        ("OPENAI_API_KEY", "tailOfTheKey_123"),
        ("PRIVATE_KEY", "\nMIIEowIBAAKCAQEA1234567890abcdef\n-----END RSA PRIVATE KEY-----"),
    ]


def test_max_span_chars_covers_the_prefixed_tokens() -> None:
    check = SecretsCheck()
    fixed = [v for _, label, v in FOUND if label not in ("PRIVATE_KEY", "JWT", "SECRET")]
    assert max(len(v) for v in fixed) <= check.max_span_chars <= 256


def _guard(checks: dict[str, object], action: str) -> OutputGuard:
    output = [{"type": name, "action": action} for name in checks]
    g = Guardrails(
        {"default": {"output": output, "holdback_tokens": 4, "scan_every_tokens": 2}},
        factory=lambda cfg: checks[cfg.check_name],  # type: ignore[arg-type,return-value]
    )
    guard = OutputGuard.for_model(g, "m")
    assert guard is not None
    return guard


def _stream(guard: OutputGuard, text: str, step: int) -> str:
    bounds = [*range(0, len(text), step), len(text)]
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]

    async def run() -> str:
        out = []
        for i, p in enumerate(pieces):
            last = i == len(pieces) - 1
            out += await guard.feed(
                GenerationChunk(index=0, text=p, num_tokens=1, finish_reason="stop" if last else None)
            )
        out += await guard.finish()
        return "".join(c.text for c in out)

    return asyncio.run(run())


@pytest.mark.parametrize("step", [1, 4, 13])
@pytest.mark.parametrize("secret", [OPENAI_PROJECT_KEY, PEM], ids=["openai-project-key", "pem"])
def test_a_streamed_secret_longer_than_the_hold_back_never_leaks(secret: str, step: int) -> None:
    text = f"Here it is: {secret} -- keep it safe."
    client = _stream(_guard({"secrets": SecretsCheck()}, "redact"), text, step)
    body = secret.replace("\n", "")[40:]
    assert not any(body[i : i + 10] in client.replace("\n", "") for i in range(len(body) - 10))
    assert client.startswith("Here it is: [") and client.endswith(" -- keep it safe.")


def test_a_streamed_private_key_is_cut_at_its_header_when_blocked() -> None:
    text = f"Sure:\n{PEM}\n"
    client = _stream(_guard({"secrets": SecretsCheck()}, "block"), text, 5)
    assert "-----BEGIN" not in client and client.startswith("Sure")
