"""components/ingest, as overlays/production-stream adds it to production."""

from __future__ import annotations

from libs.config import Target, load_settings
from tests.deploy.manifests import (
    EXTERNAL,
    GRPC_PORT,
    METRICS_PORT,
    Peer,
    container,
    container_env,
    egress_allowed,
    ingress_allowed,
    one,
    pod_labels,
    pod_spec,
    render,
)
from tests.deploy.test_manifests import (
    check_configuration,
    check_network_policies,
    check_security,
    check_tls,
)

OVERLAY = "overlays/production-stream"


def test_the_ingest_deployment_consumes_the_configured_stream() -> None:
    docs = render(OVERLAY)
    ingest = one(docs, "Deployment", "ingest")
    item = container(ingest)
    assert item["args"] == ["serve", "--target", "ingest"]
    assert item["image"] == container(one(docs, "Deployment", "orchestrator"))["image"]
    env = container_env(docs, item)
    assert env["NEXTBEST_STREAM_URL"].startswith("nats://")
    assert env["NEXTBEST_DATABASE_URL"] == EXTERNAL
    settings = load_settings(
        **{
            key.removeprefix("NEXTBEST_").lower(): ("x" if value == EXTERNAL else value)
            for key, value in env.items()
            if key.startswith("NEXTBEST_")
        },
        target="ingest",
    )
    assert settings.target == Target.INGEST and settings.stream_servers
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert item[probe]["grpc"]["port"] == GRPC_PORT, probe
    assert ingest["spec"]["replicas"] >= 2, "replicas share the durable consumer"
    assert one(docs, "HorizontalPodAutoscaler", "ingest")["spec"]["minReplicas"] >= 2
    assert one(docs, "PodDisruptionBudget", "ingest")
    assert pod_spec(ingest)["terminationGracePeriodSeconds"] > float(
        env["NEXTBEST_SHUTDOWN_GRACE_S"]
    )
    assert {doc["metadata"].get("namespace") for doc in docs} == {"nextbest"}


def test_production_keeps_its_properties_with_the_component() -> None:
    docs = render(OVERLAY)
    check_security(docs)
    check_configuration(docs, log_format="json")
    check_tls(docs)
    check_network_policies(docs)


def test_the_ingest_pods_reach_nats_and_the_database_only() -> None:
    docs = render(OVERLAY)
    pod = pod_labels("ingest")
    outside = Peer(None)
    monitoring = Peer({"app": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"})
    assert egress_allowed(docs, pod, outside, 4222), "NATS"
    assert egress_allowed(docs, pod, outside, 5432), "PostgreSQL"
    assert egress_allowed(docs, pod, outside, 53, "UDP"), "DNS"
    assert not egress_allowed(docs, pod, outside, 443), "default deny egress"
    assert not ingress_allowed(docs, pod, outside, GRPC_PORT), "no API here"
    assert ingress_allowed(docs, pod, monitoring, METRICS_PORT)
