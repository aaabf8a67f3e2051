"""The Prometheus Operator's objects, checked where kubernetes-validate cannot check them.

kubernetes-validate knows only the built-in kinds: a PodMonitor or a PrometheusRule gets
"couldn't find schema" and no validation at all. So these are checked here against the
fields the operator documents for ``monitoring.coreos.com/v1`` (its API reference), written
as JSON Schemas of the fields this project may use: an unknown or misspelt field, a
duration Prometheus would not parse, a relabel action that does not exist or a rule that
is neither an alert nor a recording rule is an error, as the operator's admission would
make it (or worse, its silent drop of the field).

``python -m tests.deploy.operator_crds RENDER BUILTIN`` (make deploy-check) checks the
operator's objects of a rendered overlay and writes the other objects to BUILTIN for
kubernetes-validate; a kind of another API group kubernetes-validate lacks still fails
there.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

GROUP = "monitoring.coreos.com"
API_VERSION = f"{GROUP}/v1"

Doc = dict[str, Any]

# Prometheus's duration grammar (units in decreasing order, each at most once), as the
# operator's CRDs constrain their Duration fields.
_DURATION = {
    "type": "string",
    "pattern": (
        r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
        r"(([0-9]+)ms)?)$"
    ),
    "minLength": 1,
}
_LABEL_NAME = {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_DNS_SUBDOMAIN = {
    "type": "string",
    "maxLength": 253,
    "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": _DNS_SUBDOMAIN,
        "namespace": _DNS_SUBDOMAIN,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _STRING_MAP,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "additionalProperties": False,
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_RELABEL_ACTIONS = (
    "replace",
    "keep",
    "drop",
    "hashmod",
    "labelmap",
    "labeldrop",
    "labelkeep",
    "lowercase",
    "uppercase",
    "keepequal",
    "dropequal",
)
_RELABEL_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": _LABEL_NAME},
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer", "minimum": 0},
        "replacement": {"type": "string"},
        # The operator accepts both spellings (replace, Replace).
        "action": {"enum": [*_RELABEL_ACTIONS, *(a[0].upper() + a[1:] for a in _RELABEL_ACTIONS)]},
    },
}
_POD_METRICS_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "string", "minLength": 1},
        "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "params": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "interval": _DURATION,
        "scrapeTimeout": _DURATION,
        "honorLabels": {"type": "boolean"},
        "honorTimestamps": {"type": "boolean"},
        "trackTimestampsStaleness": {"type": "boolean"},
        "filterRunning": {"type": "boolean"},
        "followRedirects": {"type": "boolean"},
        "enableHttp2": {"type": "boolean"},
        "relabelings": {"type": "array", "items": _RELABEL_CONFIG},
        "metricRelabelings": {"type": "array", "items": _RELABEL_CONFIG},
    },
}
_POD_MONITOR_SPEC = {
    "type": "object",
    "required": ["selector"],
    "additionalProperties": False,
    "properties": {
        "selector": _LABEL_SELECTOR,
        "namespaceSelector": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "any": {"type": "boolean"},
                "matchNames": {"type": "array", "items": {"type": "string"}},
            },
        },
        "podMetricsEndpoints": {"type": "array", "items": _POD_METRICS_ENDPOINT},
        "jobLabel": {"type": "string"},
        "podTargetLabels": {"type": "array", "items": {"type": "string"}},
        "sampleLimit": {"type": "integer", "minimum": 0},
        "targetLimit": {"type": "integer", "minimum": 0},
        "labelLimit": {"type": "integer", "minimum": 0},
        "labelNameLengthLimit": {"type": "integer", "minimum": 0},
        "labelValueLengthLimit": {"type": "integer", "minimum": 0},
        "keepDroppedTargets": {"type": "integer", "minimum": 0},
        "attachMetadata": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"node": {"type": "boolean"}},
        },
    },
}
_RULE = {
    "type": "object",
    "required": ["expr"],
    "additionalProperties": False,
    "properties": {
        "alert": {"type": "string", "minLength": 1},
        "record": {"type": "string", "minLength": 1},
        "expr": {"type": ["string", "integer"]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
    # Prometheus loads a rule that is exactly one of the two.
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
}
_PROMETHEUS_RULE_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "groups": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": _DURATION,
                    "query_offset": _DURATION,
                    "limit": {"type": "integer", "minimum": 0},
                    "partial_response_strategy": {"type": "string"},
                    "labels": _STRING_MAP,
                    "rules": {"type": "array", "items": _RULE},
                },
            },
        },
    },
}


def _object(kind: str, spec: Doc) -> Doc:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


SCHEMAS: dict[str, Doc] = {
    "PodMonitor": _object("PodMonitor", _POD_MONITOR_SPEC),
    "PrometheusRule": _object("PrometheusRule", _PROMETHEUS_RULE_SPEC),
}


def is_operator_object(doc: Doc) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0] == GROUP


def check(doc: Doc) -> None:
    """Raise AssertionError naming the field when ``doc`` is not a valid object of the
    operator's kinds this project uses."""
    kind = doc.get("kind")
    name = doc.get("metadata", {}).get("name")
    schema = SCHEMAS.get(str(kind))
    assert schema is not None, f"{kind} {name}: not a kind of {GROUP} checked here"
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path)
    )
    if errors:
        details = "; ".join(
            f"{'.'.join(str(p) for p in error.path) or '(object)'}: {error.message}"
            for error in errors
        )
        raise AssertionError(f"{kind} {name}: {details}")


def split(docs: Iterable[Doc]) -> tuple[list[Doc], list[Doc]]:
    """(built-in objects, the operator's objects)."""
    builtin: list[Doc] = []
    operator: list[Doc] = []
    for doc in docs:
        (operator if is_operator_object(doc) else builtin).append(doc)
    return builtin, operator


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.deploy.operator_crds RENDER BUILTIN", file=sys.stderr)
        return 2
    render, output = Path(argv[0]), Path(argv[1])
    docs = [doc for doc in yaml.safe_load_all(render.read_text()) if doc]
    builtin, operator = split(docs)
    failed = False
    for doc in operator:
        try:
            check(doc)
        except AssertionError as error:
            print(f"{render}: {error}", file=sys.stderr)
            failed = True
    output.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    if operator:
        print(f"{render}: {len(operator)} Prometheus Operator objects have documented fields")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
