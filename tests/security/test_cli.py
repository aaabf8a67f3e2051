"""The ``nextbest`` admin commands against a secured server: TLS (``--cacert``), mutual TLS
(``--cert``/``--key``) and bearer tokens (``--token`` or ``NEXTBEST_CLI_TOKEN``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.config import Settings, Target
from services.app import BuiltTarget, build_target
from services.arbitration.catalog import parse_catalog_yaml
from services.cli import main
from services.cli_connection import TOKEN_VARIABLE, serve_hint
from services.demo.seed import DEMO_CATALOG, demo_features
from services.demo.train import DEMO_MODEL_NAME, DEMO_MODEL_VERSION
from tests.security.conftest import ADMIN_TOKEN, DECIDE_TOKEN, INGEST_TOKEN, write_tokens
from tests.security.pki import CertificateAuthority
from tools.launch import NEXTBEST

# The CLI's own variables: a test must not inherit them from the shell that runs it.
CLI_VARIABLES = ("NEXTBEST_CLI_CACERT", "NEXTBEST_CLI_CERT", "NEXTBEST_CLI_KEY", TOKEN_VARIABLE)


@dataclass
class Hub:
    address: str
    ca: CertificateAuthority
    tokens_file: Path


async def _start(settings: Settings, model: bytes) -> BuiltTarget:
    built = build_target(settings)
    assert built.services.arbitration is not None and built.services.scoring is not None
    await built.services.arbitration.apply_catalog(parse_catalog_yaml(DEMO_CATALOG.read_text()))
    await built.services.scoring.register_model(
        DEMO_MODEL_NAME, DEMO_MODEL_VERSION, model, demo_features(), activate=True
    )
    await built.warm_up()
    await built.server.start()
    return built


@pytest.fixture(scope="module")
async def hub(
    tmp_path_factory: pytest.TempPathFactory, demo_model_bytes: bytes
) -> AsyncIterator[Hub]:
    """The embedded hub with TLS (no client certificate needed) and tokens."""
    workdir = tmp_path_factory.mktemp("cli-hub")
    ca = CertificateAuthority(workdir / "pki", "cli ca")
    server = ca.issue("server", server=True)
    tokens_file = write_tokens(
        workdir / "tokens.yaml",
        {
            "web": (DECIDE_TOKEN, ["decide"]),
            "events": (INGEST_TOKEN, ["ingest"]),
            "ops": (ADMIN_TOKEN, ["admin"]),
        },
    )
    settings = Settings(
        target=Target.ALL,
        host="127.0.0.1",
        port=0,
        data_dir=workdir,
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        auth_tokens_file=tokens_file,
    )
    built = await _start(settings, demo_model_bytes)
    try:
        yield Hub(f"localhost:{built.port}", ca, tokens_file)
    finally:
        await built.server.stop(0)
        await built.close()


@pytest.fixture(autouse=True)
def _no_cli_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in CLI_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


async def nextbest(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command (blocking gRPC) beside the server's event loop; code, out, err."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_catalog_show_with_a_token_and_the_ca(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await nextbest(
        capsys,
        "catalog",
        "show",
        "--address",
        hub.address,
        "--cacert",
        str(hub.ca.cert_file),
        "--token",
        ADMIN_TOKEN,
    )
    assert code == 0, err
    assert "actions:" in out


async def test_without_the_token_the_command_fails_naming_unauthenticated(
    hub: Hub, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await nextbest(
        capsys, "catalog", "show", "--address", hub.address, "--cacert", str(hub.ca.cert_file)
    )
    assert code == 1
    assert "actions:" not in out  # (out holds the server's log lines, in this process)
    assert "nextbest: UNAUTHENTICATED: a bearer token is required" in err
    assert TOKEN_VARIABLE in err, "tells how to give one"
    # An unknown token is UNAUTHENTICATED too; a token without the scope PERMISSION_DENIED.
    code, _, err = await nextbest(
        capsys,
        "catalog",
        "show",
        "--address",
        hub.address,
        "--cacert",
        str(hub.ca.cert_file),
        "--token",
        "not-a-token",
    )
    assert code == 1 and "UNAUTHENTICATED: unknown bearer token" in err
    code, _, err = await nextbest(
        capsys,
        "models",
        "list",
        "--address",
        hub.address,
        "--cacert",
        str(hub.ca.cert_file),
        "--token",
        DECIDE_TOKEN,
    )
    assert code == 1 and "PERMISSION_DENIED" in err and "admin scope" in err


async def test_plaintext_stays_the_default(hub: Hub, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await nextbest(
        capsys, "catalog", "show", "--address", hub.address, "--token", ADMIN_TOKEN
    )
    assert code == 1 and "UNAVAILABLE" in err
    assert "--cacert" in err, "suggests TLS"


async def test_the_token_and_the_ca_from_the_environment(
    hub: Hub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXTBEST_CLI_CACERT", str(hub.ca.cert_file))
    monkeypatch.setenv(TOKEN_VARIABLE, DECIDE_TOKEN + "\n")  # as $(cat token-file) may leave
    code, out, err = await nextbest(
        capsys, "decide", "--address", hub.address, "--id", "cookie_id=c-cli", "--channel", "web"
    )
    assert code == 0, err
    assert '"decision_id"' in out
    # The option wins over the variable.
    code, _, err = await nextbest(
        capsys,
        "decide",
        "--address",
        hub.address,
        "--id",
        "cookie_id=c-cli",
        "--channel",
        "web",
        "--token",
        INGEST_TOKEN,
    )
    assert code == 1 and "PERMISSION_DENIED" in err


async def test_the_installed_command_reads_the_variables(hub: Hub) -> None:
    """As a script runs it: a process, the token only in its environment, exit codes."""
    env = {k: v for k, v in os.environ.items() if k not in CLI_VARIABLES}
    env["NEXTBEST_CLI_CACERT"] = str(hub.ca.cert_file)
    command = [*NEXTBEST, "catalog", "show", "--address", hub.address]

    def run(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env={**env, **extra}, capture_output=True, text=True, timeout=60
        )

    ok, refused = await asyncio.gather(
        asyncio.to_thread(run, {TOKEN_VARIABLE: ADMIN_TOKEN}), asyncio.to_thread(run, {})
    )
    assert ok.returncode == 0, ok.stderr
    assert "actions:" in ok.stdout
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr


async def test_mutual_tls_needs_the_client_certificate(
    tmp_path: Path, demo_model_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CertificateAuthority(tmp_path / "pki", "mtls ca")
    server = ca.issue("server", server=True)
    client = ca.issue("operator", server=False)
    tokens_file = write_tokens(tmp_path / "tokens.yaml", {"ops": (ADMIN_TOKEN, ["admin"])})
    settings = Settings(
        target=Target.ALL,
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        tls_cert_file=server.cert_file,
        tls_key_file=server.key_file,
        tls_client_ca_file=ca.cert_file,
        auth_tokens_file=tokens_file,
    )
    built = await _start(settings, demo_model_bytes)
    address = f"localhost:{built.port}"
    base = ["catalog", "show", "--address", address, "--cacert", str(ca.cert_file)]
    try:
        code, _, err = await nextbest(capsys, *base, "--token", ADMIN_TOKEN)
        assert code == 1 and "UNAVAILABLE" in err, "no client certificate, no handshake"
        code, out, err = await nextbest(
            capsys,
            *base,
            "--cert",
            str(client.cert_file),
            "--key",
            str(client.key_file),
            "--token",
            ADMIN_TOKEN,
        )
        assert code == 0, err
        assert "actions:" in out
    finally:
        await built.server.stop(0)
        await built.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--cert", "client.crt"], "--cert and --key go together"),
        (["--cert", "c.crt", "--key", "c.key"], "give the server's CA with --cacert"),
        (["--servername", "orchestrator"], "give the server's CA with --cacert"),
        (["--cacert", "/nonexistent/ca.crt"], "--cacert: cannot read /nonexistent/ca.crt"),
        (["--token", " "], "--token: not a bearer token"),
    ],
)
async def test_bad_connection_options_are_configuration_errors(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    code, _, err = await nextbest(capsys, "catalog", "show", "--address", "localhost:1", *options)
    assert code == 2
    assert message in err


def test_the_serve_hint_follows_the_security_settings(tmp_path: Path) -> None:
    plain = serve_hint(Settings(), 50051)
    assert "grpcurl -plaintext localhost:50051 list" in plain
    assert "Bearer" not in plain and "-cacert" not in plain
    cert, key, tokens = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "t.yaml"
    secured = serve_hint(
        Settings(tls_cert_file=cert, tls_key_file=key, auth_tokens_file=tokens), 50051
    )
    assert "grpcurl -cacert ca.crt localhost:50051 list" in secured
    assert '-cacert ca.crt -H "authorization: Bearer $TOKEN" -d ' in secured
    assert "NEXTBEST_CLI_CACERT=ca.crt NEXTBEST_CLI_TOKEN=" in secured
    assert "-plaintext" not in secured and "-cert " not in secured
    mutual = serve_hint(
        Settings(tls_cert_file=cert, tls_key_file=key, tls_client_ca_file=tmp_path / "ca.crt"),
        50051,
    )
    assert "-cacert ca.crt -cert client.crt -key client.key" in mutual
    assert "Bearer" not in mutual
    tokens_only = serve_hint(Settings(auth_tokens_file=tokens), 50051)
    assert 'grpcurl -plaintext -H "authorization: Bearer $TOKEN"' in tokens_only
    no_reflection = serve_hint(
        Settings(tls_cert_file=cert, tls_key_file=key, reflection=False), 50051
    )
    assert " list" not in no_reflection
