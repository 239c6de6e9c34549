"""End to end on a slice of SQuAD: real encoder, real embedded Qdrant, in a temp folder."""

import argparse
import json

import pytest

from evals import cli as eval_cli
from evals.datasets import RetrievalQuery, load_squad
from evals.retrieval import MODES, RetrievalReport, evaluate_retrieval, spread_sample
from services.retrieval.config import CollectionConfig, QuantizationConfig


@pytest.fixture(scope="module")
def encoder():
    from services.embeddings.encoder import Encoder

    return Encoder()


@pytest.fixture(scope="module")
def squad_slice():
    """The first two articles' paragraphs and their answerable questions."""
    squad = load_squad()
    corpus = [d for d in squad.paragraphs if d.metadata["article_index"] < 2]
    ids = {d.doc_id for d in corpus}
    return corpus, [q for q in squad.questions if q.doc_id in ids]


@pytest.fixture(scope="module")
def report(encoder, squad_slice, tmp_path_factory) -> RetrievalReport:
    corpus, questions = squad_slice
    return evaluate_retrieval(
        encoder,
        CollectionConfig(name="docs", hybrid=False, quantization=QuantizationConfig(kind="scalar")),
        corpus=corpus,
        questions=questions,
        limit=50,
        work_dir=str(tmp_path_factory.mktemp("eval")),
        embedding_model="all-minilm-l6-v2",
    )


def test_report_shape(report, squad_slice):
    corpus, _ = squad_slice
    assert report.documents == len(corpus) == 87
    assert report.questions == 50
    assert report.chunks >= report.documents
    assert report.chunk_top_k >= 10
    kinds = ("exact", "hnsw", "quantized")  # quantized because the collection configures it
    assert [(r.mode, r.search) for r in report.results] == [(m, k) for m in MODES for k in kinds]
    assert report.store == "embedded Qdrant Edge"
    assert report.collection["quantization"]["kind"] == "scalar"
    assert any("hybrid: false" in n for n in report.notes)  # forced on, and said so
    assert any("vs exact@10" in n for n in report.notes)


def test_metrics_are_ordered_and_sane(report):
    chance = 10 / report.documents
    for r in report.results:
        assert 0.0 <= r.recall_at_1 <= r.recall_at_5 <= r.recall_at_10 <= 1.0, r
        # one relevant document per question: recall@1 <= MRR <= nDCG <= recall@10
        assert r.recall_at_1 <= r.mrr_at_10 <= r.ndcg_at_10 <= r.recall_at_10, r
        assert r.queries == 50 and r.search_seconds > 0 and r.queries_per_second > 0
    for mode in MODES:
        assert report.result(mode).recall_at_10 > max(0.5, 3 * chance), mode
        exact, hnsw, quant = (report.result(mode, k) for k in ("exact", "hnsw", "quantized"))
        assert exact.recall_vs_exact is None
        for approx in (hnsw, quant):  # the HNSW graph of a small corpus finds nearly all exact neighbours
            assert approx.recall_vs_exact is not None and 0.9 <= approx.recall_vs_exact <= 1.0, (mode, approx)
            assert abs(approx.recall_at_10 - exact.recall_at_10) <= 0.1
        if mode == "sparse":  # sparse search is exact in every row
            assert hnsw.recall_vs_exact == quant.recall_vs_exact == 1.0


def test_renderings(report):
    md = report.to_markdown().splitlines()
    assert md[0].startswith("| mode | search | R@1 |")
    assert sum(line.startswith("| dense |") for line in md) == 3
    assert "| dense | HNSW + quantized |" in report.to_markdown()
    data = json.loads(report.to_json())
    assert data["questions"] == 50 and len(data["results"]) == 9
    assert data["results"][0]["queries_per_second"] > 0
    assert report.to_table().row_count == 9


def test_a_paragraph_finds_itself(encoder, squad_slice, tmp_path):
    # querying with a paragraph's own text must rank that paragraph first (cosine 1.0)
    corpus, _ = squad_slice
    docs = corpus[:20]
    qs = [RetrievalQuery(qid=d.doc_id, text=d.text, relevant_doc_ids=(d.doc_id,)) for d in docs[:10]]
    rep = evaluate_retrieval(encoder, corpus=docs, questions=qs, modes=["dense"], work_dir=str(tmp_path))
    # no quantization configured: exact and HNSW only
    assert [r.label for r in rep.results] == ["exact", "HNSW"]
    assert rep.result("dense").recall_at_1 == 1.0
    assert rep.result("dense").mrr_at_10 == 1.0


def test_bad_inputs_raise(encoder, squad_slice, tmp_path):
    corpus, questions = squad_slice
    orphan = RetrievalQuery(qid="x", text="where?", relevant_doc_ids=("no-such-doc",))
    with pytest.raises(ValueError, match="no-such-doc"):
        evaluate_retrieval(encoder, corpus=corpus[:3], questions=[orphan], work_dir=str(tmp_path))
    with pytest.raises(ValueError, match="limit must be >= 1"):
        spread_sample(questions, 0)


def test_spread_sample_is_even_and_deterministic():
    qs = [RetrievalQuery(qid=str(i), text=str(i), relevant_doc_ids=("d",)) for i in range(10)]
    assert [q.qid for q in spread_sample(qs, 5)] == ["0", "2", "4", "6", "8"]
    assert spread_sample(qs, None) == qs and spread_sample(qs, 99) == qs


def test_cli_prints_markdown_and_writes_json(report, monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_eval(encoder, coll, **kwargs):
        seen.update(coll=coll, **kwargs)
        return report

    monkeypatch.setattr("evals.retrieval.evaluate_retrieval", fake_eval)
    monkeypatch.setattr(
        "services.embeddings.encoder.Encoder.from_config", classmethod(lambda cls, cfg: object())
    )
    parser = argparse.ArgumentParser(prog="llmops")
    eval_cli.add_parser(parser.add_subparsers(dest="command"))
    out_json = tmp_path / "r" / "report.json"
    args = parser.parse_args(["eval", "retrieval", "--limit", "7", "--markdown", "--json", str(out_json)])
    assert args.func(args) == 0
    assert seen["limit"] == 7 and seen["coll"].name == "eval"
    assert "| hybrid | exact |" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["questions"] == 50

    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "retrieval", "--limit", "0"])
    args = parser.parse_args(["eval", "retrieval", "--config", "x.yaml"])
    assert args.func(args) == 2  # no loader was given
    assert "--config is not supported" in capsys.readouterr().err


def test_cli_resolves_collection_and_model_from_config():
    from services.config import ServicesConfig

    cfg = ServicesConfig.model_validate(
        {
            "auth": {"enabled": False},
            "retrieval": {"collections": [{"name": "a"}, {"name": "b", "chunk_tokens": 128}]},
        }
    )
    coll, emb = eval_cli.resolve_models(cfg, "b")
    assert (coll.name, coll.chunk_tokens, emb.name) == ("b", 128, "all-minilm-l6-v2")
    assert eval_cli.resolve_models(cfg, None)[0].name == "a"
    with pytest.raises(ValueError, match="'c' is not in the config"):
        eval_cli.resolve_models(cfg, "c")
