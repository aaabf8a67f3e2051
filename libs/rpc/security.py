"""Transport security and authentication of every target (TLS, mTLS, bearer tokens).

Placeholder wiring: no TLS and no authentication until configured (see the settings
``tls_*``, ``peer_tls_*``, ``auth_tokens_file`` and ``mesh_token``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from libs.config import Settings


@dataclass
class ServerSecurity:
    credentials: grpc.ServerCredentials | None = None
    interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=list)


@dataclass
class ChannelSecurity:
    credentials: grpc.ChannelCredentials | None = None
    interceptors: Sequence[grpc.aio.ClientInterceptor] = field(default_factory=list)


def server_security(settings: Settings) -> ServerSecurity:
    return ServerSecurity()


def channel_security(settings: Settings) -> ChannelSecurity:
    return ChannelSecurity()
