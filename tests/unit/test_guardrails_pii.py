"""PII and secrets checks: each entity format, checksums, code that is not a secret, offline."""

from __future__ import annotations

import pytest

from services.guardrails.pii import PiiCheck
from services.guardrails.redact_spans import redact_spans
from services.guardrails.secrets import SecretsCheck

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pii() -> PiiCheck:
    return PiiCheck()


@pytest.mark.parametrize(
    ("text", "label", "value"),
    [
        (
            "write to jane.doe+ops@mail.example.co.uk today",
            "EMAIL_ADDRESS",
            "jane.doe+ops@mail.example.co.uk",
        ),
        ("call 212-555-0199 now", "PHONE_NUMBER", "212-555-0199"),
        ("or +44 20 7946 0958 from abroad", "PHONE_NUMBER", "+44 20 7946 0958"),
        ("card 4111 1111 1111 1111 on file", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
        ("ssn 536-22-1234 on the form", "US_SSN", "536-22-1234"),
        ("host 10.20.30.40 is down", "IP_ADDRESS", "10.20.30.40"),
    ],
)
def test_each_entity_is_found(pii: PiiCheck, text: str, label: str, value: str) -> None:
    found = pii.scan([text])[0]
    assert any(f.label == label and text[f.start : f.end] == value for f in found), found
    assert value not in redact_spans(text, found)
    assert len(value) <= pii.max_span_chars


def test_checksums_reject_lookalikes_and_prose_is_clean(pii: PiiCheck) -> None:
    labels = [f.label for f in pii.scan(["card 4111 1111 1111 1112 and IBAN GB00 WEST 1234 5698 7654 32"])[0]]
    assert "CREDIT_CARD" not in labels and "IBAN_CODE" not in labels
    assert pii.scan(["The Normans conquered England in the eleventh century."]) == [[]]
    with pytest.raises(ValueError, match="entities"):
        PiiCheck(entities=["FAVOURITE_COLOUR"])


def test_no_spacy_model_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    import spacy

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("spacy.load called")

    monkeypatch.setattr(spacy, "load", refuse)
    assert PiiCheck().scan(["mail a@b.org"])[0][0].label == "EMAIL_ADDRESS"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE", "PRIVATE_KEY"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "PRIVATE_KEY"),
        ("aws AKIAIOSFODNN7EXAMPLE here", "AWS_ACCESS_KEY"),
        ("token ghp_" + "a1B2" * 9, "GITHUB_TOKEN"),
        ("OPENAI_API_KEY=sk-proj-Zx81QmPq02LkTr55VbNs9WcQ", "API_KEY"),
        ("xoxb-1234567890-abcdefghij", "SLACK_TOKEN"),
        ("password = 'Tr0ub4dor&3-horse-Battery'", "SECRET"),
    ],
)
def test_secrets_are_found(text: str, label: str) -> None:
    assert label in {f.label for f in SecretsCheck().scan([text])[0]}


@pytest.mark.parametrize(
    "text",
    [
        "git checkout 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39",
        "request 123e4567-e89b-12d3-a456-426614174000 failed",
        "token_count = compute_tokens(prompt)",
        "password = get_password_from_vault()",
        "max_tokens: 256",
    ],
)
def test_ordinary_code_is_not_a_secret(text: str) -> None:
    assert SecretsCheck().scan([text]) == [[]]
