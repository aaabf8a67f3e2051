"""How the ``nextbest`` admin commands reach a server: plaintext by default, TLS (and mTLS)
with ``--cacert`` (``--cert``/``--key``), a bearer token with ``--token``.

The CA, client certificate and token can also come from ``NEXTBEST_CLI_CACERT``,
``NEXTBEST_CLI_CERT``, ``NEXTBEST_CLI_KEY`` and ``NEXTBEST_CLI_TOKEN`` so that scripts keep
the token off the command line (where ``ps`` and shell history see it); an option wins over
its variable. These are the client's variables, not settings of a target.

Part of the CLI, so it stays in services/ and ships in the serving image: an operator runs
``nextbest catalog``/``models``/``decide`` from that image against a running server.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from libs.config import ConfigError, Settings
from libs.rpc.security import AUTHORIZATION_HEADER, is_loopback

CACERT_VARIABLE = "NEXTBEST_CLI_CACERT"
CERT_VARIABLE = "NEXTBEST_CLI_CERT"
KEY_VARIABLE = "NEXTBEST_CLI_KEY"
TOKEN_VARIABLE = "NEXTBEST_CLI_TOKEN"


def add_connection_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--cacert``, ``--cert``, ``--key``, ``--servername`` and ``--token``."""
    group = parser.add_argument_group(
        "connection",
        "plaintext unless --cacert is given; the variables in brackets are read when the "
        "option is not",
    )
    group.add_argument(
        "--cacert", help=f"CA (PEM) to verify the server with: use TLS [{CACERT_VARIABLE}]"
    )
    group.add_argument(
        "--cert", help=f"client certificate (PEM) for a port that requires one [{CERT_VARIABLE}]"
    )
    group.add_argument("--key", help=f"its private key (PEM) [{KEY_VARIABLE}]")
    group.add_argument(
        "--servername",
        help="name to verify in the server's certificate when the address is not one of its "
        "names (e.g. orchestrator, through kubectl port-forward)",
    )
    group.add_argument(
        "--token",
        help=f"bearer token sent as 'authorization: Bearer <token>'; prefer {TOKEN_VARIABLE}, "
        "which stays out of the process list and the shell history",
    )
    return parser


@dataclass(frozen=True)
class Connection:
    """What a command needs to reach the server, resolved from options and variables."""

    address: str
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None
    token: str | None = None

    @property
    def tls(self) -> bool:
        return self.root_certificates is not None


def _read(path: str, source: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as error:
        raise ConfigError(f"{source}: cannot read {path}: {error.strerror}") from None


def _option(args: argparse.Namespace, name: str, variable: str) -> tuple[str | None, str]:
    """The value of ``--name`` or else of ``variable``, and where it came from."""
    value = getattr(args, name, None)
    if value:
        return str(value), f"--{name}"
    value = os.environ.get(variable, "")
    return (value or None), variable


def resolve(args: argparse.Namespace, address: str) -> Connection:
    """The connection the options and the ``NEXTBEST_CLI_*`` variables describe."""
    cacert, cacert_source = _option(args, "cacert", CACERT_VARIABLE)
    cert, cert_source = _option(args, "cert", CERT_VARIABLE)
    key, key_source = _option(args, "key", KEY_VARIABLE)
    token, token_source = _option(args, "token", TOKEN_VARIABLE)
    if (cert is None) != (key is None):
        raise ConfigError("--cert and --key go together (a client certificate and its key)")
    if cert is not None and cacert is None:
        raise ConfigError("--cert/--key are for TLS: give the server's CA with --cacert too")
    server_name = getattr(args, "servername", None) or None
    if server_name is not None and cacert is None:
        raise ConfigError("--servername is for TLS: give the server's CA with --cacert too")
    if token is not None:
        token = token.strip()  # a token file read with $(cat ...) may end with a newline
        if not token or any(c.isspace() for c in token):
            raise ConfigError(f"{token_source}: not a bearer token (empty or with spaces)")
    return Connection(
        address,
        root_certificates=_read(cacert, cacert_source) if cacert else None,
        private_key=_read(key, key_source) if key else None,
        certificate_chain=_read(cert, cert_source) if cert else None,
        server_name=server_name,
        token=token,
    )


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call of the channel."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION_HEADER, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self._header],
            details.credentials,
            details.wait_for_ready,
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)


def _host(address: str) -> str:
    target = address.split("///", 1)[-1]
    host, _, _port = target.rpartition(":")
    return host or target


def open_channel(connection: Connection) -> grpc.Channel:
    """A blocking channel: TLS when a CA is given, the token on every call when given."""
    if connection.tls:
        credentials = grpc.ssl_channel_credentials(
            connection.root_certificates, connection.private_key, connection.certificate_chain
        )
        options: Sequence[tuple[str, Any]] = ()
        if connection.server_name:
            options = (("grpc.ssl_target_name_override", connection.server_name),)
        channel = grpc.secure_channel(connection.address, credentials, options)
    else:
        channel = grpc.insecure_channel(connection.address)
        if connection.token is not None and not is_loopback(_host(connection.address)):
            print(
                f"nextbest: warning: sending the bearer token in plaintext to "
                f"{connection.address} (give the server's CA with --cacert for TLS)",
                file=sys.stderr,
            )
    if connection.token is None:
        return channel
    return grpc.intercept_channel(channel, _Bearer(connection.token))


def connect(args: argparse.Namespace, address: str) -> grpc.Channel:
    """The channel of an admin command (``catalog``, ``models``, ``decide``)."""
    return open_channel(resolve(args, address))


def rpc_hint(code: grpc.StatusCode, args: argparse.Namespace) -> str:
    """A line of advice for a failed call, from what the command was given."""
    has_token = bool(getattr(args, "token", None) or os.environ.get(TOKEN_VARIABLE))
    has_ca = bool(getattr(args, "cacert", None) or os.environ.get(CACERT_VARIABLE))
    if code == grpc.StatusCode.UNAUTHENTICATED and not has_token:
        return f"the server requires a bearer token: set {TOKEN_VARIABLE} (or pass --token)"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "the server does not accept this token"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return "the token lacks the scope of this command (admin for catalog and models)"
    if code == grpc.StatusCode.UNAVAILABLE and not has_ca:
        return (
            f"if the server speaks TLS, give its CA with --cacert (or {CACERT_VARIABLE}); "
            "with mutual TLS also --cert and --key"
        )
    return ""


def serve_hint(settings: Settings, port: int) -> str:
    """What ``nextbest serve --target all`` prints to get started: grpcurl and CLI commands
    for the way this server is configured (plaintext, TLS, mTLS, tokens)."""
    decide = (
        '\'{"identifiers":[{"type":"cookie_id","value":"c-123"}],"channel":"web","explain":true}\''
    )
    method = "nextbest.decision.v1.DecisionService/Decide"
    address = f"localhost:{port}"
    tls = settings.tls_cert_file is not None
    auth = settings.auth_tokens_file is not None
    if not tls and not auth:
        return (
            f"nextbest is serving every service on port {port}. Try:\n"
            f"  grpcurl -plaintext {address} list\n"
            f"  grpcurl -plaintext -d {decide} {address} {method}"
        )
    mutual = tls and settings.tls_client_ca_file is not None
    transport, cli, modes, needs = ["-plaintext"], [], [], []
    if tls:
        transport = ["-cacert", "ca.crt"]
        cli.append(f"{CACERT_VARIABLE}=ca.crt")
        modes.append("mutual TLS" if mutual else "TLS")
        needs.append("ca.crt the CA of its certificate")
    if mutual:
        transport += ["-cert", "client.crt", "-key", "client.key"]
        cli += [f"{CERT_VARIABLE}=client.crt", f"{KEY_VARIABLE}=client.key"]
        needs.append("client.crt/client.key a client certificate signed by its client CA")
    header = ""
    if auth:
        header = ' -H "authorization: Bearer $TOKEN"'
        cli.append(f'{TOKEN_VARIABLE}="$TOKEN"')
        modes.append("bearer tokens")
        needs.append("$TOKEN a token with the decide and admin scopes")
    flags = " ".join(transport)
    lines = [
        f"nextbest is serving every service on port {port} ({' and '.join(modes)}). "
        f"Try, with {', '.join(needs)}:"
    ]
    if settings.reflection:
        lines.append(f"  grpcurl {flags} {address} list")
    lines.append(f"  grpcurl {flags}{header} -d {decide} {address} {method}")
    lines.append(f"  {' '.join(cli)} nextbest catalog show --address {address}")
    return "\n".join(lines)
