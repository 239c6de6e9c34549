"""Suites as data: the shipped ones load and match their sources; bad files name the bad field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from evals.datasets import load_realsumm, load_squad
from evals.suite import SuiteError, items, load_suite, render, shipped_suites
from evals.suites import build

pytestmark = pytest.mark.unit


def test_shipped_suites_load() -> None:
    names = {s.name: s for s in shipped_suites()}
    assert {"qa", "rag", "summarize", "retrieval"} <= set(names)
    assert [m.key for m in names["qa"].metrics] == ["squad_em", "squad_f1"]
    assert all(s.attribution for s in names.values())


def test_qa_dataset_is_the_whole_half_set() -> None:
    qa = list(items(load_suite("qa")))
    data = load_squad()
    assert len(qa) == 6078 == len(data.questions) + len(data.unanswerable)
    assert sum(1 for i in qa if not i.expected) == 3168  # unanswerable: no gold answers
    assert len({i.id for i in qa}) == 6078
    first = qa[0]
    assert first.context == [data.paragraphs[0].text] and first.category == "Normans"
    msgs = render(load_suite("qa"), first)
    assert msgs[0]["role"] == "system" and first.input in msgs[1]["content"]
    assert data.paragraphs[0].text in msgs[1]["content"]


def test_rag_dataset_is_the_answerable_questions_without_their_paragraph() -> None:
    rag = list(items(load_suite("rag")))
    assert len(rag) == 2910 and all(i.expected and not i.context for i in rag)
    assert rag[0].record["doc_id"] == "normans-0"  # the id the sample corpus is ingested under
    assert render(load_suite("rag"), rag[0]) == [{"role": "user", "content": rag[0].input}]


def test_summarize_dataset_matches_realsumm() -> None:
    summ = list(items(load_suite("summarize")))
    data = load_realsumm()
    assert len(summ) == 100 and summ[3].expected == [data.references[3]]
    assert "<t>" not in summ[0].input


def test_the_committed_datasets_are_what_build_makes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    committed = build.OUT
    monkeypatch.setattr(build, "OUT", tmp_path)
    build.main()
    for name in ("qa", "rag", "summarize"):
        assert (tmp_path / f"{name}.jsonl.gz").read_bytes() == (
            committed / f"{name}.jsonl.gz"
        ).read_bytes(), name


def test_limit_spreads_over_the_file() -> None:
    got = [i.category for i in items(load_suite("qa"), limit=16)]
    assert len(got) == 16 and len(set(got)) > 8  # not the first 16 questions of one article


def _suite(tmp_path: Path, text: str, rows: list[object] | None = None) -> Path:
    if rows is not None:
        (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "name: x\ndataset: d.jsonl\nmetrics: [{name: bleu}]\n",
            "metrics.0.name: Value error, unknown metric 'bleu'",
        ),
        ("name: x\ndataset: d.jsonl\nmetrics: [{name: regex}]\n", "metric 'regex' needs 'pattern'"),
        (
            "name: x\ndataset: d.jsonl\nmetrics: [{name: squad_em}]\n",
            "metrics[0] (squad_em) needs fields.expected",
        ),
        ("name: x\nmetrics: [{name: refusal}]\n", "a chat suite needs 'dataset'"),
        ("name: X!\ndataset: d.jsonl\nmetrics: [{name: refusal}]\n", "name: String should match pattern"),
        ("name: x\ndataset: d.jsonl\nmetrics: [{name: refusal}]\ncolour: red\n", "colour: Extra inputs"),
        ("name: x\ndataset: d.jsonl\nfields: {answer: a}\nmetrics: [{name: refusal}]\n", "fields.answer"),
        ("- a list\n", "a suite is a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: x\ndataset: d.jsonl\nmetrics: [{name: judge}]\n", "metric 'judge' needs 'rubric'"),
    ],
)
def test_bad_suites_name_the_field(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(SuiteError, match=r"s\.yaml") as e:
        load_suite(str(_suite(tmp_path, yaml_text)))
    assert message in str(e.value)


def test_bad_records_name_the_line(tmp_path: Path) -> None:
    p = _suite(
        tmp_path, "name: x\ndataset: d.jsonl\nmetrics: [{name: refusal}]\n", [{"input": "ok"}, {"q": 1}]
    )
    with pytest.raises(SuiteError, match=r"d.jsonl:2: needs the input field 'input'"):
        list(items(load_suite(str(p))))
    (tmp_path / "d.jsonl").write_text('{"input": "a"}\nnot json\n')
    with pytest.raises(SuiteError, match=r"d.jsonl:2: not JSON"):
        list(items(load_suite(str(p))))


def test_a_prompt_slot_missing_from_the_record_is_named(tmp_path: Path) -> None:
    text = "name: x\ndataset: d.jsonl\nprompt: {user: '{input} / {lang}'}\nmetrics: [{name: refusal}]\n"
    s = load_suite(str(_suite(tmp_path, text, [{"input": "hi", "lang": "en"}, {"input": "yo"}])))
    first, second = items(s)
    assert render(s, first)[0]["content"] == "hi / en"
    with pytest.raises(SuiteError, match=r"prompt slot \{lang\}"):
        render(s, second)


def test_unknown_suite_lists_the_shipped_ones() -> None:
    with pytest.raises(SuiteError, match="one of: qa, rag, retrieval, summarize"):
        load_suite("nope")


def test_gzip_and_plain_datasets_read_alike(tmp_path: Path) -> None:
    rows = [{"input": f"q{i}", "expected": "a"} for i in range(3)]
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    p = _suite(
        tmp_path, "name: x\ndataset: d.jsonl.gz\nfields: {expected: expected}\nmetrics: [{name: exact}]\n"
    )
    assert [i.input for i in items(load_suite(str(p)))] == ["q0", "q1", "q2"]
