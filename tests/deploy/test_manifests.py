"""The rendered Kubernetes manifests have the properties the platform relies on.

Each ``check_*`` states one property over a render; the tests apply them to the base and
both overlays, and to deliberately broken copies (so a check that cannot fail is caught).
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from libs.config import Settings, load_settings
from tests.deploy import operator_crds
from tests.deploy.manifests import (
    EXTERNAL,
    GRPC_PORT,
    HEALTH_PORT,
    IMAGE,
    INTERNAL_TARGETS,
    KUBERNETES_VERSION,
    METRICS_PORT,
    RENDERED,
    ROOT,
    Doc,
    Peer,
    connection_allowed,
    container,
    container_env,
    data,
    deployments,
    egress_allowed,
    generated,
    ingress_allowed,
    mounted_volumes,
    objects,
    one,
    pod_labels,
    pod_spec,
    render,
    secret_refs,
    selects,
)
from tools.launch import MESH_TARGETS, PEERS

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
SECRET = "nextbest-secrets"
TLS_VARIABLES = (
    "NEXTBEST_TLS_CERT_FILE",
    "NEXTBEST_TLS_KEY_FILE",
    "NEXTBEST_PEER_TLS_CA_FILE",
    "NEXTBEST_PEER_TLS_CERT_FILE",
    "NEXTBEST_PEER_TLS_KEY_FILE",
    "NEXTBEST_AUTH_TOKENS_FILE",
)


def nextbest_workloads(docs: list[Doc]) -> list[Doc]:
    """Every Deployment and Job running the nextbest image."""
    return [
        doc
        for doc in docs
        if doc["kind"] in ("Deployment", "Job")
        and doc["metadata"]["labels"].get("app.kubernetes.io/name") == "nextbest"
    ]


def settings_fields() -> set[str]:
    return {f"NEXTBEST_{name.upper()}" for name in Settings.model_fields}


# --------------------------------------------------------------------------- checks


def check_targets(docs: list[Doc], *, demo: bool, health_port: bool = False) -> None:
    """One Deployment per target, all on the same image, each `serve --target <t>`; container
    ports grpc and metrics (and, with the tls component, the probes' port health)."""
    found = {
        name: doc
        for name, doc in deployments(docs).items()
        if doc["metadata"]["labels"].get("app.kubernetes.io/name") == "nextbest"
    }
    assert sorted(found) == sorted(MESH_TARGETS)
    images = {container(doc)["image"] for doc in nextbest_workloads(docs)}
    assert len(images) == 1, f"one image for every target and the Job: {images}"
    for target, doc in found.items():
        item = container(doc)
        expected = ["serve", "--target", target]
        if demo and target in ("scoring", "arbitration"):
            expected.append("--demo")
        assert item["args"] == expected, target
        assert selects(doc["spec"]["selector"], doc["spec"]["template"]["metadata"]["labels"])
        assert (
            doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == target
        )
        ports = {port["name"]: port["containerPort"] for port in item["ports"]}
        expected_ports = {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
        if health_port:
            expected_ports["health"] = HEALTH_PORT
        assert ports == expected_ports, target


def check_probes(docs: list[Doc], *, tls: bool) -> None:
    """The kubelet's native gRPC probes on the health service ("" = the whole target): on
    the gRPC port, or, with TLS (which that probe cannot speak), on the plaintext
    health-only port the target opens with NEXTBEST_HEALTH_PORT."""
    for name, doc in deployments(docs).items():
        if name not in MESH_TARGETS:
            continue
        item = container(doc)
        env = container_env(docs, item)
        port = GRPC_PORT
        if tls:
            port = HEALTH_PORT
            assert env.get("NEXTBEST_HEALTH_PORT") == str(HEALTH_PORT), f"{name}: health port"
            ports = {entry["name"]: entry["containerPort"] for entry in item["ports"]}
            assert ports.get("health") == HEALTH_PORT, f"{name}: no container port health"
        else:
            assert env.get("NEXTBEST_HEALTH_PORT", "0") == "0", f"{name}: needs no health port"
        for kind in PROBES:
            probe = item.get(kind)
            assert probe, f"{name}: no {kind}"
            handlers = {"grpc", "exec", "httpGet", "tcpSocket"} & set(probe)
            assert handlers == {"grpc"}, f"{name} {kind}: {handlers}"
            assert probe["grpc"]["port"] == port, f"{name} {kind}: port {probe['grpc']['port']}"
            assert probe["grpc"].get("service", "") == ""


def check_security(docs: list[Doc]) -> None:
    """Non-root, read-only, no privilege escalation, no capabilities, RuntimeDefault
    seccomp, a writable emptyDir at /tmp, requests and limits: for every workload."""
    workloads = [
        doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
    ]
    assert workloads
    for doc in workloads:
        name = f"{doc['kind']} {doc['metadata']['name']}"
        spec = pod_spec(doc)
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), name
        assert all("hostPath" not in volume for volume in spec.get("volumes", [])), name
        for item in spec["containers"] + spec.get("initContainers", []):
            context = item.get("securityContext", {})
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("privileged", False) is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not context.get("capabilities", {}).get("add"), name
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            volume = mounted_volumes(doc, item).get("/tmp")
            assert volume is not None and "emptyDir" in volume, f"{name}: no emptyDir at /tmp"
            resources = item.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{name} {section}"
        if doc["metadata"]["labels"].get("app.kubernetes.io/name") == "nextbest":
            user = pod.get("runAsUser")
            assert user == 10001, f"{name}: the image's user 10001, not {user}"


def check_services(docs: list[Doc]) -> None:
    """A headless Service per target, selecting exactly its pods, port names grpc/metrics."""
    services = objects(docs, "Service")
    for target in MESH_TARGETS:
        service = services.get(target)
        assert service is not None, f"no Service {target}"
        spec = service["spec"]
        assert spec.get("clusterIP") == "None", f"{target}: not headless"
        for other in MESH_TARGETS:
            matches = all(pod_labels(other).get(k) == v for k, v in spec["selector"].items())
            assert matches == (other == target), f"Service {target} selects {other}: {matches}"
        ports = {port["name"]: port for port in spec["ports"]}
        assert set(ports) == {"grpc", "metrics"}, target
        # Headless: clients connect to the pod's port itself, so the numbers must agree.
        assert ports["grpc"]["port"] == GRPC_PORT
        assert ports["grpc"].get("targetPort") in (None, "grpc", GRPC_PORT)
        assert ports["metrics"]["port"] == METRICS_PORT


def check_configuration(docs: list[Doc], *, log_format: str) -> None:
    """What each target reads: valid settings, peers at the headless Services, metrics on
    9090, secrets only from Secrets, a drain shorter than the grace period, connection age."""
    known = settings_fields()
    services = objects(docs, "Service")
    for doc in nextbest_workloads(docs):
        name = doc["metadata"]["name"]
        item = container(doc)
        env = container_env(docs, item)
        ours = {key: value for key, value in env.items() if key.startswith("NEXTBEST_")}
        unknown = set(ours) - known
        assert not unknown, f"{name}: not a setting (typo?): {sorted(unknown)}"
        # Validated as the process would at start-up (a bad value raises here).
        values = {
            key.removeprefix("NEXTBEST_").lower(): ("x" if value == EXTERNAL else value)
            for key, value in ours.items()
        }
        load_settings(**values)
        refs = secret_refs(item)
        assert _from_secret(refs, "NEXTBEST_DATABASE_URL"), f"{name}: database URL"
        if name == "identity":
            assert _from_secret(refs, "NEXTBEST_HASH_KEY"), "identity: hashing key"
        else:
            assert "NEXTBEST_HASH_KEY" not in env, f"{name} does not need the hashing key"
        assert env["NEXTBEST_LOG_FORMAT"] == log_format, name
        assert env["NEXTBEST_AUTO_MIGRATE"] == "false", f"{name}: the Job migrates"
        if doc["kind"] == "Job":
            continue
        assert env["NEXTBEST_PORT"] == str(GRPC_PORT)
        assert env["NEXTBEST_METRICS_PORT"] == str(METRICS_PORT)
        for peer in PEERS:
            assert env[f"NEXTBEST_{peer.upper()}_ADDRESS"] == f"dns:///{peer}:{GRPC_PORT}"
            assert services[peer]["spec"]["clusterIP"] == "None"
        age = float(env["NEXTBEST_MAX_CONNECTION_AGE_S"])
        assert 0 < age <= 300, f"{name}: clients re-resolve DNS only on reconnect"
        grace = float(env["NEXTBEST_SHUTDOWN_GRACE_S"])
        pre_stop = item.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        termination = pod_spec(doc)["terminationGracePeriodSeconds"]
        assert termination > grace + pre_stop, f"{name}: killed before the drain ends"


def _from_secret(refs: dict[str, tuple[str, str]], variable: str) -> bool:
    """Taken from nextbest-secrets (or the dev overlay's generated nextbest-secrets-<hash>)."""
    secret, _key = refs.get(variable, ("", ""))
    return secret == SECRET or secret.rpartition("-")[0] == SECRET


def check_disruption_and_scaling(docs: list[Doc], *, min_replicas: int, autoscaled: bool) -> None:
    found = deployments(docs)
    budgets = objects(docs, "PodDisruptionBudget")
    autoscalers = objects(docs, "HorizontalPodAutoscaler")
    assert bool(autoscalers) == autoscaled
    for target in MESH_TARGETS:
        replicas = found[target]["spec"].get("replicas", 1)
        assert replicas >= min_replicas, f"{target}: {replicas} replicas"
        budget = budgets.get(target)
        assert budget is not None, f"no PodDisruptionBudget {target}"
        assert selects(budget["spec"]["selector"], pod_labels(target))
        assert not selects(budget["spec"]["selector"], pod_labels("none"))
        assert budget["spec"].get("maxUnavailable") == 1 or "minAvailable" in budget["spec"]
        if not autoscaled:
            continue
        autoscaler = autoscalers.get(target)
        assert autoscaler is not None, f"no HorizontalPodAutoscaler {target}"
        assert autoscaler["apiVersion"] == "autoscaling/v2"
        spec = autoscaler["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": target,
        }
        assert spec["minReplicas"] >= min_replicas
        assert spec["maxReplicas"] > spec["minReplicas"]
        assert spec["minReplicas"] <= replicas <= spec["maxReplicas"]
        assert any(
            metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
            for metric in spec["metrics"]
        )
        assert container(found[target])["resources"]["requests"]["cpu"]


def check_migration_job(docs: list[Doc]) -> None:
    """`nextbest db upgrade` with the targets' image, configuration and database."""
    job = one(docs, "Job", "nextbest-migrate")
    item = container(job)
    assert item["args"] == ["db", "upgrade"]
    assert "command" not in item, "the image's entrypoint (nextbest) runs it"
    orchestrator = container(one(docs, "Deployment", "orchestrator"))
    assert item["image"] == orchestrator["image"]
    assert item["envFrom"] == orchestrator["envFrom"]
    assert (
        secret_refs(item)["NEXTBEST_DATABASE_URL"]
        == secret_refs(orchestrator)["NEXTBEST_DATABASE_URL"]
    )
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 1


def check_tls(docs: list[Doc]) -> None:
    """Every target serves TLS, calls peers with mTLS, checks tokens; the internal ones
    require a client certificate; the files come from mounted Secret directories."""
    for target in MESH_TARGETS:
        doc = one(docs, "Deployment", target)
        item = container(doc)
        env = container_env(docs, item)
        expected = set(TLS_VARIABLES)
        if target in INTERNAL_TARGETS:
            expected.add("NEXTBEST_TLS_CLIENT_CA_FILE")
        else:
            assert "NEXTBEST_TLS_CLIENT_CA_FILE" not in env, "public clients have no cert"
        missing = expected - set(env)
        assert not missing, f"{target}: {sorted(missing)}"
        mounts = mounted_volumes(doc, item)
        for variable in expected:
            path = Path(env[variable])
            volume = mounts.get(str(path.parent))
            assert volume is not None and "secret" in volume, f"{target} {variable}: {path}"
        for mount in item["volumeMounts"]:
            assert "subPath" not in mount, "a subPath mount never sees a rotated Secret"


def check_network_policies(docs: list[Doc]) -> None:
    """Only the orchestrator is reachable from outside; internal targets only from it."""
    outside = Peer(None)
    stranger = {"app.kubernetes.io/name": "something-else"}
    monitoring = Peer({"app": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"})
    elsewhere = Peer({"app": "prometheus"}, {"kubernetes.io/metadata.name": "default"})
    orchestrator = pod_labels("orchestrator")
    assert ingress_allowed(docs, orchestrator, outside, GRPC_PORT)
    assert ingress_allowed(docs, orchestrator, Peer(stranger), GRPC_PORT)
    assert not ingress_allowed(docs, orchestrator, outside, 8080), "default deny"
    assert not ingress_allowed(docs, stranger, outside, 8080), "default deny"
    for target in INTERNAL_TARGETS:
        pod = pod_labels(target)
        assert connection_allowed(docs, orchestrator, pod, GRPC_PORT), target
        assert not ingress_allowed(docs, pod, outside, GRPC_PORT), target
        assert not ingress_allowed(docs, pod, Peer(stranger), GRPC_PORT), target
        for other in INTERNAL_TARGETS:
            assert not connection_allowed(docs, pod_labels(other), pod, GRPC_PORT), (other, target)
        assert not ingress_allowed(
            docs, pod, Peer(orchestrator, {"kubernetes.io/metadata.name": "other"}), GRPC_PORT
        ), "an orchestrator of another namespace"
    for target in MESH_TARGETS:
        pod = pod_labels(target)
        assert ingress_allowed(docs, pod, monitoring, METRICS_PORT), target
        assert not ingress_allowed(docs, pod, elsewhere, METRICS_PORT), target
        assert not ingress_allowed(docs, pod, outside, METRICS_PORT), target
        assert egress_allowed(docs, pod, outside, 53, "UDP"), f"{target}: DNS"
        assert egress_allowed(docs, pod, outside, 5432), f"{target}: PostgreSQL"
        assert not egress_allowed(docs, pod, outside, 443), f"{target}: default deny egress"
    migrate = {"app.kubernetes.io/name": "nextbest", "app.kubernetes.io/component": "migrate"}
    assert egress_allowed(docs, migrate, outside, 5432)


# --------------------------------------------------------------------------- the renders


def test_base() -> None:
    docs = render("base")
    check_targets(docs, demo=False)
    check_probes(docs, tls=False)
    check_security(docs)
    check_services(docs)
    check_configuration(docs, log_format="json")
    check_disruption_and_scaling(docs, min_replicas=1, autoscaled=True)
    check_migration_job(docs)
    assert (
        one(docs, "Deployment", "identity")["spec"]["template"]["spec"]["containers"][0]["image"]
        == IMAGE
    )
    assert not objects(docs, "Secret"), "the base only references its Secret"
    assert not objects(docs, "NetworkPolicy")


def test_dev_overlay() -> None:
    docs = render("overlays/dev")
    check_targets(docs, demo=True)
    check_probes(docs, tls=False)
    check_security(docs)
    check_services(docs)
    check_configuration(docs, log_format="console")
    check_disruption_and_scaling(docs, min_replicas=1, autoscaled=False)
    check_migration_job(docs)
    for doc in deployments(docs).values():
        if doc["metadata"]["name"] in MESH_TARGETS:
            assert doc["spec"]["replicas"] == 1
            assert container(doc)["image"] == IMAGE, "a bare name, for Tilt to replace"
            assert container_env(docs, container(doc))["NEXTBEST_REFLECTION"] == "true"


def test_dev_overlay_runs_an_in_cluster_postgres() -> None:
    docs = render("overlays/dev")
    statefulset = one(docs, "StatefulSet", "postgres")
    service = one(docs, "Service", "postgres")
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["volumeClaimTemplates"], "data survives a pod restart"
    postgres = container_env(docs, container(statefulset, "postgres"))
    secret = generated(docs, "Secret", SECRET)
    assert secret is not None, "the dev overlay generates the development Secret"
    values = data(docs, "Secret", secret["metadata"]["name"])
    assert values is not None
    url = urlsplit(values["database-url"])
    assert url.scheme.startswith("postgresql")
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.path == "/" + postgres["POSTGRES_DB"]
    assert values["hash-key"]
    # Only nextbest pods reach the database.
    db = {"app.kubernetes.io/name": "postgres"}
    assert ingress_allowed(docs, db, Peer(pod_labels("context")), 5432)
    assert not ingress_allowed(docs, db, Peer({"app": "other"}), 5432)


def test_production_overlay() -> None:
    docs = render("overlays/production")
    check_targets(docs, demo=False, health_port=True)
    check_probes(docs, tls=True)
    check_security(docs)
    check_services(docs)
    check_configuration(docs, log_format="json")
    check_disruption_and_scaling(docs, min_replicas=2, autoscaled=True)
    check_migration_job(docs)
    check_tls(docs)
    check_network_policies(docs)
    image = container(one(docs, "Deployment", "orchestrator"))["image"]
    name, _, tag = image.rpartition(":")
    assert ("/" in name and tag and tag != "latest") or "@sha256:" in image, image
    for target in MESH_TARGETS:
        env = container_env(docs, container(one(docs, "Deployment", target)))
        reflection = "false" if target == "orchestrator" else "true"
        assert env["NEXTBEST_REFLECTION"] == reflection, target
        assert env["NEXTBEST_DATABASE_URL"] == EXTERNAL, "the external database's Secret"
    assert not objects(docs, "StatefulSet"), "no in-cluster PostgreSQL"
    assert {doc["metadata"].get("namespace") for doc in docs} == {"nextbest"}


@pytest.mark.parametrize("path", RENDERED)
def test_schema(path: str) -> None:
    """The render is valid Kubernetes (strict: no unknown field) at the stated version; the
    Prometheus Operator's objects, which kubernetes-validate has no schema for, are checked
    against the operator's documented fields instead."""
    try:
        validator = importlib.import_module("kubernetes_validate.utils")
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[dev]')")
    for doc in render(path):
        if operator_crds.is_operator_object(doc):
            operator_crds.check(doc)
        else:
            validator.validate(doc, KUBERNETES_VERSION, strict=True)


def test_makefile_validates_against_the_same_version() -> None:
    makefile = (ROOT / "Makefile").read_text()
    found = re.search(r"^KUBERNETES_VERSION \?= (\S+)$", makefile, re.MULTILINE)
    assert found is not None and found.group(1) == KUBERNETES_VERSION


# --------------------------------------------------------------------------- the checks fail


def _first_target(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", "context")


def _writable_root(docs: list[Doc]) -> None:
    container(_first_target(docs))["securityContext"]["readOnlyRootFilesystem"] = False


def _tcp_probe(docs: list[Doc]) -> None:
    container(_first_target(docs))["readinessProbe"] = {"tcpSocket": {"port": GRPC_PORT}}


def _cluster_ip(docs: list[Doc]) -> None:
    one(docs, "Service", "scoring")["spec"].pop("clusterIP")


def _typo_setting(docs: list[Doc]) -> None:
    container(_first_target(docs))["env"].append({"name": "NEXTBEST_MAX_CONN_AGE_S", "value": "1"})


def _short_grace(docs: list[Doc]) -> None:
    pod_spec(_first_target(docs))["terminationGracePeriodSeconds"] = 5


def _literal_database_url(docs: list[Doc]) -> None:
    item = container(_first_target(docs))
    item["env"] = [e for e in item["env"] if e["name"] != "NEXTBEST_DATABASE_URL"]
    item["env"].append({"name": "NEXTBEST_DATABASE_URL", "value": "postgresql://u:pw@db/x"})


def _second_image(docs: list[Doc]) -> None:
    container(_first_target(docs))["image"] = "nextbest:other"


def _no_budget(docs: list[Doc]) -> None:
    docs[:] = [
        d
        for d in docs
        if not (d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "identity")
    ]


def _open_internal(docs: list[Doc]) -> None:
    for doc in docs:
        if doc["kind"] == "NetworkPolicy" and doc["metadata"]["name"] == "internal-ingress":
            doc["spec"]["ingress"][0].pop("from")


def _reflection_on(docs: list[Doc]) -> None:
    item = container(one(docs, "Deployment", "orchestrator"))
    item["env"] = [e for e in item["env"] if e["name"] != "NEXTBEST_REFLECTION"]


def _probe_on_the_tls_port(docs: list[Doc]) -> None:
    container(_first_target(docs))["livenessProbe"]["grpc"]["port"] = GRPC_PORT


def _no_health_port(docs: list[Doc]) -> None:
    item = container(_first_target(docs))
    item["env"] = [e for e in item["env"] if e["name"] != "NEXTBEST_HEALTH_PORT"]


def _probe_checks(docs: list[Doc]) -> None:
    check_probes(docs, tls=True)


def _production_checks(docs: list[Doc]) -> None:
    check_network_policies(docs)
    for target in MESH_TARGETS:
        env = container_env(docs, container(one(docs, "Deployment", target)))
        assert env["NEXTBEST_REFLECTION"] == ("false" if target == "orchestrator" else "true")


def _base_checks(docs: list[Doc]) -> None:
    check_targets(docs, demo=False)
    check_probes(docs, tls=False)
    check_security(docs)
    check_services(docs)
    check_configuration(docs, log_format="json")
    check_disruption_and_scaling(docs, min_replicas=1, autoscaled=True)


@pytest.mark.parametrize(
    ("path", "breaks", "checks"),
    [
        ("base", _writable_root, _base_checks),
        ("base", _tcp_probe, _base_checks),
        ("base", _cluster_ip, _base_checks),
        ("base", _typo_setting, _base_checks),
        ("base", _short_grace, _base_checks),
        ("base", _literal_database_url, _base_checks),
        ("base", _second_image, _base_checks),
        ("base", _no_budget, _base_checks),
        ("overlays/production", _open_internal, _production_checks),
        ("overlays/production", _reflection_on, _production_checks),
        ("overlays/production", _probe_on_the_tls_port, _probe_checks),
        ("overlays/production", _no_health_port, _probe_checks),
    ],
)
def test_checks_catch_a_broken_manifest(
    path: str, breaks: Callable[[list[Doc]], None], checks: Callable[[list[Doc]], None]
) -> None:
    docs = render(path)
    checks(copy.deepcopy(docs))  # passes as rendered
    breaks(docs)
    with pytest.raises(AssertionError):
        checks(docs)
