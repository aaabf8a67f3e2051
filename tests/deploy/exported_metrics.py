"""The metrics the code exports: names, types and label names, collected two ways.

- **Registry**: a target's :class:`libs.observability.metrics.Metrics` is instantiated and
  its registry collected: every family it really registers, the process, platform and
  garbage-collector collectors included, with its type.
- **Code**: every ``prometheus_client`` constructor call (Counter, Gauge, Histogram,
  Summary, Info, Enum) in ``libs/`` and ``services/`` is read with ``ast``: its name and,
  where they are written as literals (or names bound to literals in the module), its label
  names. This finds the metrics of code that no registry here builds, such as the ingest
  target's once ``services/ingest`` exists.

What a query may name is the series of these families: ``<counter>_total``, a histogram's
``_bucket``/``_sum``/``_count``, a gauge's own name.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from libs.observability.metrics import Metrics
from tests.deploy.manifests import ROOT

SCANNED = ("libs", "services")
_CONSTRUCTORS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "Info": "info",
    "Enum": "stateset",
}

# The ingest target (services/ingest, written on another branch at the same time as the
# monitoring component) exports these two; until its code is in this tree they are taken
# as exported, so that the alert and the panels that use them can be checked. Once
# services/ingest exists they are no longer added: the scan must find them in the code
# (test_monitoring.py::test_the_ingest_metrics_come_from_the_code_once_it_exists).
INGEST_DIR = ROOT / "services" / "ingest"
PENDING_INGEST: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("nextbest_stream_consumer_lag", "gauge", frozenset()),
    ("nextbest_stream_messages", "counter", frozenset({"outcome"})),
)

# Series Prometheus makes itself for every scrape target, and the labels it (with the
# Operator's PodMonitor discovery) puts on every series of a target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
TARGET_LABELS = frozenset(
    {"job", "instance", "namespace", "pod", "container", "endpoint", "service", "__name__"}
)


@dataclass(frozen=True)
class Family:
    """One metric family: ``labels`` None when the code does not spell them as literals."""

    name: str
    type: str
    labels: frozenset[str] | None
    where: str

    def series(self) -> dict[str, frozenset[str] | None]:
        """The series names a query can use, each with its label names."""
        labels = self.labels
        if self.type == "counter":
            return {f"{self.name}_total": labels}
        if self.type == "histogram":
            bucket = None if labels is None else labels | {"le"}
            return {
                f"{self.name}_bucket": bucket,
                f"{self.name}_sum": labels,
                f"{self.name}_count": labels,
            }
        if self.type == "summary":
            quantile = None if labels is None else labels | {"quantile"}
            return {
                self.name: quantile,
                f"{self.name}_sum": labels,
                f"{self.name}_count": labels,
            }
        if self.type == "info":
            return {f"{self.name}_info": labels}
        return {self.name: labels}


def _normalised(name: str, kind: str) -> str:
    # prometheus_client drops a counter's "_total" (and an info's "_info") from its family
    # name and adds it back on the samples.
    suffix = {"counter": "_total", "info": "_info"}.get(kind)
    return name.removesuffix(suffix) if suffix else name


def from_registry() -> list[Family]:
    """The families a target's Metrics registers (what /metrics serves), by type."""
    metrics = Metrics(target="all", version="test")
    found = []
    for family in metrics.registry.collect():
        labels = {key for sample in family.samples for key in sample.labels}
        # A labelled family without children has no samples yet: its labels come from the code.
        known = frozenset(labels) if family.samples else None
        found.append(Family(family.name, family.type, known, "registry"))
    return found


class _Module:
    """What one module binds: imported prometheus_client constructors, literal constants."""

    def __init__(self, tree: ast.Module) -> None:
        self.constructors: dict[str, str] = {}  # local name -> type
        self.modules: set[str] = set()  # local names of the prometheus_client module
        self.literals: dict[str, ast.expr] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client":
                for alias in node.names:
                    if alias.name in _CONSTRUCTORS:
                        self.constructors[alias.asname or alias.name] = _CONSTRUCTORS[alias.name]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "prometheus_client":
                        self.modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if node.value is not None and isinstance(
                    node.value, ast.Constant | ast.List | ast.Tuple
                ):
                    for target in targets:
                        if isinstance(target, ast.Name):
                            self.literals[target.id] = node.value

    def kind(self, call: ast.Call) -> str | None:
        func = call.func
        if isinstance(func, ast.Name):
            return self.constructors.get(func.id)
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in self.modules
        ):
            return _CONSTRUCTORS.get(func.attr)
        return None

    def string(self, node: ast.expr | None) -> str | None:
        if isinstance(node, ast.Name):
            node = self.literals.get(node.id)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        return None

    def strings(self, node: ast.expr | None) -> list[str] | None:
        """A list or tuple of string literals (names and *starred names bound to such)."""
        if isinstance(node, ast.Name):
            node = self.literals.get(node.id)
        if not isinstance(node, ast.List | ast.Tuple):
            return None
        values: list[str] = []
        for item in node.elts:
            if isinstance(item, ast.Starred):
                inner = self.strings(item.value)
                if inner is None:
                    return None
                values.extend(inner)
                continue
            value = self.string(item)
            if value is None:
                return None
            values.append(value)
        return values


def _argument(call: ast.Call, position: int | None, keyword: str) -> ast.expr | None:
    """The argument given by ``keyword``, else at ``position`` (None: keyword-only)."""
    for item in call.keywords:
        if item.arg == keyword:
            return item.value
    if position is not None and len(call.args) > position:
        return call.args[position]
    return None


def _python_files() -> Iterator[Path]:
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "protos" not in path.relative_to(ROOT).parts:
                yield path


def scan(paths: list[Path] | None = None) -> list[Family]:
    """Every prometheus_client constructor call in ``paths`` (default: libs/, services/)."""
    found: list[Family] = []
    for path in paths if paths is not None else list(_python_files()):
        tree = ast.parse(path.read_text(), filename=str(path))
        module = _Module(tree)
        if not module.constructors and not module.modules:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            kind = module.kind(node)
            if kind is None:
                continue
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}"
            name = module.string(_argument(node, 0, "name"))
            if name is None:
                raise AssertionError(f"{where}: a metric whose name is not a literal")
            parts = [
                module.string(_argument(node, None, key)) or ""
                for key in ("namespace", "subsystem")
            ]
            full = "_".join(part for part in (*parts, name) if part)
            given = _argument(node, 2, "labelnames")
            labels = [] if given is None else module.strings(given)
            found.append(
                Family(
                    _normalised(full, kind),
                    kind,
                    None if labels is None else frozenset(labels),
                    where,
                )
            )
    return found


@functools.cache
def exported() -> dict[str, frozenset[str] | None]:
    """Every series name the code exports -> its label names (None: not known statically)."""
    families = from_registry() + scan()
    if not INGEST_DIR.exists():
        families += [Family(n, k, labels, "pending ingest") for n, k, labels in PENDING_INGEST]
    series: dict[str, frozenset[str] | None] = {}
    for family in families:
        for name, labels in family.series().items():
            known = series.get(name)
            if name not in series or known is None:
                series[name] = labels
            elif labels is not None:
                series[name] = known | labels
    return series
