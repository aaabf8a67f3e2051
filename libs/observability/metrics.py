"""The Prometheus metrics of one target, in a registry of its own (never the global one).

Label values are bounded: RPC labels come from the registered handlers, action and model
names from the catalog and the model registry, degraded reasons from a fixed vocabulary.
What comes from a request (the channel) is validated upstream and, as a last line of
defence, capped by :class:`BoundedLabel` so that a flood of new values cannot blow up the
number of series.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

# Most RPCs take a few milliseconds; the decision budget is 100 ms by default.
RPC_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Model runs and SQL statements: tens of microseconds to a few milliseconds.
FAST_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
OTHER = "other"
_MAX_CACHED = 4096
NONE = "none"


class BoundedLabel:
    """Label values as they come, up to ``limit`` distinct ones; any later one is "other"."""

    def __init__(self, limit: int = 256, max_length: int = 128) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._max_length = max_length

    def __call__(self, value: str) -> str:
        if not value:
            return NONE
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit or len(value) > self._max_length:
            return OTHER
        self._seen.add(value)
        return value


class Metrics:
    """Every metric a target exports (RED per RPC, decisions, outcomes, ingestion, model and
    database latency), registered in ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        target: str = "",
        version: str = "",
        process_collectors: bool = True,
    ) -> None:
        # No "<counter>_created" series beside each counter and histogram: they double the
        # series count for a timestamp no dashboard here uses (a prometheus_client setting).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process_collectors:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        Gauge(
            "nextbest_build_info",
            "Always 1: the version and the target this process runs.",
            ["version", "target"],
            registry=r,
        ).labels(version or "unknown", target or "unknown").set(1)

        # --- RPCs, named as grpc-ecosystem's interceptors name them so that existing gRPC
        # dashboards work unchanged.
        rpc = ["grpc_service", "grpc_method", "grpc_type"]
        self.rpc_started = Counter(
            "grpc_server_started", "RPCs started on the server.", rpc, registry=r
        )
        self.rpc_handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by final gRPC status code.",
            [*rpc, "grpc_code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its last response (streams: their lifetime).",
            rpc,
            buckets=RPC_BUCKETS,
            registry=r,
        )

        # --- decisions, outcomes, events (told by the orchestrator)
        self.decisions = Counter(
            "nextbest_decisions",
            "Decisions made, by channel, issue, action and outcome (action or no_action).",
            ["channel", "issue", "action", "outcome"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "nextbest_decision_seconds",
            "Time the decision engine took for one decision, by channel.",
            ["channel"],
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.decisions_degraded = Counter(
            "nextbest_decisions_degraded",
            "Decisions answered with a fallback because a dependency failed, by channel.",
            ["channel"],
            registry=r,
        )
        self.degraded_reasons = Counter(
            "nextbest_decision_degraded_reasons",
            "Why decisions were degraded: one count per reason of each degraded decision.",
            ["reason"],
            registry=r,
        )
        self.outcomes = Counter(
            "nextbest_outcomes",
            "Outcomes reported, by action, outcome and whether it was a duplicate report.",
            ["action", "outcome", "duplicate"],
            registry=r,
        )
        self.events = Counter(
            "nextbest_events_ingested",
            "Events received through TrackEvents: accepted (new) or duplicate (already had).",
            ["result"],
            registry=r,
        )
        self._events_accepted = self.events.labels("accepted")
        self._events_duplicate = self.events.labels("duplicate")
        self.event_batches = Counter(
            "nextbest_event_batches", "TrackEvents batches stored.", registry=r
        )
        # --- events from a stream (told by services/ingest): outcome is one of
        # stored, duplicate, dead_lettered.
        self.stream_messages = Counter(
            "nextbest_stream_messages",
            "Stream messages handled and acknowledged: stored (new events), duplicate "
            "(already stored: a redelivery or a re-sent event_id) or dead_lettered (bad).",
            ["outcome"],
            registry=r,
        )
        self.stream_lag = Gauge(
            "nextbest_stream_consumer_lag",
            "Messages in the stream not yet delivered to the durable consumer (its pending "
            "count, shared by every replica).",
            registry=r,
        )
        # --- personal data (told by the context service and the orchestrator): field is one
        # of a fixed few (event_attributes, profile_attributes, request_context).
        self.redactions = Counter(
            "nextbest_personal_data_redacted",
            "Stored string values in which an e-mail address or a phone number was replaced"
            " before writing, by the field that held them.",
            ["field"],
            registry=r,
        )

        # --- model and database latency
        self.inference_seconds = Histogram(
            "nextbest_model_inference_seconds",
            "Time of one batched model run (all candidates of one decision), by model.",
            ["model", "version"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.db_seconds = Histogram(
            "nextbest_db_statement_seconds",
            "Time of one SQL statement on the database driver, by operation.",
            ["operation"],
            buckets=FAST_BUCKETS,
            registry=r,
        )
        self.db_errors = Counter(
            "nextbest_db_statement_errors",
            "SQL statements that failed, by operation.",
            ["operation"],
            registry=r,
        )

        self._channels = BoundedLabel()
        self._issues = BoundedLabel()
        self._actions = BoundedLabel()
        self._reasons = BoundedLabel(limit=64)
        self._models = BoundedLabel(limit=64)
        self._versions = BoundedLabel(limit=256)
        # Metric children by raw label values: labels() takes a lock and builds tuples.
        self._decision_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._inference_children: dict[tuple[str, str], Histogram] = {}

    # --- the orchestrator's DecisionObserver
    def decided(
        self,
        *,
        channel: str,
        issue: str,
        action_id: str,
        degraded_reason: str,
        elapsed_s: float,
    ) -> None:
        key = (channel, issue, action_id)
        children = self._decision_children.get(key)
        if children is None:
            bounded = self._channels(channel)
            children = (
                self.decisions.labels(
                    bounded,
                    self._issues(issue),
                    self._actions(action_id),
                    "action" if action_id else "no_action",
                ),
                self.decision_seconds.labels(bounded),
            )
            if len(self._decision_children) < _MAX_CACHED:
                self._decision_children[key] = children
        children[0].inc()
        children[1].observe(elapsed_s)
        if degraded_reason:
            self.decisions_degraded.labels(self._channels(channel)).inc()
            # "scoring: timeout; decision not recorded" -> one count per reason.
            for reason in degraded_reason.split(";"):
                self.degraded_reasons.labels(self._reasons(reason.strip())).inc()

    def outcome_recorded(self, *, action_id: str, outcome: str, duplicate: bool) -> None:
        self.outcomes.labels(
            self._actions(action_id), outcome or NONE, "true" if duplicate else "false"
        ).inc()

    def events_ingested(self, *, accepted: int, duplicates: int) -> None:
        self.event_batches.inc()
        if accepted:
            self._events_accepted.inc(accepted)
        if duplicates:
            self._events_duplicate.inc(duplicates)

    # --- the stream consumer's observer (services/ingest/consumer.py, StreamObserver)
    def stream_handled(self, outcome: str, count: int) -> None:
        self.stream_messages.labels(outcome).inc(count)

    def stream_pending(self, pending: int) -> None:
        self.stream_lag.set(pending)

    # --- the context service's redaction observer (and the orchestrator's DecisionObserver)
    def personal_data_redacted(self, field: str, count: int) -> None:
        self.redactions.labels(field).inc(count)

    # --- the scoring service's inference observer
    def model_inferred(self, model: str, version: str, elapsed_s: float) -> None:
        key = (model, version)
        child = self._inference_children.get(key)
        if child is None:
            child = self.inference_seconds.labels(self._models(model), self._versions(version))
            if len(self._inference_children) < _MAX_CACHED:
                self._inference_children[key] = child
        child.observe(elapsed_s)
