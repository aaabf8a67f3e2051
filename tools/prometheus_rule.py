"""Write the monitoring component's PrometheusRule from its Prometheus rule file.

The alerts live once, in ``nextbest.rules.yaml`` (what promtool checks and unit-tests, and
what a Prometheus without the Operator loads as it is); the PrometheusRule carries the same
``groups`` as its ``spec``. Kustomize cannot wrap a file into an object's field, so this
writes ``prometheus-rule.yaml`` and ``--check`` (and tests/deploy/test_monitoring.py) fails
when the committed one differs::

    python -m tools.prometheus_rule            # (re)write it: make monitoring-rules
    python -m tools.prometheus_rule --check    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMPONENT = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "components"
RULES = COMPONENT / "monitoring" / "nextbest.rules.yaml"
PROMETHEUS_RULE = COMPONENT / "monitoring" / "prometheus-rule.yaml"

_HEADER = """\
# GENERATED from nextbest.rules.yaml by `make monitoring-rules`: edit that file, not this one
# (a test fails when they differ). The alerts of docs/operations.md for the Prometheus
# Operator; a Prometheus selects this object with its ruleSelector (see "Install the
# monitoring component" in docs/operations.md).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: nextbest
  labels:
    app.kubernetes.io/name: nextbest
    app.kubernetes.io/component: monitoring
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule whose spec is ``rules_text`` (a rule file), comments included.

    The file's text is indented under ``spec:`` rather than parsed and dumped, so that the
    object reads like the file (block scalars and comments kept); its leading comment block
    is the file's own header and is left out.
    """
    lines = rules_text.splitlines()
    start = 0
    while start < len(lines) and (not lines[start].strip() or lines[start].startswith("#")):
        start += 1
    body = [f"  {line}" if line.strip() else "" for line in lines[start:]]
    if not body:
        raise ValueError("the rule file has no rules")
    return _HEADER + "\n".join(body) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.prometheus_rule", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if prometheus-rule.yaml is stale"
    )
    args = parser.parse_args(argv)
    wanted = render(RULES.read_text())
    current = PROMETHEUS_RULE.read_text() if PROMETHEUS_RULE.exists() else ""
    if args.check:
        if current != wanted:
            print(
                f"{PROMETHEUS_RULE} differs from {RULES.name}: run `make monitoring-rules`",
                file=sys.stderr,
            )
            return 1
        return 0
    if current != wanted:
        PROMETHEUS_RULE.write_text(wanted)
        print(f"wrote {PROMETHEUS_RULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
