"""The shipped SQuAD subset loads and matches what its README and attribution say."""

import collections
from pathlib import Path

import pytest

from evals.datasets import SQUAD_PATH, SQUAD_SOURCE, load_squad, sample_corpus, slugify


@pytest.fixture(scope="module")
def squad():
    return load_squad()


def test_shipped_file_is_inside_the_project_with_attribution():
    assert SQUAD_PATH.is_file()
    assert "shared" not in SQUAD_PATH.parts  # the project never reads ../shared at run time
    attribution = (SQUAD_PATH.parent / "ATTRIBUTION.md").read_text()
    for must in ("CC BY-SA 4.0", "Rajpurkar", "chrischute/squad", "re-hashed"):
        assert must in attribution


def test_counts_match_the_dataset_readme(squad):
    assert len(squad.articles) == 16
    assert len(squad.paragraphs) == 646
    assert len(squad.questions) == 2910
    assert len(squad.unanswerable) == 3168
    assert len(squad.questions) + len(squad.unanswerable) == 6078


def test_document_ids_are_stable_and_unique(squad):
    ids = [d.doc_id for d in squad.paragraphs]
    assert len(set(ids)) == len(ids)
    first = squad.paragraphs[0]
    assert first.doc_id == "normans-0"
    assert first.metadata == {"title": "Normans", "article_index": 0, "paragraph_index": 0}
    assert first.source == SQUAD_SOURCE
    assert first.text.startswith("The Normans")
    assert {d.metadata["title"] for d in squad.paragraphs} == set(squad.articles)
    assert slugify("1973_oil_crisis") == "1973-oil-crisis"
    assert any(i.startswith("1973-oil-crisis-") for i in ids)


def test_questions_point_at_their_paragraph_and_answers_are_in_it(squad):
    by_id = {d.doc_id: d for d in squad.paragraphs}
    first = squad.questions[0]
    assert first.text == "In what country is Normandy located?"
    assert first.doc_id == "normans-0"
    assert first.answers == ("France",)
    for q in squad.questions:
        assert q.answers, q.qid
        assert len(q.relevant_doc_ids) == 1
        assert all(a in by_id[q.doc_id].text for a in q.answers), q.qid
    assert all(q.answers == () for q in squad.unanswerable)
    assert all(q.doc_id in by_id for q in squad.unanswerable)
    qids = [q.qid for q in squad.questions + squad.unanswerable]
    assert len(set(qids)) == len(qids)
    # every article has answerable questions
    per_article = collections.Counter(by_id[q.doc_id].metadata["article_index"] for q in squad.questions)
    assert sorted(per_article) == list(range(16))


def test_sample_corpus_is_the_paragraphs(squad):
    corpus = sample_corpus()
    assert [d.doc_id for d in corpus] == [d.doc_id for d in squad.paragraphs]


def test_plain_json_is_accepted_and_other_shapes_rejected(tmp_path: Path):
    import gzip

    plain = tmp_path / "s.json"
    plain.write_bytes(gzip.decompress(SQUAD_PATH.read_bytes()))
    assert len(load_squad(plain).paragraphs) == 646
    bad = tmp_path / "raw.json"
    bad.write_text('{"version": "v2.0", "data": []}')
    with pytest.raises(ValueError, match="not a compact SQuAD file"):
        load_squad(bad)
