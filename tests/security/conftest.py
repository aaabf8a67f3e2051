"""Fixtures of the security tests: a PKI made in the test and a token file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.rpc.security import hash_token
from tests.security.pki import CertificateAuthority, Issued


@dataclass(frozen=True)
class Pki:
    """Two CAs: the mesh's own, and a stranger whose certificates must be refused."""

    directory: Path
    ca: CertificateAuthority
    stranger: CertificateAuthority
    server: Issued
    client: Issued
    stranger_client: Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = CertificateAuthority(tmp_path / "ca", "mesh ca")
    stranger = CertificateAuthority(tmp_path / "stranger", "stranger ca")
    return Pki(
        tmp_path,
        ca,
        stranger,
        ca.issue("server", server=True),
        ca.issue("orchestrator", server=False),
        stranger.issue("intruder", server=False),
    )


# Plain tokens the tests send; the file holds only their SHA-256.
DECIDE_TOKEN = "test-decide-token-3c1f0e"
INGEST_TOKEN = "test-ingest-token-9a77d2"
ADMIN_TOKEN = "test-admin-token-51e0b8"
MESH_TOKEN = "test-mesh-token-0d4c61"


def write_tokens(path: Path, tokens: dict[str, tuple[str, list[str]]]) -> Path:
    """``{name: (plain token, scopes)}`` as a token file (JSON, which is also YAML)."""
    document = {
        "tokens": [
            {"name": name, "token_sha256": hash_token(token), "scopes": scopes}
            for name, (token, scopes) in tokens.items()
        ]
    }
    path.write_text(json.dumps(document, indent=2))
    return path


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    return write_tokens(
        tmp_path / "tokens.json",
        {
            "web": (DECIDE_TOKEN, ["decide"]),
            "events": (INGEST_TOKEN, ["ingest"]),
            "ops": (ADMIN_TOKEN, ["admin"]),
        },
    )
