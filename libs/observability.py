"""Metrics and traces of a target.

Placeholder wiring: nothing is exported until configured (``metrics_port``, ``tracing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from libs.config import Settings


@dataclass
class Observability:
    server_interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=list)
    client_interceptors: Sequence[grpc.aio.ClientInterceptor] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> Observability:
        return cls()

    # The orchestrator's DecisionObserver (services/orchestrator/ports.py).
    def decided(
        self,
        *,
        channel: str,
        issue: str,
        action_id: str,
        degraded_reason: str,
        elapsed_s: float,
    ) -> None:
        pass

    def outcome_recorded(self, *, action_id: str, outcome: str, duplicate: bool) -> None:
        pass

    def events_ingested(self, *, accepted: int, duplicates: int) -> None:
        pass

    def start(self) -> None:
        """Start exporting (e.g. the metrics HTTP endpoint)."""

    def stop(self) -> None:
        """Stop exporting."""
