"""Client channels to peers: round-robin over every address a target resolves to."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

# Reads are retried by gRPC itself (jittered backoff); writes are not listed here.
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [
                    {"service": "nextbest.identity.v1.IdentityService", "method": "LookupProfile"},
                    {
                        "service": "nextbest.context.v1.ContextService",
                        "method": "GetProfileContext",
                    },
                    {"service": "nextbest.scoring.v1.ScoringService"},
                    {"service": "nextbest.arbitration.v1.ArbitrationService"},
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel with client-side round-robin (``dns:///host:port`` or ``ipv4:a,b``); TLS
    when ``credentials`` are given."""
    options = [
        ("grpc.service_config", _SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        # Reconnect to a peer that comes back within a second, not gRPC's default of up to
        # two minutes of backoff (recovery must take seconds, see docs/reliability.md).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    if credentials is not None:
        return grpc.aio.secure_channel(
            target, credentials, options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
