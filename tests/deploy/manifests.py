"""Render the kustomize overlays and read them the way Kubernetes would (shared by the tests).

``render`` runs ``kubectl kustomize``; ``container_env`` resolves a container's environment
from its ``env``/``envFrom`` entries and the rendered ConfigMaps and Secrets, as the kubelet
does; ``ingress_allowed``/``egress_allowed`` evaluate the rendered NetworkPolicies for one
connection, so the tests can state the intended traffic matrix instead of YAML shapes.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.launch import MESH_TARGETS

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production", "production-monitoring", "production-stream")
# Everything CI renders: the base alone and each overlay (which cover every component).
RENDERED = ("base", *(f"overlays/{name}" for name in OVERLAYS))
INTERNAL_TARGETS = tuple(t for t in MESH_TARGETS if t != "orchestrator")
GRPC_PORT = 50051
METRICS_PORT = 9090
# The plaintext health-only port of the tls component (the kubelet's probes go there).
HEALTH_PORT = 8086
IMAGE = "nextbest"
# The Kubernetes version the manifests are validated against (Makefile: deploy-check).
KUBERNETES_VERSION = "1.31.0"

Doc = dict[str, Any]

# A value the render cannot provide (a Secret created outside kustomize, in production).
EXTERNAL = "<external secret>"


def kubectl() -> str | None:
    """The kubectl binary, or skip the test (fail when NEXTBEST_TEST_REQUIRE_KUBECTL=1)."""
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("NEXTBEST_TEST_REQUIRE_KUBECTL") == "1":
            pytest.fail("kubectl is required (NEXTBEST_TEST_REQUIRE_KUBECTL=1) but not found")
        pytest.skip("kubectl is not installed")
    return found


@functools.cache
def _render(path: str) -> str:
    binary = kubectl()
    assert binary is not None
    result = subprocess.run(
        [binary, "kustomize", str(KUSTOMIZE_DIR / path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{result.stderr}")
    return result.stdout


def render(path: str) -> list[Doc]:
    """The objects of ``deploy/kubernetes/<path>``, rendered (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_render(path)) if doc]


def objects(docs: Iterable[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def one(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    found = objects(docs, kind)
    assert name in found, f"no {kind} {name}: {sorted(found)}"
    return found[name]


def deployments(docs: Iterable[Doc]) -> dict[str, Doc]:
    return objects(docs, "Deployment")


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Doc, name: str = "nextbest") -> Doc:
    for item in pod_spec(workload)["containers"]:
        if item["name"] == name:
            found: Doc = item
            return found
    raise AssertionError(f"{workload['metadata']['name']} has no container {name}")


def generated(docs: Iterable[Doc], kind: str, name: str) -> Doc | None:
    """A ConfigMap or Secret by its name before kustomize's hash suffix (None if absent)."""
    for doc in docs:
        if doc["kind"] != kind:
            continue
        actual = doc["metadata"]["name"]
        if actual == name or actual.rpartition("-")[0] == name:
            return doc
    return None


def _data(doc: Doc) -> dict[str, str]:
    values = {key: str(value) for key, value in (doc.get("data") or {}).items()}
    if doc["kind"] == "Secret":
        values = {key: base64.b64decode(value).decode() for key, value in values.items()}
        values.update({key: str(value) for key, value in (doc.get("stringData") or {}).items()})
    return values


def data(docs: Iterable[Doc], kind: str, name: str) -> dict[str, str] | None:
    """The decoded data of a ConfigMap or Secret, by its rendered name (None if absent)."""
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return _data(doc)
    return None


def container_env(docs: list[Doc], item: Doc) -> dict[str, str]:
    """The environment the kubelet gives ``item`` (a container): ``envFrom`` first, then
    ``env`` (which wins). Values of Secrets the render lacks are ``EXTERNAL``."""
    env: dict[str, str] = {}
    for source in item.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            values = data(docs, "ConfigMap", source["configMapRef"]["name"])
            assert values is not None, f"missing ConfigMap {source['configMapRef']['name']}"
        else:
            values = data(docs, "Secret", source["secretRef"]["name"])
            assert values is not None, f"missing Secret {source['secretRef']['name']}"
        env.update({prefix + key: value for key, value in values.items()})
    for entry in item.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        reference = entry["valueFrom"]
        if "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            values = data(docs, "ConfigMap", ref["name"])
            assert values is not None, f"missing ConfigMap {ref['name']}"
            env[entry["name"]] = values[ref["key"]]
        elif "secretKeyRef" in reference:
            ref = reference["secretKeyRef"]
            values = data(docs, "Secret", ref["name"])
            env[entry["name"]] = EXTERNAL if values is None else values[ref["key"]]
        else:
            raise AssertionError(f"unsupported valueFrom in {entry}")
    return env


def secret_refs(item: Doc) -> dict[str, tuple[str, str]]:
    """Variables of ``item`` taken from a Secret key: name -> (secret, key)."""
    return {
        entry["name"]: (
            entry["valueFrom"]["secretKeyRef"]["name"],
            entry["valueFrom"]["secretKeyRef"]["key"],
        )
        for entry in item.get("env", [])
        if "secretKeyRef" in entry.get("valueFrom", {})
    }


def mounted_volumes(workload: Doc, item: Doc) -> dict[str, Doc]:
    """mountPath -> the volume mounted there."""
    volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes", [])}
    for claim in workload["spec"].get("volumeClaimTemplates", []):
        volumes[claim["metadata"]["name"]] = {"persistentVolumeClaim": claim["spec"]}
    return {mount["mountPath"]: volumes[mount["name"]] for mount in item.get("volumeMounts", [])}


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions; {} = all) matches ``labels``."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


# The namespace the policies are rendered for (its automatic name label).
OWN_NAMESPACE: Mapping[str, str] = {"kubernetes.io/metadata.name": "nextbest"}


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod's labels (None = not a pod: a client outside the
    cluster, a load balancer) and its namespace's labels (None = the policies' namespace)."""

    pod: Mapping[str, str] | None
    namespace: Mapping[str, str] | None = None


def _peer_matches(rule_peers: list[Doc], peer: Peer) -> bool:
    if not rule_peers:
        return True  # no from/to: any source or destination
    namespace = OWN_NAMESPACE if peer.namespace is None else peer.namespace
    for item in rule_peers:
        if "ipBlock" in item:
            if peer.pod is None:
                return True  # addresses outside the pods (CIDRs are not modelled)
            continue
        if peer.pod is None:
            continue
        if "namespaceSelector" in item:
            if not selects(item["namespaceSelector"], namespace):
                continue
        elif namespace != OWN_NAMESPACE:
            continue  # a podSelector alone means pods of the policy's own namespace
        if "podSelector" in item and not selects(item["podSelector"], peer.pod):
            continue
        return True
    return False


def _port_matches(ports: list[Doc], port: int, protocol: str) -> bool:
    if not ports:
        return True
    return any(
        item.get("port") in (None, port) and item.get("protocol", "TCP") == protocol
        for item in ports
    )


def _allowed(
    docs: Iterable[Doc],
    direction: str,
    pod: Mapping[str, str],
    other: Peer,
    port: int,
    protocol: str,
) -> bool:
    policies = [
        doc
        for doc in docs
        if doc["kind"] == "NetworkPolicy"
        and direction.capitalize() in doc["spec"].get("policyTypes", ["Ingress"])
        and selects(doc["spec"]["podSelector"], pod)
    ]
    if not policies:
        return True  # a pod no policy selects is not isolated
    side = "from" if direction == "ingress" else "to"
    return any(
        _peer_matches(rule.get(side, []), other)
        and _port_matches(rule.get("ports", []), port, protocol)
        for policy in policies
        for rule in policy["spec"].get(direction, [])
    )


def ingress_allowed(
    docs: Iterable[Doc], pod: Mapping[str, str], source: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """May ``source`` open a connection to ``pod`` (labels, in the policies' namespace)?"""
    return _allowed(docs, "ingress", pod, source, port, protocol)


def egress_allowed(
    docs: Iterable[Doc], pod: Mapping[str, str], destination: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """May ``pod`` open a connection to ``destination``?"""
    return _allowed(docs, "egress", pod, destination, port, protocol)


def connection_allowed(
    docs: Iterable[Doc], source: Mapping[str, str], destination: Mapping[str, str], port: int
) -> bool:
    """Pod to pod within the namespace: egress of one and ingress of the other."""
    return egress_allowed(docs, source, Peer(destination), port) and ingress_allowed(
        docs, destination, Peer(source), port
    )


def pod_labels(target: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "nextbest",
        "app.kubernetes.io/component": target,
        "app.kubernetes.io/part-of": "nextbest",
    }
