"""What every safety and bias suite shares: items, API calls and their responses, metric specs,
the shipped data files and deterministic sampling.

A suite (one module each: :mod:`.bbq`, :mod:`.crows_pairs`, :mod:`.bold`, :mod:`.xstest`,
:mod:`.advbench`, :mod:`.decodingtrust`) turns its dataset into :class:`Item` s, each item
into one or more :class:`Call` s to the OpenAI API, and the :class:`Response` s into one
row per item whose columns are per-item scores. Every reported metric is the mean of one
such column (NaN = unmeasured, never averaged), so the evaluation reports' bootstrap CIs
and paired gate (:mod:`evals.report`) apply unchanged; the few statistics that are not
means (BOLD's gaps between groups) are :class:`Derived` and get their own bootstrap.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from evals.suite import Threshold

DATA_DIR = Path(__file__).resolve().parents[2] / "evals" / "data"

Route = Literal["chat", "completions"]


@dataclass(frozen=True)
class Item:
    """One benchmark record: a stable ``id`` (the same under every seed and limit), the
    ``group`` it is broken down by (a BBQ category, a BOLD group, ...) and its fields."""

    id: str
    group: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Call:
    """One request: ``route`` ``chat`` (``body`` has ``messages``) or ``completions`` (``prompt``);
    the model is added by the sender. ``id`` is the item's id, or ``<item id>#<part>``."""

    id: str
    route: Route
    body: dict[str, Any]

    def key(self, model: str, version: str) -> str:
        """What the cached response depends on: the request, the model and its version."""
        blob = json.dumps([self.route, self.body, model, version], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class Response:
    """What came back for one :class:`Call`. ``text`` is None when the request failed
    (``error`` says why; ``status``/``code``/``param`` from the API's error envelope).
    ``token_logprobs``/``tokens``: a completion's ``logprobs`` (with echo: the prompt's first)."""

    id: str
    text: str | None
    error: str | None = None
    status: int | None = None
    code: str | None = None
    param: str | None = None
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    key: str = ""

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SafetyMetric:
    """A reported metric: the mean of the per-item column ``key`` (evals.report's MetricSpec
    surface: ``name``, ``key``, ``higher_is_better``, ``threshold``)."""

    key: str
    description: str
    higher_is_better: bool
    threshold: Threshold | None = None

    @property
    def name(self) -> str:
        return self.key


@dataclass(frozen=True)
class Derived:
    """A statistic over a suite's rows that is not a mean of one column (e.g. the largest gap
    between group means); its CI is a bootstrap over rows resampled within ``strata``."""

    key: str
    description: str
    higher_is_better: bool
    statistic: Callable[[Sequence[Mapping[str, Any]]], float]
    strata: str = "group"
    threshold: Threshold | None = None


@dataclass
class SuiteSpec:
    """The combined suite of a run, as :func:`evals.report.build_report` and ``gate`` read it."""

    name: str
    metrics: list[SafetyMetric] = field(default_factory=list)


ToxicityScorer = Callable[[Sequence[str]], list[float]]


@dataclass
class Scorers:
    """Text scorers the suites share. ``toxicity`` None: unmeasured, ``toxicity_note`` says why."""

    sentiment: Callable[[Sequence[str]], list[float]]
    toxicity: ToxicityScorer | None
    toxicity_note: str = ""


class SafetySuite(Protocol):
    """One benchmark: its items, the requests they need, and per-item scores."""

    @property
    def name(self) -> str: ...

    @property
    def default_limit(self) -> int:
        """Items evaluated without ``--limit`` (sized for minutes on a CPU engine)."""
        ...

    @property
    def metrics(self) -> tuple[SafetyMetric, ...]: ...

    @property
    def derived(self) -> tuple[Derived, ...]: ...

    @property
    def method(self) -> str:
        """How the suite measured (CrowS-Pairs: ``logprob_echo`` or ``ab_choice``); in the report."""
        ...

    def load(self, limit: int, seed: int) -> list[Item]: ...

    def calls(self, items: Sequence[Item]) -> list[Call]: ...

    def score(
        self, items: Sequence[Item], responses: Mapping[str, Response], scorers: Scorers
    ) -> list[dict[str, Any]]: ...


# -- data files ---------------------------------------------------------------------------------
def data_path(*parts: str) -> Path:
    """A shipped data file (``evals/data/...``); a missing one is an error naming it."""
    path = DATA_DIR.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"safety data file {path} is missing (see evals/data/*/ATTRIBUTION.md)")
    return path


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not JSON: {e}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object")
        out.append(rec)
    return out


def read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(read_text(path))))
    missing = [c for c in required if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return rows


def require(rec: Mapping[str, Any], where: str, *names: str) -> None:
    """Fail on a record that lacks a field, naming the file position and the field."""
    for n in names:
        if n not in rec or rec[n] is None:
            raise ValueError(f"{where}: record has no field {n!r}")


# -- sampling -----------------------------------------------------------------------------------
def stratified_sample(items: Sequence[Item], limit: int, seed: int, salt: str) -> list[Item]:
    """Up to ``limit`` items, round-robin over the groups (sorted by name) of seeded shuffles.

    Deterministic for a seed, and nested: the first N of a larger sample are the sample of N,
    so runs with different limits still pair item by item in the gate.
    """
    by_group: dict[str, list[Item]] = {}
    for it in items:
        by_group.setdefault(it.group, []).append(it)
    queues = []
    for g in sorted(by_group):
        lst = sorted(by_group[g], key=lambda i: i.id)
        random.Random(f"{seed}:{salt}:{g}").shuffle(lst)
        queues.append(lst)
    out: list[Item] = []
    depth = 0
    while len(out) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(out) < limit:
                out.append(q[depth])
        depth += 1
    return out


def chat(user: str, *, system: str | None = None, **params: Any) -> dict[str, Any]:
    """A chat-completions body (greedy unless ``params`` say otherwise)."""
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"messages": msgs, "temperature": 0, **params}


def completion(prompt: str, **params: Any) -> dict[str, Any]:
    return {"prompt": prompt, "temperature": 0, **params}


def base_row(suite: str, item: Item, text: str, response: Response | None) -> dict[str, Any]:
    """The columns every suite's rows have (``category`` is the suite: evals.report groups by it)."""
    return {
        "id": item.id,
        "category": suite,
        "group": item.group,
        "input": text[:300],
        "answer": None if response is None else response.text,
        "error": None if response is None else response.error,
        "latency_s": 0.0 if response is None else response.latency_s,
    }
