"""The monitoring component: every target scraped, the alerts operations.md recommends (one
rule file, checked and unit-tested by promtool), a dashboard whose every query names a
metric, and labels, that the code exports.

The component is rendered in overlays/production-monitoring. Its Prometheus Operator
objects are checked against the operator's documented fields (tests/deploy/operator_crds.py),
since kubernetes-validate has no schema for them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import operator_crds
from tests.deploy.exported_metrics import (
    INGEST_DIR,
    PENDING_INGEST,
    PROMETHEUS_SERIES,
    TARGET_LABELS,
    exported,
    from_registry,
    scan,
)
from tests.deploy.manifests import (
    ROOT,
    Doc,
    container,
    container_env,
    deployments,
    objects,
    one,
    render,
    selects,
)
from tests.deploy.promql import PromQLError, references
from tools import prometheus_rule
from tools.launch import MESH_TARGETS

OVERLAY = "overlays/production-monitoring"
COMPONENT = ROOT / "deploy" / "kubernetes" / "components" / "monitoring"
RULES = COMPONENT / "nextbest.rules.yaml"
RULE_TESTS = ROOT / "tests" / "deploy" / "monitoring" / "alerts.test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
# Targets that run outside MESH_TARGETS (a component adds their Deployment).
OTHER_TARGETS = ("ingest",)
# What issue 16 asks the PrometheusRule to cover, and the alert that does.
REQUIRED_ALERTS = {
    "error rate": "NextbestServerErrors",
    "p99 over budget": "NextbestDecideLatencyOverBudget",
    "degraded share": "NextbestDegradedDecisions",
    "breaker open": "NextbestCircuitBreakerOpen",
    "ingestion lag": "NextbestIngestionLag",
    "database latency": "NextbestDatabaseSlow",
}
# The dashboard's rows (issue 16: RED per RPC, decisions per channel and action, degraded
# share and reasons, ingestion, model versions served).
REQUIRED_ROWS = ("RED per RPC", "Decisions", "Degraded decisions", "Ingestion", "Models")


def rules() -> list[Doc]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def dashboard(docs: list[Doc]) -> Doc:
    config = one(docs, "ConfigMap", "nextbest-dashboard")
    assert config["metadata"]["labels"].get("grafana_dashboard") == "1", "the sidecar's label"
    (text,) = config["data"].values()
    parsed: Doc = json.loads(text)
    return parsed


def queries(board: Doc) -> list[tuple[str, str]]:
    """(where, expression) of every panel target and template variable query."""
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable {variable['name']}", text))
    return found


# --------------------------------------------------------------------------- checks


def check_query(expr: str, series: dict[str, frozenset[str] | None]) -> None:
    """Every metric ``expr`` names is exported (or made by Prometheus), and every label it
    matches or groups by is one of that metric's (or a target label)."""
    try:
        found = references(expr)
    except PromQLError as error:
        raise AssertionError(str(error)) from error
    assert found.metrics or found.grouping, f"names no metric: {expr!r}"
    available = set(TARGET_LABELS) | found.introduced
    for metric in found.metrics:
        if metric in PROMETHEUS_SERIES:
            continue
        assert metric in series, f"{metric} is not exported by the code ({expr!r})"
        labels = series[metric]
        if labels is None:  # not spelt as literals in the code: nothing to compare
            available |= found.grouping
            continue
        available |= labels
        unknown = found.matchers.get(metric, set()) - labels - TARGET_LABELS
        assert not unknown, f"{metric} has no label {sorted(unknown)} ({expr!r})"
    unknown = found.grouping - available
    assert not unknown, f"no metric of {expr!r} has the label {sorted(unknown)}"


def check_dashboard(board: Doc, series: dict[str, frozenset[str] | None]) -> None:
    rows = [panel["title"] for panel in board["panels"] if panel["type"] == "row"]
    for title in REQUIRED_ROWS:
        assert title in rows, f"no row {title!r}: {rows}"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{panel['title']}: off the grid"
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for where, expr in queries(board):
        try:
            check_query(expr, series)
        except AssertionError as error:
            raise AssertionError(f"{where}: {error}") from error


def check_scraping(docs: list[Doc]) -> None:
    """Each nextbest Deployment's pods are selected by exactly one PodMonitor, on the port
    serving NEXTBEST_METRICS_PORT, as job nextbest-<target> (what NextbestTargetDown
    watches); a PodMonitor for every target."""
    monitors = objects(docs, "PodMonitor")
    assert sorted(monitors) == sorted(f"nextbest-{t}" for t in (*MESH_TARGETS, *OTHER_TARGETS))
    (down,) = (rule for rule in rules() if rule.get("alert") == "NextbestTargetDown")
    job_pattern = re.search(r'job=~"([^"]+)"', down["expr"])
    assert job_pattern is not None
    for name, deployment in deployments(docs).items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/name") != "nextbest":
            continue
        target = labels["app.kubernetes.io/component"]
        chosen = [m for m in monitors.values() if selects(m["spec"]["selector"], labels)]
        assert [m["metadata"]["name"] for m in chosen] == [f"nextbest-{target}"], name
        monitor = chosen[0]
        assert "namespaceSelector" not in monitor["spec"], "the pods are in its own namespace"
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        item = container(deployment)
        ports = {port["name"]: port["containerPort"] for port in item["ports"]}
        metrics_port = container_env(docs, item)["NEXTBEST_METRICS_PORT"]
        assert ports.get(endpoint["port"]) == int(metrics_port), f"{name}: {endpoint['port']}"
        assert endpoint.get("path", "/metrics") == "/metrics"
        jobs = [
            r["replacement"]
            for r in endpoint.get("relabelings", [])
            if r.get("targetLabel") == "job" and r.get("action", "replace").lower() == "replace"
        ]
        assert jobs == [f"nextbest-{target}"], f"{name}: job {jobs}"
        assert re.fullmatch(job_pattern.group(1), jobs[0]), "NextbestTargetDown misses it"
    # Nothing else is scraped (the migration Job's pod serves no metrics).
    for doc in docs:
        if doc["kind"] == "Job":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert not any(selects(m["spec"]["selector"], labels) for m in monitors.values())


def check_operator_objects(docs: list[Doc]) -> None:
    operator = [doc for doc in docs if operator_crds.is_operator_object(doc)]
    assert {doc["kind"] for doc in operator} == {"PodMonitor", "PrometheusRule"}
    for doc in operator:
        operator_crds.check(doc)


# --------------------------------------------------------------------------- the render


def test_the_component_adds_monitoring_and_changes_nothing_else() -> None:
    monitored = render(OVERLAY)
    production = render("overlays/production")
    added = [
        doc
        for doc in monitored
        if operator_crds.is_operator_object(doc)
        or (doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "nextbest-dashboard")
    ]
    rest = [doc for doc in monitored if not any(doc is other for other in added)]
    assert rest == production
    assert {doc["metadata"].get("namespace") for doc in added} == {"nextbest"}


def test_every_target_is_scraped() -> None:
    check_scraping(render(OVERLAY))


def test_operator_objects_have_the_documented_fields() -> None:
    check_operator_objects(render(OVERLAY))


def test_the_prometheus_rule_is_the_rule_file() -> None:
    rendered = one(render(OVERLAY), "PrometheusRule", "nextbest")
    assert rendered["spec"] == yaml.safe_load(RULES.read_text())
    assert prometheus_rule.main(["--check"]) == 0, "run `make monitoring-rules`"


def test_the_generator_notices_a_stale_prometheus_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, generated = tmp_path / "nextbest.rules.yaml", tmp_path / "prometheus-rule.yaml"
    source.write_text(RULES.read_text())
    monkeypatch.setattr(prometheus_rule, "RULES", source)
    monkeypatch.setattr(prometheus_rule, "PROMETHEUS_RULE", generated)
    assert prometheus_rule.main(["--check"]) == 1, "missing"
    assert prometheus_rule.main([]) == 0
    assert prometheus_rule.main(["--check"]) == 0
    assert yaml.safe_load(generated.read_text())["spec"] == yaml.safe_load(source.read_text())
    source.write_text(RULES.read_text().replace("> 0.05", "> 0.07"))
    assert prometheus_rule.main(["--check"]) == 1
    assert "make monitoring-rules" in capsys.readouterr().err


def test_the_alerts_are_those_operations_md_lists() -> None:
    names = [rule["alert"] for rule in rules() if "alert" in rule]
    assert len(names) == len(set(names))
    for need, alert in REQUIRED_ALERTS.items():
        assert alert in names, f"no alert for {need}"
    documented = re.findall(r"^\| `(Nextbest\w+)` \|", OPERATIONS.read_text(), re.MULTILINE)
    assert sorted(documented) == sorted(names), "docs/operations.md, Alerts: the table"
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_dashboard_queries_name_metrics_the_code_exports() -> None:
    check_dashboard(dashboard(render(OVERLAY)), exported())


def test_alert_expressions_name_metrics_the_code_exports() -> None:
    series = exported()
    for rule in rules():
        try:
            check_query(rule["expr"], series)
        except AssertionError as error:
            raise AssertionError(f"{rule['alert']}: {error}") from error


# --------------------------------------------------------------------------- exported metrics


def test_the_code_scan_agrees_with_the_registry() -> None:
    """The scan finds exactly what a target's registry registers (besides the process,
    platform and GC collectors, which are not constructor calls), with the same types."""
    registry = {f.name: f.type for f in from_registry()}
    scanned = {f.name: f.type for f in scan() if f.where.startswith("libs/observability/")}
    collectors = {name for name in registry if name.startswith(("process_", "python_"))}
    assert {n: t for n, t in registry.items() if n not in collectors} == scanned
    for family in scan():
        assert family.labels is not None, f"{family.where}: label names not literals"
    series = exported()
    assert series["grpc_server_handling_seconds_bucket"] == frozenset(
        {"grpc_service", "grpc_method", "grpc_type", "le"}
    )
    assert series["nextbest_decisions_total"] == frozenset(
        {"channel", "issue", "action", "outcome"}
    )
    assert "process_cpu_seconds_total" in series
    assert "nextbest_decisions" not in series, "a counter is queried as <name>_total"


def test_the_scan_reads_constructors_however_they_are_imported(tmp_path: Path) -> None:
    module = tmp_path / "ingest.py"
    module.write_text(
        "import prometheus_client as pc\n"
        "from prometheus_client import Gauge as G\n"
        "from collections import Counter\n"
        'LAG = "stream_lag"\n'
        'OUTCOME = ["outcome"]\n'
        "def build(r):\n"
        '    G(LAG, "Pending.", ["stream"], registry=r)\n'
        '    pc.Counter("stream_messages", "Taken.", [*OUTCOME, "stream"], namespace="nb")\n'
        '    pc.Histogram(name="stream_seconds", documentation="Time.", labelnames=dynamic())\n'
        '    Counter("not a metric")\n'
    )
    found = {family.name: (family.type, family.labels) for family in scan([module])}
    assert found == {
        "stream_lag": ("gauge", frozenset({"stream"})),
        "nb_stream_messages": ("counter", frozenset({"outcome", "stream"})),
        "stream_seconds": ("histogram", None),
    }


def test_the_ingest_metrics_come_from_the_code_once_it_exists() -> None:
    """PENDING_INGEST stands in for the ingest target's metrics only while services/ingest
    is missing; once it exists, the code must export them (with those types)."""
    scanned = {family.name: family for family in scan()}
    for name, kind, labels in PENDING_INGEST:
        if INGEST_DIR.exists():
            assert name in scanned, f"services/ingest exports no {name}"
            found = scanned[name].labels
            assert scanned[name].type == kind
            assert found is None or labels <= found, f"{name}: labels {found}"
        else:
            assert name not in scanned, f"{name} is in the code: drop it from PENDING_INGEST"


# --------------------------------------------------------------------------- the checks fail


def _typo_metric(board: Doc) -> None:
    board["panels"][1]["targets"][0]["expr"] = "sum(rate(grpc_server_handle_total[5m]))"


def _histogram_without_suffix(board: Doc) -> None:
    board["panels"][1]["targets"][0]["expr"] = (
        "histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds[5m])))"
    )


def _counter_without_total(board: Doc) -> None:
    board["panels"][1]["targets"][0]["expr"] = "sum(rate(nextbest_decisions[5m]))"


def _typo_label(board: Doc) -> None:
    board["panels"][1]["targets"][0]["expr"] = (
        'sum by (chanel) (rate(nextbest_decisions_total{outcome="action"}[5m]))'
    )


def _typo_matcher(board: Doc) -> None:
    board["panels"][1]["targets"][0]["expr"] = (
        'sum(rate(nextbest_decisions_total{grpc_method="Decide"}[5m]))'
    )


def _typo_function(board: Doc) -> None:
    board["panels"][1]["targets"][0]["expr"] = "sum(rates(nextbest_decisions_total[5m]))"


def _unknown_variable_metric(board: Doc) -> None:
    board["templating"]["list"][1]["query"]["query"] = "label_values(nextbest_buildinfo, ns)"


def _panel_without_query(board: Doc) -> None:
    board["panels"][1]["targets"] = []


def _no_ingestion_row(board: Doc) -> None:
    board["panels"] = [p for p in board["panels"] if p["title"] != "Ingestion"]


@pytest.mark.parametrize(
    "breaks",
    [
        _typo_metric,
        _histogram_without_suffix,
        _counter_without_total,
        _typo_label,
        _typo_matcher,
        _typo_function,
        _unknown_variable_metric,
        _panel_without_query,
        _no_ingestion_row,
    ],
)
def test_the_dashboard_check_catches(breaks: Callable[[Doc], None]) -> None:
    board = dashboard(render(OVERLAY))
    check_dashboard(copy.deepcopy(board), exported())
    breaks(board)
    with pytest.raises(AssertionError):
        check_dashboard(board, exported())


def _wrong_port(docs: list[Doc]) -> None:
    one(docs, "PodMonitor", "nextbest-scoring")["spec"]["podMetricsEndpoints"][0]["port"] = "grpc"


def _wrong_job(docs: list[Doc]) -> None:
    endpoint = one(docs, "PodMonitor", "nextbest-context")["spec"]["podMetricsEndpoints"][0]
    endpoint["relabelings"][0]["replacement"] = "context"


def _two_monitors(docs: list[Doc]) -> None:
    one(docs, "PodMonitor", "nextbest-identity")["spec"]["selector"]["matchLabels"].pop(
        "app.kubernetes.io/component"
    )


def _unscraped(docs: list[Doc]) -> None:
    docs[:] = [d for d in docs if d["metadata"]["name"] != "nextbest-arbitration"]


def _misspelt_field(docs: list[Doc]) -> None:
    spec = one(docs, "PodMonitor", "nextbest-scoring")["spec"]
    spec["podMetricEndpoints"] = spec.pop("podMetricsEndpoints")


def _bad_interval(docs: list[Doc]) -> None:
    one(docs, "PodMonitor", "nextbest-scoring")["spec"]["podMetricsEndpoints"][0]["interval"] = (
        "30 seconds"
    )


def _bad_action(docs: list[Doc]) -> None:
    endpoint = one(docs, "PodMonitor", "nextbest-scoring")["spec"]["podMetricsEndpoints"][0]
    endpoint["relabelings"][0]["action"] = "rewrite"


def _rule_without_alert(docs: list[Doc]) -> None:
    one(docs, "PrometheusRule", "nextbest")["spec"]["groups"][0]["rules"][0].pop("alert")


def _rule_field_typo(docs: list[Doc]) -> None:
    rule = one(docs, "PrometheusRule", "nextbest")["spec"]["groups"][0]["rules"][0]
    rule["fro"] = rule.pop("for")


@pytest.mark.parametrize(
    ("breaks", "checks"),
    [
        (_wrong_port, check_scraping),
        (_wrong_job, check_scraping),
        (_two_monitors, check_scraping),
        (_unscraped, check_scraping),
        (_misspelt_field, check_operator_objects),
        (_bad_interval, check_operator_objects),
        (_bad_action, check_operator_objects),
        (_rule_without_alert, check_operator_objects),
        (_rule_field_typo, check_operator_objects),
    ],
)
def test_the_manifest_checks_catch(
    breaks: Callable[[list[Doc]], None], checks: Callable[[list[Doc]], None]
) -> None:
    docs = render(OVERLAY)
    checks(copy.deepcopy(docs))
    breaks(docs)
    with pytest.raises(AssertionError):
        checks(docs)


# --------------------------------------------------------------------------- promtool


def promtool() -> str:
    """The promtool binary (Debian's `prometheus`), or skip (fail in CI)."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("NEXTBEST_TEST_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is required (NEXTBEST_TEST_REQUIRE_PROMTOOL=1) but not found")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    binary = promtool()
    checked = run(binary, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(binary, "test", "rules", RULE_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    unit_tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    covered = {case["alertname"] for test in unit_tests for case in test["alert_rule_test"]}
    assert len(covered & set(REQUIRED_ALERTS.values())) >= 2


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    > 0.01\n", "    > 0.2\n"),  # error rate: the 9 % of the test no longer fires
        ("    > 0.1\n        for: 10m", "    > 0.3\n        for: 10m"),  # latency budget
        ('"(.+): circuit open"', '"(.+): circuit"'),  # the dependency label
        ("max(nextbest_stream_consumer_lag)", "sum(nextbest_stream_consumer_lag)"),
    ],
)
def test_the_rule_unit_tests_catch_a_changed_rule(tmp_path: Path, old: str, new: str) -> None:
    binary = promtool()
    text = RULES.read_text()
    assert text.count(old) == 1, old
    changed = tmp_path / "nextbest.rules.yaml"
    changed.write_text(text.replace(old, new))
    assert run(binary, "check", "rules", changed).returncode == 0, "still a valid rule file"
    tests: dict[str, Any] = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(changed)]
    (tmp_path / "alerts.test.yaml").write_text(yaml.safe_dump(tests))
    result = run(binary, "test", "rules", tmp_path / "alerts.test.yaml")
    assert result.returncode != 0, result.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query as a recording rule (Grafana's variables replaced by values), so
    that promtool's parser, not only the reader above, accepts them."""
    binary = promtool()
    board = dashboard(render(OVERLAY))
    recorded = []
    for index, (_where, expr) in enumerate(queries(board)):
        if expr.startswith("label_values("):
            continue  # Grafana's, not PromQL
        text = expr.replace("$__rate_interval", "5m").replace("$namespace", ".+")
        recorded.append({"record": f"nextbest:dashboard_query_{index}", "expr": text})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    result = run(binary, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
