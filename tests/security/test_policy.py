"""The access table, the token file format and the start-up checks (no server needed)."""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import subprocess
from pathlib import Path
from typing import Any

import nextbest
import pytest

from libs.config import ConfigError, Settings, Target
from libs.rpc import security
from libs.rpc.security import (
    SERVICE_ACCESS,
    Access,
    TokenStore,
    hash_token,
    parse_tokens,
    required_access,
    server_security,
)
from tests.security.conftest import DECIDE_TOKEN, Pki


def nextbest_methods() -> dict[str, str]:
    """Every ``/package.Service/Method`` of the generated stubs."""
    methods = {}
    for module in pkgutil.walk_packages(nextbest.__path__, "nextbest."):
        if not module.name.endswith("_pb2"):
            continue
        descriptor = importlib.import_module(module.name).DESCRIPTOR
        for service in descriptor.services_by_name.values():
            for method in service.methods:
                methods[f"/{service.full_name}/{method.name}"] = service.full_name
    return methods


def test_every_service_of_the_api_has_a_stated_access() -> None:
    methods = nextbest_methods()
    assert len(methods) > 20
    services = set(methods.values())
    assert services <= set(SERVICE_ACCESS) | {"nextbest.decision.v1.DecisionService"}, (
        "a new service needs its line in SERVICE_ACCESS"
    )
    expected = {
        "/nextbest.decision.v1.DecisionService/Decide": Access.DECIDE,
        "/nextbest.decision.v1.DecisionService/WatchDecisions": Access.DECIDE,
        "/nextbest.decision.v1.DecisionService/TrackEvents": Access.INGEST,
        "/nextbest.decision.v1.DecisionService/RecordOutcome": Access.INGEST,
        "/nextbest.catalog.v1.CatalogService/ApplyCatalog": Access.ADMIN,
        "/nextbest.scoring.v1.ModelService/RegisterModel": Access.ADMIN,
        "/nextbest.privacy.v1.PrivacyService/EraseProfile": Access.ADMIN,
        "/nextbest.context.v1.ProfileService/SetProfileAttributes": Access.ADMIN,
        "/nextbest.identity.v1.IdentityService/ResolveProfile": Access.MESH,
        "/nextbest.context.v1.ContextService/AppendEvents": Access.MESH,
        "/nextbest.scoring.v1.ScoringService/ScoreCandidates": Access.MESH,
        "/nextbest.arbitration.v1.ArbitrationService/Prioritize": Access.MESH,
        "/grpc.health.v1.Health/Check": Access.OPEN,
        "/grpc.health.v1.Health/Watch": Access.OPEN,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Access.OPEN,
    }
    assert {method: required_access(method) for method in expected} == expected
    assert {method for method in methods if required_access(method) is Access.OPEN} == set()
    # A method nobody listed (a new one on the decision service, say) needs admin.
    assert required_access("/nextbest.decision.v1.DecisionService/Explode") is Access.ADMIN
    assert required_access("/some.Other/Thing") is Access.ADMIN


def test_the_token_hash_is_sha256sum() -> None:
    printed = subprocess.run(
        ["sha256sum"], input=DECIDE_TOKEN.encode(), capture_output=True, check=True
    ).stdout.split()[0]
    assert hash_token(DECIDE_TOKEN) == printed.decode()
    assert hash_token(DECIDE_TOKEN) == hashlib.sha256(DECIDE_TOKEN.encode()).hexdigest()


def test_token_file_formats() -> None:
    digest = hash_token("t")
    yaml_text = f"""
tokens:
  - name: web-frontend
    token_sha256: {digest.upper()}
    scopes: [decide, ingest]
"""
    (entry,) = parse_tokens(yaml_text)
    assert entry.name == "web-frontend" and entry.token_sha256 == digest
    assert entry.scopes == {"decide", "ingest"}
    bare_list = f'[{{"name": "ops", "token_sha256": "{digest}", "scopes": ["admin"]}}]'
    assert parse_tokens(bare_list)[0].scopes == {"admin"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens: [{name: a, token: plain, scopes: [decide]}]", "token"),
        (f"tokens: [{{name: a, token_sha256: '{'0' * 64}', scopes: [root]}}]", "scopes"),
        ("tokens: [{name: a, token_sha256: abc, scopes: [decide]}]", "token_sha256"),
        (f"tokens: [{{name: a, token_sha256: '{'0' * 64}', scopes: []}}]", "scopes"),
        (
            f"tokens: [{{name: a, token_sha256: '{'0' * 64}', scopes: [decide]}},"
            f" {{name: a, token_sha256: '{'1' * 64}', scopes: [decide]}}]",
            "unique",
        ),
        (
            f"tokens: [{{name: a, token_sha256: '{'0' * 64}', scopes: [decide]}},"
            f" {{name: b, token_sha256: '{'0' * 64}', scopes: [decide]}}]",
            "twice",
        ),
        (f"tokens: [{{name: a, token_sha256: {'1' * 64}, scopes: [decide]}}]", "quoted"),
        ("tokens: {", "not YAML or JSON"),
        ("just text", "tokens"),
    ],
)
def test_a_bad_token_file_is_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_tokens(text, "NEXTBEST_AUTH_TOKENS_FILE x")


def test_a_missing_token_file_fails_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NEXTBEST_AUTH_TOKENS_FILE: cannot read"):
        TokenStore(tmp_path / "nope.yaml")


def test_internal_targets_need_a_way_to_know_mesh_peers(tokens_file: Path, pki: Pki) -> None:
    for target in (Target.IDENTITY, Target.CONTEXT, Target.SCORING, Target.ARBITRATION):
        with pytest.raises(ConfigError, match="NEXTBEST_MESH_TOKEN or NEXTBEST_TLS_CLIENT_CA"):
            server_security(Settings(target=target, auth_tokens_file=tokens_file))
        server_security(Settings(target=target, auth_tokens_file=tokens_file, mesh_token="m"))
        server_security(
            Settings(
                target=target,
                auth_tokens_file=tokens_file,
                tls_cert_file=pki.server.cert_file,
                tls_key_file=pki.server.key_file,
                tls_client_ca_file=pki.ca.cert_file,
            )
        )
    server_security(Settings(target=Target.ORCHESTRATOR, auth_tokens_file=tokens_file))
    server_security(Settings(target=Target.ALL, auth_tokens_file=tokens_file))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def record(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return record


def test_start_up_warns_when_an_open_port_has_no_tls_or_auth(
    monkeypatch: pytest.MonkeyPatch, tokens_file: Path, pki: Pki
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(security, "_log", recorder)

    def warnings(**fields: Any) -> list[str]:
        recorder.events.clear()
        server_security(Settings(**fields))
        return [event for level, event, _ in recorder.events if level == "warning"]

    assert warnings(host="[::]") == [
        "TLS is off on a non-loopback address",
        "authentication is off on a non-loopback address: no token is required",
    ]
    assert warnings(host="127.0.0.1") == []
    assert warnings(host="localhost") == []
    assert warnings(host="[::1]") == []
    assert warnings(host="0.0.0.0", auth_tokens_file=tokens_file) == [
        "TLS is off on a non-loopback address"
    ]
    tls = {"tls_cert_file": pki.server.cert_file, "tls_key_file": pki.server.key_file}
    assert warnings(host="0.0.0.0", auth_tokens_file=tokens_file, **tls) == []
    identity = warnings(host="0.0.0.0", target=Target.IDENTITY, **tls)
    assert identity == [
        "the internal services accept any caller on a non-loopback address: set "
        "NEXTBEST_TLS_CLIENT_CA_FILE or NEXTBEST_MESH_TOKEN"
    ]
    assert warnings(host="0.0.0.0", target=Target.IDENTITY, mesh_token="m", **tls) == []


def test_no_interceptor_when_nothing_is_checked(tokens_file: Path) -> None:
    assert server_security(Settings()).interceptors == []
    assert len(server_security(Settings(auth_tokens_file=tokens_file)).interceptors) == 1
    assert len(server_security(Settings(mesh_token="m")).interceptors) == 1
