"""The PII check: each entity format, checksums, context, allow-list, redaction, offline, and its eval."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from evals import guardrails_pii as ev
from services.guardrails import pii as pii_mod
from services.guardrails.base import Finding
from services.guardrails.pii import DEFAULT_ENTITIES, SUPPORTED_ENTITIES, PiiCheck, redact

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def pii() -> PiiCheck:
    return PiiCheck()


FOUND = [
    ("write to jane.doe+ops@mail.example.co.uk today", "EMAIL_ADDRESS", "jane.doe+ops@mail.example.co.uk"),
    ("UtaKortig@jourrapide.com wrote", "EMAIL_ADDRESS", "UtaKortig@jourrapide.com"),
    ("call 212-555-0199 now", "PHONE_NUMBER", "212-555-0199"),
    ("or +44 20 7946 0958 from abroad", "PHONE_NUMBER", "+44 20 7946 0958"),
    ("desk +41 (0)96 471 07 95.", "PHONE_NUMBER", "+41 (0)96 471 07 95"),
    ("fax (602)272-9781x0135 or", "PHONE_NUMBER", "(602)272-9781x0135"),
    ("joignable au 01.84.17.61.18 demain", "PHONE_NUMBER", "01.84.17.61.18"),
    ("Phone:\n467 3395\nE-mail:", "PHONE_NUMBER", "467 3395"),  # weak, with its context word
    ("082 490 1693-Office", "PHONE_NUMBER", "082 490 1693"),
    ("card 4111 1111 1111 1111 on file", "CREDIT_CARD", "4111 1111 1111 1111"),
    ("amex 378282246310005.", "CREDIT_CARD", "378282246310005"),
    ("maestro 6759-6498-2643-8453 ok", "CREDIT_CARD", "6759-6498-2643-8453"),
    ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
    ("to DE89370400440532013000 today", "IBAN_CODE", "DE89370400440532013000"),
    ("iban gb82west12345698765432 lower-case", "IBAN_CODE", "gb82west12345698765432"),
    ("ssn 536-22-1234 on the form", "US_SSN", "536-22-1234"),
    ("host 10.20.30.40 is down", "IP_ADDRESS", "10.20.30.40"),
    ("from 2001:db8:85a3:0:0:8a2e:370:7334 too", "IP_ADDRESS", "2001:db8:85a3:0:0:8a2e:370:7334"),
    ("my ITIN is 912-71-1234", "US_ITIN", "912-71-1234"),
    ("NHS number 943 476 5919 on the letter", "UK_NHS", "943 476 5919"),
    ("bank account 000123456789 at the branch", "US_BANK_NUMBER", "000123456789"),
    ("passport 912803456 expires", "US_PASSPORT", "912803456"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "label", "value"), FOUND)
def test_each_entity_format_is_found_and_redacted(pii: PiiCheck, text: str, label: str, value: str) -> None:
    found = pii.scan([text])[0]
    assert any(f.label == label and text[f.start : f.end] == value for f in found), found
    out = redact(text, found)
    assert value not in out and "[" in out


def test_max_span_chars_covers_the_longest_entity(pii: PiiCheck) -> None:
    assert max(len(v) for _, _, v in FOUND) <= pii.max_span_chars <= 256
    assert PiiCheck(entities=["US_SSN"]).max_span_chars == 11  # only what is enabled counts


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("card 4111 1111 1111 1112 fails Luhn", None),  # one digit off
        ("order 1234 5678 9012 3456 (not a card)", None),
        ("IBAN GB00 WEST 1234 5698 7654 32 (bad check digits)", None),
        ("NHS number 943 476 5918 (bad mod-11)", "UK_NHS"),  # still a 3-3-4 phone format
        ("the values 467 3395 in the table", None),  # a weak phone format without a context word
        ("released 2024-01-15 12:30:45 as version 3.11.7 build 1.2.3.4.5", None),
        ("copyright 1999-2024, see 0x10 and 5000 2000", None),
        ("localhost 127.0.0.1, bind 0.0.0.0, mask 255.255.255.0, net 10.0.0.0/8, x[1::2]", None),
        ("@app.route('/x') and a @ b.T and user@host.local", None),
        ("The Normans conquered England in the eleventh century.", None),
        ("ssn 000-12-3456, 666-12-3456 and 123-00-4567 are never issued", None),
        ("my ITIN is 912-71-1234", "US_SSN"),  # 9xx is an ITIN, never an SSN
    ],
)
def test_lookalikes_are_not_pii(pii: PiiCheck, text: str, label: str | None) -> None:
    found = pii.scan([text])[0]
    if label is None:
        assert found == [], found
    else:
        assert label not in {f.label for f in found}, found


def test_code_is_clean(pii: PiiCheck) -> None:
    code = (
        "def f(x: int = 8080, y: float = 3.14159265358979) -> dict[str, int]:\n"
        "    ts = 1700000000000  # epoch ms\n"
        "    sha = '3f786850e387550fdab836ed7e6dc881de23001b'\n"
        "    uid = '550e8400-e29b-41d4-a716-446655440000'\n"
        "    return {'replicas': 12, 'port': 6333, 'timeout_s': 600, 'mem': '16Gi'}\n"
    )
    assert pii.find(code) == []


def test_windows_keep_offsets_and_scan_is_shift_invariant(pii: PiiCheck) -> None:
    text = "İstanbul ofisi: +90 212 555 0101, kart 4111-1111-1111-1111, IBAN DE89 3704 0044 0532 0130 00."
    base = [(f.label, text[f.start : f.end]) for f in pii.find(text)]
    assert ("PHONE_NUMBER", "+90 212 555 0101") in base and (
        "IBAN_CODE",
        "DE89 3704 0044 0532 0130 00",
    ) in base
    for cut in (1, 5, 16):  # as the stream scans a suffix with some left context
        tail = text[cut:]
        assert [(f.label, tail[f.start : f.end]) for f in pii.find(tail)] == base


def test_an_iban_is_one_entity_not_a_phone_inside_it(pii: PiiCheck) -> None:
    text = "IBAN GB82 WEST 1234 5698 7654 32"
    assert [f.label for f in pii.find(text)] == ["IBAN_CODE"]


def test_allow_list_and_entities_are_configurable() -> None:
    check = PiiCheck(entities=["EMAIL_ADDRESS"], allow_list=["Support@Example.com"])
    found = check.find("write support@example.com or jane@example.com, call 212-555-0199")
    assert [(f.label, f.start) for f in found] == [("EMAIL_ADDRESS", 29)]
    assert check.entities == ("EMAIL_ADDRESS",)
    assert set(DEFAULT_ENTITIES) < set(SUPPORTED_ENTITIES)
    with pytest.raises(ValueError, match="entities"):
        PiiCheck(entities=["FAVOURITE_COLOUR"])
    with pytest.raises(ValueError, match="score_threshold"):
        PiiCheck(score_threshold=0)


def test_redact_merges_overlaps_and_supports_mask_and_relabelling() -> None:
    text = "abc 0123456789 xyz"
    overlapping = [Finding("PHONE_NUMBER", 4, 14), Finding("US_BANK_NUMBER", 4, 10), Finding("UK_NHS", 8, 16)]
    assert redact(text, overlapping) == "abc [PHONE_NUMBER]yz"  # one replacement, the longest part's label
    assert redact(text, [Finding("X", 4, 14)], style="mask") == "abc ********** xyz"
    assert (
        redact(text, [Finding("PHONE_NUMBER", 4, 14)], labels={"PHONE_NUMBER": "PHONE"}) == "abc [PHONE] xyz"
    )
    assert redact(text, []) == text


def test_no_spacy_model_and_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import spacy
    import spacy.util

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("a spaCy model or the network was asked for")

    monkeypatch.setattr(spacy, "load", refuse)
    monkeypatch.setattr(spacy.util, "load_model", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pii_mod._suffixes.cache_clear()  # tldextract is built again, under the patches
    found = PiiCheck().scan(["mail a@b.org or UtaKortig@jourrapide.com"])[0]
    assert [f.label for f in found] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS"]


# -- the eval module ------------------------------------------------------------------------
def _mini(tmp_path: Path) -> Path:
    texts = [
        (
            "call 212-555-0199 or 07700 900 461",
            [("PHONE_NUMBER", "212-555-0199"), ("PHONE_NUMBER", "07700 900 461")],
        ),
        ("mail a.b@example.org today", [("EMAIL_ADDRESS", "a.b@example.org")]),
        ("nothing here but 4111 1111 1111 1111", [("CREDIT_CARD", "4111 1111 1111 1111")]),
    ]
    rows = []
    for i, (t, spans) in enumerate(texts):
        rows.append({"full_text": t, "template_id": i, "spans": [
            {"entity_type": e, "entity_value": v, "start_position": t.index(v), "end_position": t.index(v) + len(v)}
            for e, v in spans] + [{"entity_type": "PERSON", "entity_value": "x", "start_position": 0, "end_position": 1}]})  # fmt: skip
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(rows))
    return path


def test_eval_recall_precision_and_exact_on_a_hand_made_set(tmp_path: Path) -> None:
    records = ev.load_records(_mini(tmp_path))
    assert all(s[0] != "PERSON" for r in records for s in r.spans)  # unscored types dropped

    def scan(texts: Sequence[str]) -> list[list[Finding]]:
        # finds the first phone exactly, clips the e-mail, misses the second phone, one false card
        return [
            [Finding("PHONE_NUMBER", 5, 17), Finding("CREDIT_CARD", 0, 4)],
            [Finding("EMAIL_ADDRESS", 5, 12)],
            [],
        ]

    m = ev.evaluate(scan, records, ["PHONE_NUMBER", "EMAIL_ADDRESS", "CREDIT_CARD"])
    assert (m["PHONE_NUMBER"]["recall"]["k"], m["PHONE_NUMBER"]["recall"]["n"]) == (1, 2)
    assert m["PHONE_NUMBER"]["recall_exact"]["k"] == 1 and m["PHONE_NUMBER"]["missed"] == ["07700 900 461"]
    assert m["EMAIL_ADDRESS"]["recall"]["value"] == 1.0 and m["EMAIL_ADDRESS"]["recall_exact"]["value"] == 0.0
    assert m["CREDIT_CARD"]["recall"]["k"] == 0 and m["CREDIT_CARD"]["precision"]["value"] == 0.0
    lo, hi = m["PHONE_NUMBER"]["recall"]["ci95"]
    assert lo < 0.5 < hi


def test_eval_cli_runs_the_real_check_on_a_slice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.main(["--data", str(_mini(tmp_path)), "--split", "all", "--no-corpus", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    per = report["per_entity"]
    assert report["texts"] == 3
    assert per["PHONE_NUMBER"]["recall"]["k"] == 2 and per["EMAIL_ADDRESS"]["recall"]["k"] == 1
    assert per["CREDIT_CARD"]["precision"]["value"] == 1.0


def test_wilson_split_and_false_masks() -> None:
    lo, hi = ev.wilson(10, 10)
    assert hi == 1.0 and 0.72 < lo < 0.73
    assert all(x != x for x in ev.wilson(0, 0))  # NaN: unmeasured
    records = [ev.Record(f"t{i}", (("PHONE_NUMBER", 0, 1),), f"t{i % 7}") for i in range(40)]
    dev, test = ev.split_records(records, "dev"), ev.split_records(records, "test")
    assert len(dev) + len(test) == 40 and dev and test
    assert not {r.template for r in dev} & {r.template for r in test}  # whole templates to one side
    blocks = [("a#0", "mail guido@python.org"), ("b#0", "x = 1"), ("c#0", "host 10.1.2.3")]
    fm = ev.false_masks(PiiCheck().scan, blocks)
    assert fm["false_masked_blocks"]["k"] == 1 and fm["false_masks_per_label"] == {"IP_ADDRESS": 1}
    assert fm["true_masks"] == ["guido@python.org"]
