"""``python -m evals.guardrails_pii``: recall and precision of the PII check, and its false masks on code.

Two measurements:

* **Recall / precision** per entity on presidio-research's synthetic set
  (``evals/data/pii/presidio_synth_dataset_v2.json.gz``, 1,500 texts). A gold span
  is *found* when a finding of the same entity overlaps it (``exact``: same
  boundaries); a finding is *correct* when it overlaps a gold span of its entity.
  95 % Wilson intervals. The set is split by **template** (seeded, balanced per
  entity): the recognizers' context words and formats were tuned on ``dev``;
  ``test`` holds texts from templates never looked at, so it measures new
  phrasings, not just new values.
* **False masks** on text with no PII: fixed blocks (12 lines) of this project's
  source and YAML/JSON configs (``tests/``, the data and the detectors' own
  example-laden files excluded), the YAML files of the installed packages (Ray's
  cluster configs among them), Helm-style rendered Kubernetes manifests generated
  here from a fixed seed, and a hash-chosen 1-in-20 sample of the running
  interpreter's standard library (its ``test`` packages excluded). A block is
  false-masked when any finding in it is not PII; an e-mail address that is one
  (an author's address in a stdlib header) counts as a true mask and is listed.

Speed: median ``scan`` time of the PII and secrets checks on 300 and 9,000 characters.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import statistics
import sys
import sysconfig
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.guardrails.base import Finding

__all__ = ["Record", "corpus_blocks", "evaluate", "false_masks", "load_records", "split_records", "wilson"]

DATA = Path(__file__).parent / "data" / "pii" / "presidio_synth_dataset_v2.json.gz"
ROOT = Path(__file__).resolve().parents[1]
SEED = 1729
#: dataset entity type -> the check's entity (types the check has no recognizer for are not scored)
ENTITY_MAP = {
    "EMAIL_ADDRESS": "EMAIL_ADDRESS", "PHONE_NUMBER": "PHONE_NUMBER", "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN_CODE", "US_SSN": "US_SSN", "IP_ADDRESS": "IP_ADDRESS",
    "US_DRIVER_LICENSE": "US_DRIVER_LICENSE", "DOMAIN_NAME": "URL",
}  # fmt: skip
GOALS = {"EMAIL_ADDRESS": 0.99, "PHONE_NUMBER": 0.99, "CREDIT_CARD": 0.99, "IBAN_CODE": 0.99, "US_SSN": 0.99}
FALSE_MASK_GOAL = 0.01
#: files whose text is deliberately PII or secrets (examples, tests): not "text with no PII"
#: (in site-packages: presidio's ``langextract_prompts``, few-shot PII examples)
_EXCLUDED = ("tests/", "evals/data/", "services/guardrails/pii.py", "services/guardrails/secrets.py",
             "evals/guardrails_pii.py", "monitoring/redact.py")  # fmt: skip
_SKIP_DIRS = {".venv", ".git", "__pycache__", "node_modules", ".mypy_cache", ".ruff_cache", "build", "dist"}
_CODE_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini", ".sh"}
BLOCK_LINES = 12


@dataclass(frozen=True)
class Record:
    text: str
    spans: tuple[tuple[str, int, int], ...]  # (our entity, start, end)
    template: str


def load_records(path: Path = DATA) -> list[Record]:
    """The synthetic set with its entity names mapped to the check's (unscored types dropped)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        raw = json.load(f)
    out = []
    for i, r in enumerate(raw):
        spans = tuple(
            (ENTITY_MAP[s["entity_type"]], s["start_position"], s["end_position"])
            for s in r["spans"]
            if s["entity_type"] in ENTITY_MAP
        )
        tid = r.get("template_id")
        out.append(Record(r["full_text"], spans, f"t{tid}" if tid is not None else f"r{i}"))
    return out


def split_records(records: Sequence[Record], split: str, seed: int = SEED) -> list[Record]:
    """``dev`` / ``test``: whole templates to one side, greedily balancing each entity's spans (seeded)."""
    if split == "all":
        return list(records)
    if split not in ("dev", "test"):
        raise ValueError(f"split must be dev, test or all, got {split!r}")
    by_t: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_t[r.template].append(r)
    ents = {t: Counter(s[0] for r in rs for s in r.spans) for t, rs in by_t.items()}
    total = Counter(s[0] for r in records for s in r.spans)
    order = sorted(by_t)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda t: min((total[e] for e in ents[t]), default=math.inf))  # rarest entities first
    have = {"dev": Counter[str](), "test": Counter[str]()}
    size = {"dev": 0, "test": 0}
    side_of = {}
    for t in order:

        def load(side: str, t: str = t) -> tuple[float, int]:
            share = sum((have[side][e] + n) / total[e] for e, n in ents[t].items())
            return share, size[side]

        side = min(("dev", "test"), key=load)
        side_of[t] = side
        have[side].update(ents[t])
        size[side] += len(by_t[t])
    return [r for r in records if side_of[r.template] == split]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of ``k`` successes in ``n`` (NaN, NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "value": k / n if n else math.nan, "ci95": [lo, hi]}


def evaluate(scan: Callable[[Sequence[str]], list[list[Finding]]], records: Sequence[Record],
             entities: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """Per entity: recall (overlap and exact), precision, and findings outside any gold span of theirs."""
    gold: Counter[str] = Counter()
    hit: Counter[str] = Counter()
    exact: Counter[str] = Counter()
    pred: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    missed: dict[str, list[str]] = defaultdict(list)
    wrong: dict[str, list[str]] = defaultdict(list)
    results = scan([r.text for r in records])
    for r, found in zip(records, results, strict=True):
        for label, s, e in r.spans:
            gold[label] += 1
            mine = [f for f in found if f.label == label and f.start < e and s < f.end]
            hit[label] += bool(mine)
            exact[label] += any(f.start == s and f.end == e for f in mine)
            if not mine:
                missed[label].append(r.text[s:e])
        for f in found:
            pred[f.label] += 1
            if any(lab == f.label and s < f.end and f.start < e for lab, s, e in r.spans):
                correct[f.label] += 1
            else:
                wrong[f.label].append(r.text[max(0, f.start - 20) : f.end + 10])
    out: dict[str, Any] = {}
    for label in sorted(set(gold) | set(pred)):
        scored = label in gold or label in ENTITY_MAP.values()
        out[label] = {
            "detected": label in entities,
            "recall": _rate(hit[label], gold[label]),
            "recall_exact": _rate(exact[label], gold[label]),
            # an entity the set never labels: its findings cannot be judged right, only counted
            "precision": _rate(correct[label], pred[label]) if scored else None,
            "findings": pred[label],
            "missed": missed[label][:20],
            "false_findings": wrong[label][:20],
        }
    return out


# -- the code and infrastructure corpus ---------------------------------------------------
def _blocks(text: str) -> Iterator[tuple[int, str]]:
    lines = text.splitlines()
    for i in range(0, len(lines), BLOCK_LINES):
        block = "\n".join(lines[i : i + BLOCK_LINES])
        if block.strip():
            yield i // BLOCK_LINES, block


def _pick(key: str, modulo: int) -> bool:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % modulo == 0


def _files(root: Path, suffixes: set[str], skip: set[str]) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if p.is_file() and p.suffix in suffixes and not skip.intersection(rel[:-1]):
            out.append(p)
    return out


def _manifests(n: int = 60, seed: int = SEED) -> Iterator[tuple[str, str]]:
    """Helm-template-style rendered manifests (Deployment, Service, ConfigMap, HPA, NetworkPolicy)."""
    rng = random.Random(seed)
    for i in range(n):
        name = rng.choice(["gateway", "embeddings", "retriever", "vllm-engine", "qdrant", "ingest"]) + f"-{i}"
        digest = "".join(rng.choice("0123456789abcdef") for _ in range(64))
        commit = "".join(rng.choice("0123456789abcdef") for _ in range(40))
        cpu, mem, port = (
            rng.choice(["250m", "500m", "2", "4"]),
            rng.choice(["512Mi", "2Gi", "16Gi"]),
            rng.choice([8000, 8080, 6333, 9090]),
        )
        reps = rng.randint(1, 12)
        yield (
            f"manifest/{name}",
            f"""---
# Source: llmops/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels: {{app.kubernetes.io/name: {name}, app.kubernetes.io/version: "0.{i % 9}.{reps}", helm.sh/chart: llmops-0.1.{i}}}
  annotations:
    checksum/config: {digest}
    llmops.io/git-sha: {commit}
spec:
  replicas: {reps}
  revisionHistoryLimit: 10
  selector: {{matchLabels: {{app.kubernetes.io/name: {name}}}}}
  template:
    spec:
      containers:
        - name: {name}
          image: registry.local:5000/llmops/{name}@sha256:{digest}
          args: ["--port", "{port}", "--max-batch-tokens", "{rng.choice([8192, 16384, 32768])}", "--timeout", "{rng.randint(5, 600)}s"]
          ports: [{{containerPort: {port}, protocol: TCP}}]
          env:
            - {{name: OTEL_EXPORTER_OTLP_ENDPOINT, value: "http://otel-collector.monitoring.svc:4318"}}
            - {{name: LLMOPS_API_KEY, valueFrom: {{secretKeyRef: {{name: {name}-keys, key: api-key}}}}}}
            - {{name: RAY_ADDRESS, value: "ray://{name}-head-svc:10001"}}
          resources: {{requests: {{cpu: "{cpu}", memory: {mem}}}, limits: {{memory: {mem}, nvidia.com/gpu: {i % 2}}}}}
          readinessProbe: {{httpGet: {{path: /healthz, port: {port}}}, periodSeconds: {rng.randint(5, 30)}}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: llmops}}
spec: {{type: ClusterIP, ports: [{{name: http, port: 80, targetPort: {port}}}]}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {{name: {name}}}
spec: {{minReplicas: 1, maxReplicas: {reps * 2}, metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: {rng.randint(50, 90)}}}}}}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}-ingress}}
spec:
  ingress: [{{from: [{{ipBlock: {{cidr: 10.{rng.randint(0, 255)}.0.0/16}}}}, {{namespaceSelector: {{}}}}]}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}-config, uid: {rng.getrandbits(128):032x}}}
data:
  max_model_len: "{rng.choice([4096, 8192, 32768])}"
  served_at: "2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
""",
        )


def corpus_blocks(stdlib_every: int = 20) -> list[tuple[str, str]]:
    """``(block id, text)``: the fixed false-mask corpus (see the module docstring)."""
    out: list[tuple[str, str]] = []
    for p in _files(ROOT, _CODE_SUFFIXES, _SKIP_DIRS | {"llmops_platform.egg-info"}):
        rel = p.relative_to(ROOT).as_posix()
        if not rel.startswith(_EXCLUDED):
            out += [(f"project/{rel}#{i}", b) for i, b in _blocks(p.read_text(errors="replace"))]
    site = Path(sysconfig.get_paths()["purelib"])
    for p in _files(site, {".yaml", ".yml"}, _SKIP_DIRS | {"tests", "test", "langextract_prompts"}):
        out += [
            (f"site/{p.relative_to(site).as_posix()}#{i}", b)
            for i, b in _blocks(p.read_text(errors="replace"))
        ]
    for key, text in _manifests():
        out += [(f"{key}#{i}", b) for i, b in _blocks(text)]
    std = Path(sysconfig.get_paths()["stdlib"])
    skip = _SKIP_DIRS | {"test", "tests", "idle_test", "site-packages", "_bundled"}
    for p in _files(std, {".py"}, skip):
        rel = p.relative_to(std).as_posix()
        out += [(f"stdlib/{rel}#{i}", b) for i, b in _blocks(p.read_text(errors="replace"))
                if _pick(f"{rel}#{i}", stdlib_every)]  # fmt: skip
    return out


def _genuine(f: Finding, text: str) -> bool:
    """A mask of real PII in the corpus: only well-formed e-mail addresses (authors, maintainers)."""
    return f.label == "EMAIL_ADDRESS" and "@" in text[f.start : f.end]


def false_masks(
    scan: Callable[[Sequence[str]], list[list[Finding]]], blocks: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """Blocks with a false mask, masks per label, and examples of both kinds."""
    per_label: Counter[str] = Counter()
    blocks_per_label: Counter[str] = Counter()
    flagged = 0
    true: list[str] = []
    examples: list[dict[str, str]] = []
    for (key, text), found in zip(blocks, scan([t for _, t in blocks]), strict=True):
        bad = [f for f in found if not _genuine(f, text)]
        true += [text[f.start : f.end] for f in found if _genuine(f, text)]
        per_label.update(f.label for f in bad)
        blocks_per_label.update({f.label for f in bad})
        flagged += bool(bad)
        examples += [{"block": key, "label": f.label, "text": text[f.start : f.end]} for f in bad]
    by_source = Counter(k.split("/", 1)[0] for k, _ in blocks)
    return {"blocks": len(blocks), "by_source": dict(by_source), "false_masked_blocks": _rate(flagged, len(blocks)),
            "false_masks_per_label": dict(per_label), "false_masked_blocks_per_label": dict(blocks_per_label),
            "true_masks": true[:50], "examples": examples[:60]}  # fmt: skip


def timings(
    scans: dict[str, Callable[[Sequence[str]], Any]], texts: dict[str, str], reps: int = 200
) -> dict[str, Any]:
    """Median seconds of one ``scan([text])`` per check and text (after one warm-up call)."""
    out: dict[str, Any] = {}
    for name, scan in scans.items():
        for tname, text in texts.items():
            scan([text])
            runs = []
            for _ in range(reps if len(text) < 1000 else max(reps // 10, 5)):
                t0 = time.perf_counter()
                scan([text])
                runs.append(time.perf_counter() - t0)
            out[f"{name}/{tname}"] = {
                "chars": len(text),
                "median_ms": round(statistics.median(runs) * 1e3, 4),
            }
    return out


def _pct(r: dict[str, Any]) -> str:
    if not r["n"]:
        return "     n/a"
    return f"{100 * r['value']:6.1f}% [{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}] ({r['k']}/{r['n']})"


def main(argv: Sequence[str] | None = None) -> int:
    from services.guardrails.pii import DEFAULT_ENTITIES, SUPPORTED_ENTITIES, PiiCheck
    from services.guardrails.secrets import SecretsCheck

    ap = argparse.ArgumentParser(prog="python -m evals.guardrails_pii", description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=["dev", "test", "all"], default="test")
    ap.add_argument("--json", action="store_true", help="print the full report as JSON")
    ap.add_argument("--entities", help="comma-separated entities, or 'all' (default: the check's defaults)")
    ap.add_argument("--limit", type=int, help="only the first N texts of the split (a quick look)")
    ap.add_argument("--data", type=Path, default=DATA, help="a dataset in the same format")
    ap.add_argument("--no-corpus", action="store_true", help="skip the false-mask corpus and timings")
    args = ap.parse_args(argv)
    ents = list(SUPPORTED_ENTITIES if args.entities == "all" else
                args.entities.split(",") if args.entities else DEFAULT_ENTITIES)  # fmt: skip
    pii, secrets = PiiCheck(entities=ents), SecretsCheck()
    records = split_records(load_records(args.data), args.split)[: args.limit]
    report: dict[str, Any] = {"split": args.split, "seed": SEED, "texts": len(records), "entities": ents,
                              "per_entity": evaluate(pii.scan, records, ents)}  # fmt: skip
    if not args.no_corpus:
        blocks = [
            b for b in corpus_blocks() if args.split == "all" or _pick(b[0], 2) == (args.split == "dev")
        ]
        both = lambda ts: [a + b for a, b in zip(pii.scan(ts), secrets.scan(ts), strict=True)]  # noqa: E731
        report["corpus"] = {"python": sys.version.split()[0], "pii": false_masks(pii.scan, blocks),
                            "pii_and_secrets": false_masks(both, blocks)}  # fmt: skip
        prose = " ".join(r.text for r in load_records(args.data))
        code = "\n".join(t for _, t in blocks)
        texts = {
            "prose_300": prose[:300],
            "prose_9000": prose[:9000],
            "code_300": code[:300],
            "code_9000": code[:9000],
        }
        report["timing"] = timings({"pii": pii.scan, "secrets": secrets.scan, "both": both}, texts)
    if args.json:
        print(json.dumps(report, indent=1, default=float))
        return 0
    print(f"split={args.split} texts={len(records)} (template-grouped, seed {SEED})")
    print(f"{'entity':18s} {'recall (overlap)':34s} {'recall (exact)':34s} precision")
    for label, m in report["per_entity"].items():
        prec = _pct(m["precision"]) if m["precision"] else f"n/a ({m['findings']} findings, unlabelled type)"
        flag = "" if m["detected"] else "  (not enabled)"
        print(f"{label:18s} {_pct(m['recall']):34s} {_pct(m['recall_exact']):34s} {prec}{flag}")
    if "corpus" in report:
        for name in ("pii", "pii_and_secrets"):
            c = report["corpus"][name]
            print(f"false-masked blocks ({name}): {_pct(c['false_masked_blocks'])} of {c['blocks']} blocks "
                  f"{c['by_source']}; blocks per label {c['false_masked_blocks_per_label']}; "
                  f"true e-mails {len(c['true_masks'])}")  # fmt: skip
        for k, v in report["timing"].items():
            print(f"scan {k:20s} {v['median_ms']:8.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
