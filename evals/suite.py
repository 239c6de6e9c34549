"""Evaluation suites as data: a YAML file names a dataset, a prompt, metrics and thresholds.

Like promptfoo or DeepEval test files, so users add their own without code::

    name: qa
    description: SQuAD 2.0 questions answered from their paragraph
    dataset: data/qa.jsonl.gz          # relative to this file; .jsonl or .jsonl.gz
    fields: {input: question, expected: answers, context: context, category: title}
    prompt:
      system: Answer from the context only; say "unanswerable" if it holds no answer.
      user: "Context:\\n{context}\\n\\nQuestion: {input}"
    request: {temperature: 0, max_tokens: 64}
    metrics:
      - {name: squad_f1}
      - {name: squad_em, threshold: {min: 0.5, max_regression: 0.02}}

Every record of the dataset is one JSON object; ``fields`` maps the suite's roles
(``id``, ``input``, ``expected``, ``context``, ``category``) to its keys.
``expected`` may be a string or a list of acceptable answers; ``context`` a string
or a list of passages. A bad file fails with the path of the bad field.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SUITES_DIR = Path(__file__).resolve().parent / "suites"

# metric name -> whether it needs expected / context in the records
METRICS: dict[str, tuple[bool, bool]] = {
    "squad_em": (True, False),
    "squad_f1": (True, False),
    "exact": (True, False),
    "regex": (False, False),
    "json_valid": (False, False),
    "refusal": (False, False),
    "rouge1": (True, False),
    "rouge2": (True, False),
    "rougeL": (True, False),
    "rougeLsum": (True, False),
    "answer_relevance": (False, False),
    "context_support": (False, True),
    "judge": (False, False),
    "citation_hit": (True, False),
    "context_precision": (True, False),
}
Role = Literal["id", "input", "expected", "context", "category"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Threshold(_Strict):
    """``min``: the mean must reach it; ``max_regression``: the largest drop against a baseline
    that is tolerated even when significant (the gate fails only when the CI excludes 0 too)."""

    min: float | None = Field(None, description="Lowest acceptable mean.")
    max_regression: float = Field(0.0, ge=0, description="Tolerated drop against the baseline.")


class MetricSpec(_Strict):
    name: str = Field(description=f"One of: {', '.join(METRICS)}.")
    pattern: str | None = Field(None, description="regex: the pattern an answer must match.")
    required_keys: list[str] | None = Field(None, description="json_valid: keys the object must have.")
    rubric: str | None = Field(None, description="judge: a rubric name or a template with {answer}.")
    higher_is_better: bool = Field(True, description="False for metrics like refusal on harmful prompts.")
    no_answer: list[str] = Field(
        default_factory=list,
        description="squad_em/squad_f1: answers meaning 'no answer' (scored as the empty answer).",
    )
    threshold: Threshold | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; known: {', '.join(METRICS)}")
        return v

    @model_validator(mode="after")
    def _options(self) -> MetricSpec:
        if self.name == "regex" and not self.pattern:
            raise ValueError("metric 'regex' needs 'pattern'")
        if self.name == "judge" and not self.rubric:
            raise ValueError("metric 'judge' needs 'rubric'")
        return self

    @property
    def key(self) -> str:
        """The metric's column name: ``judge:<rubric>`` for judges, else its name."""
        return f"judge:{self.rubric}" if self.name == "judge" else self.name


class Prompt(_Strict):
    system: str | None = Field(None, description="System message (may use the same slots).")
    user: str = Field("{input}", description="User message: slots {input}, {context}, and any record key.")


class Suite(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    kind: Literal["chat", "retrieval"] = Field("chat", description="retrieval: the retrieval eval.")
    dataset: str | None = Field(None, description="JSONL(.gz) path, relative to the suite file.")
    fields: dict[Role, str] = Field(default_factory=dict, description="Suite role -> record key.")
    prompt: Prompt = Field(default_factory=Prompt)
    request: dict[str, Any] = Field(
        default_factory=lambda: {"temperature": 0, "max_tokens": 128},
        description="Extra chat-completion parameters (temperature, max_tokens, ...).",
    )
    metrics: list[MetricSpec] = Field(default_factory=list)
    attribution: str = Field("", description="Where the data comes from and its licence.")
    source: str | None = Field(None, exclude=True)  # the file this suite was read from

    @model_validator(mode="after")
    def _complete(self) -> Suite:
        if self.kind == "chat":
            if not self.dataset:
                raise ValueError("a chat suite needs 'dataset'")
            if not self.metrics:
                raise ValueError("a chat suite needs at least one metric")
            for i, m in enumerate(self.metrics):
                needs_expected, needs_context = METRICS[m.name]
                if needs_expected and "expected" not in self.fields:
                    raise ValueError(f"metrics[{i}] ({m.name}) needs fields.expected")
                if needs_context and "context" not in self.fields:
                    raise ValueError(f"metrics[{i}] ({m.name}) needs fields.context")
        return self

    def dataset_path(self) -> Path:
        base = Path(self.source).parent if self.source else Path.cwd()
        return (base / str(self.dataset)).resolve()


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the field."""


def _format(e: ValidationError, where: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {loc}: {err['msg']}")
    return "\n".join(lines)


def load_suite(name_or_path: str) -> Suite:
    """A shipped suite by name (``qa``) or a YAML file by path.

    Raises:
        SuiteError: no such suite, unreadable YAML, or an invalid field (named).
    """
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = SUITES_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(s.stem for s in SUITES_DIR.glob("*.yaml")))
        raise SuiteError(f"no suite {name_or_path!r} (a YAML path, or one of: {known})")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SuiteError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SuiteError(f"{p}: a suite is a mapping of fields, got {type(raw).__name__}")
    try:
        return Suite.model_validate({**raw, "source": str(p)})
    except ValidationError as e:
        raise SuiteError(_format(e, str(p))) from None


def shipped_suites() -> list[Suite]:
    return [load_suite(str(p)) for p in sorted(SUITES_DIR.glob("*.yaml"))]


@dataclass(frozen=True)
class Item:
    """One record in the suite's roles; ``record`` is the whole JSON object (for prompt slots)."""

    id: str
    input: str
    expected: list[str]
    context: list[str]
    category: str
    record: dict[str, Any]


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(x) for x in v]
    return [str(v)]


def items(suite: Suite, limit: int | None = None) -> Iterator[Item]:
    """The suite's records in file order (``limit``: spread evenly over the file).

    Raises:
        SuiteError: a line is not a JSON object or lacks the input field (line named).
    """
    path = suite.dataset_path()
    if not path.is_file():
        raise SuiteError(f"{suite.source}: dataset: {path} does not exist")
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode("utf-8") if path.suffix == ".gz" else raw.decode("utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    chosen: list[int] = list(range(len(lines)))
    if limit is not None and limit < len(lines):
        chosen = [i * len(lines) // limit for i in range(limit)]
    key = suite.fields.get
    for n in chosen:
        try:
            rec = json.loads(lines[n])
        except ValueError as e:
            raise SuiteError(f"{path}:{n + 1}: not JSON: {e}") from None
        if not isinstance(rec, dict) or key("input", "input") not in rec:
            raise SuiteError(f"{path}:{n + 1}: needs the input field {key('input', 'input')!r}")
        yield Item(
            id=str(rec.get(key("id", "id"), n)),
            input=str(rec[key("input", "input")]),
            expected=_as_list(rec.get(key("expected", "expected"))),
            context=_as_list(rec.get(key("context", "context"))),
            category=str(rec.get(key("category", "category"), "")),
            record=rec,
        )


def render(suite: Suite, item: Item) -> list[dict[str, str]]:
    """The chat messages for one item: the prompt's slots filled from the item and its record."""
    slots = {**{k: v for k, v in item.record.items() if isinstance(v, str)}}
    slots |= {"input": item.input, "context": "\n\n".join(item.context)}
    msgs = []
    if suite.prompt.system:
        msgs.append({"role": "system", "content": suite.prompt.system.format_map(_Slots(slots))})
    msgs.append({"role": "user", "content": suite.prompt.user.format_map(_Slots(slots))})
    return msgs


class _Slots(dict[str, str]):
    def __missing__(self, key: str) -> str:
        raise SuiteError(f"prompt slot {{{key}}} is not a field of the record")
