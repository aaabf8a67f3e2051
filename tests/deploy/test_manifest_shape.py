"""The distributed shape exactly as the manifests run it, proven on loopback (no cluster).

For an overlay, every target's Deployment gives the `nextbest` arguments (`args`, after the
image's `ENTRYPOINT ["nextbest"]`) and its environment (ConfigMap, Secrets, `env`), and the
migration Job gives its own. Each target then runs as its own process with those arguments
and variables (``tools.launch.LocalDeployment``), changed only where a cluster differs
from one machine (``SUBSTITUTED``), and a Decide goes through the orchestrator. The
processes' real environments (``/proc/<pid>/environ``) are compared with the manifests, and
SIGTERM must end every process with exit code 0.

The production overlay runs with its TLS component: certificates and tokens are made here
and put where its Secret volumes would be mounted. Each Deployment's readiness probe is
then asked as the kubelet asks it (a plaintext grpc.health.v1 check on the probe's port:
the gRPC port in dev, the health-only port of the tls component in production).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import shlex
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nextbest.decision.v1 import decision_pb2, decision_pb2_grpc

from libs.config import Settings
from tests.conftest import (
    create_postgres_database,
    drop_postgres_database,
    postgres_available,
    require_postgres,
)
from tests.deploy.manifests import (
    ROOT,
    Doc,
    container,
    container_env,
    data,
    generated,
    mounted_volumes,
    one,
    render,
)
from tests.reflection_client import list_services
from tools.launch import MESH_TARGETS, NEXTBEST, PEERS, LocalDeployment, free_port

pytestmark = pytest.mark.slow

DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# What a cluster has and one machine has not; everything else is taken as rendered.
SUBSTITUTED = {
    "NEXTBEST_HOST": "loopback, not every interface of the machine",
    "NEXTBEST_PORT": "a free port per process (pods have their own network namespace)",
    "NEXTBEST_METRICS_PORT": "a free port per process, likewise",
    "NEXTBEST_HEALTH_PORT": "a free port per process, likewise",
    "NEXTBEST_DATABASE_URL": "the test's database instead of the Secret's",
    "NEXTBEST_DATA_DIR": "a temporary directory instead of the image's /data volume",
    **{
        f"NEXTBEST_{peer.upper()}_ADDRESS": f"ipv4:127.0.0.1:<port>, not dns:///{peer}:50051"
        for peer in PEERS
    },
}
# The dev overlay runs `nextbest` under its live-reload wrapper (for Tilt); these variables
# are the wrapper's, not the program's.
WRAPPER = ["sh", "/opt/nextbest-dev/live-reload.sh"]
WRAPPER_ONLY = {"PYTHONPATH", "LIVE_RELOAD_WORKSPACE"}
DECIDE_TOKEN = "deploy-test-decide-token"
KNOWN = {f"NEXTBEST_{name.upper()}" for name in Settings.model_fields}


@dataclass
class Launch:
    """How the manifests start one process: `nextbest <args>` with ``env``."""

    args: list[str]
    env: dict[str, str]
    # mountPath -> (kind, name) of the Secret or ConfigMap mounted there.
    mounts: dict[str, tuple[str, str]] = field(default_factory=dict)


def launches(docs: list[Doc]) -> tuple[dict[str, Launch], Launch]:
    """Per target, and for the migration Job, what its manifest runs."""

    def launch(workload: Doc) -> Launch:
        item = container(workload)
        # The image's ENV first: the manifest's variables override it, as in a container.
        env = {**image_env(), **container_env(docs, item)}
        command = item.get("command")
        if command is not None:
            # Only the dev overlay's wrapper, which runs `nextbest "$@"` with the args.
            assert command == WRAPPER, command
            assert 'nextbest "$@"' in (data_of(docs, "nextbest-live-reload") or "")
            env = {key: value for key, value in env.items() if key not in WRAPPER_ONLY}
        mounts = {}
        for path, volume in mounted_volumes(workload, item).items():
            if "secret" in volume:
                mounts[path] = ("Secret", volume["secret"]["secretName"])
            elif "configMap" in volume:
                mounts[path] = ("ConfigMap", volume["configMap"]["name"])
        return Launch(list(item["args"]), env, mounts)

    targets = {target: launch(one(docs, "Deployment", target)) for target in MESH_TARGETS}
    return targets, launch(one(docs, "Job", "nextbest-migrate"))


def image_env() -> dict[str, str]:
    """The ``NEXTBEST_*`` variables the image itself sets (``ENV`` of the final stage)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM ") :]
    found = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                if key.startswith("NEXTBEST_"):
                    found[key] = value
    return found


def data_of(docs: list[Doc], configmap: str) -> str | None:
    found = generated(docs, "ConfigMap", configmap)
    if found is None:
        return None
    values = data(docs, "ConfigMap", found["metadata"]["name"]) or {}
    return "\n".join(values.values())


# --------------------------------------------------------------------------- Secrets


def _certificates() -> dict[str, bytes]:
    """The Secret nextbest-tls as the tls component documents it: the mesh CA and one
    certificate for server and client auth (SANs: the Services, localhost, 127.0.0.1)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nextbest deploy test ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(t) for t in MESH_TARGETS]
    names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nextbest")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "tls.crt": leaf.public_bytes(serialization.Encoding.PEM),
        "tls.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }


def _tokens() -> dict[str, bytes]:
    digest = hashlib.sha256(DECIDE_TOKEN.encode()).hexdigest()
    document = {"tokens": [{"name": "deploy-test", "token_sha256": digest, "scopes": ["decide"]}]}
    return {"tokens.yaml": yaml.safe_dump(document).encode()}


def materialise(
    docs: list[Doc], launch: Launch, root: Path, secrets: Mapping[str, dict[str, bytes]]
) -> dict[str, str]:
    """Write what the kubelet would mount (Secrets we were given, rendered ConfigMaps) under
    ``root``; returns mountPath -> the local directory."""
    local = {}
    for path, (kind, name) in launch.mounts.items():
        directory = root / kind.lower() / name
        directory.mkdir(parents=True, exist_ok=True)
        if kind == "Secret":
            assert name in secrets, f"the overlay mounts Secret {name}: provide it in the test"
            files = secrets[name]
        else:
            files = {k: v.encode() for k, v in (data(docs, kind, name) or {}).items()}
        for key, content in files.items():
            (directory / key).write_bytes(content)
        local[path] = str(directory)
    return local


def localise(
    launch: Launch, database_url: str, mounts: Mapping[str, str], data_dir: Path
) -> dict[str, str]:
    """The manifest's environment with ``SUBSTITUTED`` applied (LocalDeployment sets the
    port and the peers' addresses) and mounted paths pointing at the local copies."""
    env = dict(launch.env)
    env.pop("NEXTBEST_PORT")
    env["NEXTBEST_HOST"] = "127.0.0.1"
    env["NEXTBEST_DATABASE_URL"] = database_url
    if "NEXTBEST_DATA_DIR" in env:
        env["NEXTBEST_DATA_DIR"] = str(data_dir)
    for variable in ("NEXTBEST_METRICS_PORT", "NEXTBEST_HEALTH_PORT"):
        if env.get(variable, "0") != "0":
            env[variable] = str(free_port())
    for key, value in env.items():
        for path, directory in mounts.items():
            if value.startswith(path + "/"):
                env[key] = directory + value[len(path) :]
    return env


# --------------------------------------------------------------------------- the mesh


@dataclass
class Mesh:
    overlay: str
    deployment: LocalDeployment
    manifests: dict[str, Launch]
    expected: dict[str, dict[str, str]]
    credentials: grpc.ChannelCredentials | None
    # Per target, the readiness probe of its Deployment: (grpc port, service).
    probes: dict[str, tuple[int, str]]


def _credentials(tls: dict[str, bytes]) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(tls["ca.crt"], tls["tls.key"], tls["tls.crt"])


@pytest.fixture(scope="module", params=["dev", "production"])
async def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    overlay: str = request.param
    docs = render(f"overlays/{overlay}")
    workdir = tmp_path_factory.mktemp(f"manifest-shape-{overlay}")
    manifests, job = launches(docs)
    secrets = {"nextbest-tls": _certificates(), "nextbest-auth-tokens": _tokens()}
    if postgres_available():
        database_url = create_postgres_database()
    else:
        require_postgres()  # fails in CI, where PostgreSQL must be up
        database_url = f"sqlite:///{workdir / 'mesh.db'}"
    expected = {}
    probes = {}
    for target, launch in manifests.items():
        mounts = materialise(docs, launch, workdir / "mounts", secrets)
        expected[target] = localise(launch, database_url, mounts, workdir / "data")
        probe = container(one(docs, "Deployment", target))["readinessProbe"]
        assert set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, target
        probes[target] = (int(probe["grpc"]["port"]), probe["grpc"].get("service", ""))
    assert job.args == ["db", "upgrade"], "LocalDeployment migrates with `nextbest db upgrade`"
    tls = "NEXTBEST_TLS_CERT_FILE" in expected["orchestrator"]
    credentials = _credentials(secrets["nextbest-tls"]) if tls else None
    deployment = LocalDeployment(
        "mesh",
        workdir,
        database_url,
        extra_env=localise(job, database_url, {}, workdir / "data"),
        target_env=expected,
        target_args={target: launch.args for target, launch in manifests.items()},
        health_credentials=credentials,
    )
    try:
        await deployment.start(timeout_s=120)
        yield Mesh(overlay, deployment, manifests, expected, credentials, probes)
    finally:
        codes = deployment.stop()
        if database_url.startswith("postgresql"):
            drop_postgres_database(database_url)
    # SIGTERM, as the kubelet sends it: every process drains and exits cleanly.
    assert codes == {name: 0 for name in codes}, codes


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {key.decode(): value.decode() for key, _, value in pairs}


def test_processes_run_with_the_manifests_arguments_and_environment(mesh: Mesh) -> None:
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to read the processes' environments")
    ports = {item.target: item.port for item in mesh.deployment.processes}
    for item in mesh.deployment.processes:
        target, manifest = item.target, mesh.manifests[item.target]
        argv = Path(f"/proc/{item.process.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        assert argv == [*NEXTBEST, *manifest.args], target
        actual = {k: v for k, v in _environ(item.process.pid).items() if k in KNOWN}
        # Every setting the process has comes from its manifest, or is substituted.
        wanted = {**mesh.expected[target], "NEXTBEST_PORT": str(item.port)}
        wanted["NEXTBEST_TARGET"] = target  # LocalDeployment sets it; `--target` says the same
        for peer in PEERS:
            key = f"NEXTBEST_{peer.upper()}_ADDRESS"
            # The orchestrator's peers are the other processes (internal targets started
            # before a peer keep the manifest's value, which they do not use).
            if target == "orchestrator" or actual.get(key, "").startswith("ipv4:"):
                wanted[key] = f"ipv4:127.0.0.1:{ports[peer]}"
        assert actual == {k: v for k, v in wanted.items() if k in KNOWN}, target
        # And every setting of the manifest reached it unchanged, but for SUBSTITUTED and
        # the files of mounted Secrets/ConfigMaps (the same files, at a local path).
        for key, value in manifest.env.items():
            if key not in KNOWN or key in SUBSTITUTED:
                continue
            mounted = any(value.startswith(path + "/") for path in manifest.mounts)
            if mounted:
                assert Path(actual[key]).name == Path(value).name, (target, key)
                assert Path(actual[key]).is_file(), (target, key)
            else:
                assert actual[key] == value, f"{target} {key}: changed from the manifest"


async def test_a_decision_through_the_orchestrator(mesh: Mesh) -> None:
    address = mesh.deployment.public_address
    if mesh.credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, mesh.credentials)
    metadata = (("authorization", f"Bearer {DECIDE_TOKEN}"),) if mesh.credentials else None
    request = decision_pb2.DecideRequest(
        identifiers=[decision_pb2.Identifier(type="cookie_id", value=f"c-{mesh.overlay}")],
        channel="web",
        explain=True,
    )
    async with channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        # The budget is the manifests' (100 ms) and every process reports SERVING (warm).
        # Five servers and the test runner share two cores here: a hop may miss its
        # deadline now and then, which degrades that one decision; the mesh must not stay
        # degraded, so an undegraded one comes within a few seconds of calls.
        reasons: list[str] = []
        for _ in range(60):
            decision = (await stub.Decide(request, timeout=10, metadata=metadata)).decision
            if not decision.degraded:
                break
            reasons.append(decision.degraded_reason)
            await asyncio.sleep(0.1)
        assert decision.decision_id and decision.profile_id
        assert not decision.degraded, reasons
        if mesh.overlay == "dev":
            # --demo on arbitration and scoring: the demo catalog and model served it.
            assert decision.action.action_id
            assert decision.model_version == "demo_propensity:1"
        if mesh.credentials is not None:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Decide(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_metrics_are_served_where_the_manifests_say(mesh: Mesh) -> None:
    for item in mesh.deployment.processes:
        port = mesh.expected[item.target]["NEXTBEST_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            assert answer.status == 200
            assert b"# TYPE" in answer.read()


async def test_the_kubelets_grpc_probe_passes(mesh: Mesh) -> None:
    """What the kubelet's native gRPC probe does: a plaintext Health/Check on the probe's
    port, which must be a port the target serves in plaintext (its gRPC port without TLS,
    the health-only NEXTBEST_HEALTH_PORT with it), answered SERVING."""
    for item in mesh.deployment.processes:
        manifest = mesh.manifests[item.target].env
        port, service = mesh.probes[item.target]
        # The probe's port, as the process binds it here (both are substituted locally).
        local = {
            int(manifest["NEXTBEST_PORT"]): str(item.port),
            int(manifest.get("NEXTBEST_HEALTH_PORT", "0")): mesh.expected[item.target].get(
                "NEXTBEST_HEALTH_PORT", ""
            ),
        }
        assert local.get(port), f"{item.target}: the probe's port {port} is not served"
        if mesh.credentials is not None:
            assert port != int(manifest["NEXTBEST_PORT"]), "the kubelet cannot probe TLS"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{local[port]}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, item.target
        if mesh.credentials is not None:
            # The health-only port serves nothing else (not even reflection).
            async with grpc.aio.insecure_channel(f"127.0.0.1:{local[port]}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await decision_pb2_grpc.DecisionServiceStub(channel).Decide(
                        decision_pb2.DecideRequest(), timeout=5
                    )
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_reflection_is_off_only_on_the_public_endpoint_in_production(mesh: Mesh) -> None:
    for item in mesh.deployment.processes:
        public = mesh.overlay == "production" and item.target == "orchestrator"
        address = mesh.deployment.addresses[item.name]
        if mesh.credentials is None:
            channel = grpc.aio.insecure_channel(address)
        else:
            channel = grpc.aio.secure_channel(address, mesh.credentials)
        async with channel:
            # One request, sent with its half-close in a single batch (unary): a server
            # without reflection answers UNIMPLEMENTED at the headers, which a streaming
            # call can see before its own send completes and report as a failed send.
            try:
                answer = await list_services(channel)
            except grpc.aio.AioRpcError as error:
                assert public, (item.target, error)
                assert error.code() == grpc.StatusCode.UNIMPLEMENTED, error
                continue
            assert not public, "reflection is served on the public endpoint"
            services = {s.name for s in answer.list_services_response.service}
            assert "grpc.health.v1.Health" in services, item.target
