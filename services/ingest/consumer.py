"""The durable JetStream consumer: messages in, events stored, then acknowledged.

Every replica pulls from one durable consumer, so JetStream spreads the messages over them.
A batch of messages is decoded, converted and validated as TrackEvents does, and written
with one ``track_events`` call (the orchestrator's domain path: identities resolved, events
stored at once). Only then are its messages acknowledged: a process killed before that has
them redelivered, and ``event_id`` idempotency stores a redelivered event once.

A message that cannot be an event (undecodable, or refused with INVALID_ARGUMENT) goes to
the dead-letter subject with the reason in a header, then is acknowledged: it never blocks
the stream. Anything else (the database is down) leaves the batch unacknowledged and asks
for a redelivery a little later.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from libs.config import Settings
from libs.contracts.context import AppendResult
from libs.errors import FieldViolation, InvalidArgument
from libs.logging import get_logger
from services.ingest.decode import UndecodableMessage, decode_event
from services.orchestrator.api import tracked_events_from_proto
from services.orchestrator.model import TrackedEvent

_log = get_logger("nextbest.ingest")

STORED = "stored"
DUPLICATE = "duplicate"
DEAD_LETTERED = "dead_lettered"
# Headers of a dead letter: why, and where the message came from.
REASON_HEADER = "Nextbest-Dead-Letter-Reason"
SUBJECT_HEADER = "Nextbest-Original-Subject"
SEQUENCE_HEADER = "Nextbest-Original-Sequence"
# A fetch waits at most this long for messages (and a stop at most this long for a fetch).
FETCH_WAIT_S = 1.0
# How long a batch waits for more messages once one has arrived (what a lone event waits).
LINGER_S = 0.005
# A batch that could not be stored is redelivered after this delay (the database is down).
RETRY_DELAY_S = 2.0
# How often the consumer's pending count is read when no message arrives to carry it.
LAG_INTERVAL_S = 5.0
_EVENT_INDEX = re.compile(r"^events\[(\d+)\]\.?")


class EventSink(Protocol):
    """Where events go: TrackEvents' domain path (``EventIngestion``, or the engine that
    holds one)."""

    async def track_events(self, events: list[TrackedEvent]) -> AppendResult: ...


class StreamObserver(Protocol):
    """Told what the consumer did (libs/observability implements it)."""

    def stream_handled(self, outcome: str, count: int) -> None: ...
    def stream_pending(self, pending: int) -> None: ...


class _NoObserver:
    def stream_handled(self, outcome: str, count: int) -> None:
        pass

    def stream_pending(self, pending: int) -> None:
        pass


@dataclass(frozen=True)
class StreamConfig:
    """What the consumer needs of ``Settings`` (its ``NEXTBEST_STREAM_*`` variables)."""

    servers: Sequence[str]
    stream: str
    subject: str
    consumer: str
    dead_letter_subject: str
    create: bool = True
    batch: int = 500
    workers: int = 2
    max_in_flight: int = 4000
    ack_wait_s: float = 30.0
    credentials_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamConfig:
        return cls(
            servers=settings.stream_servers,
            stream=settings.stream_name,
            subject=settings.stream_subject,
            consumer=settings.stream_consumer,
            dead_letter_subject=settings.stream_dead_letter_subject,
            create=settings.stream_create,
            batch=settings.stream_batch,
            workers=settings.stream_workers,
            max_in_flight=settings.stream_max_in_flight,
            ack_wait_s=settings.stream_ack_wait_s,
            credentials_file=(
                str(settings.stream_credentials_file) if settings.stream_credentials_file else None
            ),
        )

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}_DEAD_LETTERS"

    def consumer_config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            durable_name=self.consumer,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=self.subject,
            ack_wait=self.ack_wait_s,
            # Back-pressure across every replica: no more is delivered until some is acked.
            max_ack_pending=self.max_in_flight,
            # Redelivered until stored: a database outage must not drop events.
            max_deliver=-1,
            max_waiting=512,
        )


class StreamConsumer:
    """Consumes the stream into ``sink`` until closed; reconnects and retries on its own,
    so the process serves (and reports healthy) while the broker is away."""

    def __init__(
        self, config: StreamConfig, sink: EventSink, observer: StreamObserver | None = None
    ) -> None:
        self._config = config
        self._sink = sink
        self._observer: StreamObserver = observer or _NoObserver()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # set once the consumer pulls (tests wait for it)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop fetching, finish the batches being stored (acknowledged), disconnect."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._consume()
            except Exception as error:  # the broker is away or refused: try again
                _log.warning("stream consumer not running", error=str(error) or repr(error))
                self.connected.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RETRY_DELAY_S)

    async def _consume(self) -> None:
        config = self._config
        options: dict[str, Any] = {}
        if config.credentials_file:
            options["user_credentials"] = config.credentials_file
        client = await nats.connect(
            servers=list(config.servers),
            name="nextbest-ingest",
            connect_timeout=2,
            reconnect_time_wait=1,
            max_reconnect_attempts=-1,
            error_cb=_log_error,
            disconnected_cb=_log_disconnected,
            reconnected_cb=_log_reconnected,
            **options,
        )
        try:
            js = client.jetstream()
            await self._prepare(js)
            subscription = await js.pull_subscribe_bind(
                durable=config.consumer, stream=config.stream
            )
            self.connected.set()
            _log.info(
                "consuming stream",
                stream=config.stream,
                consumer=config.consumer,
                subject=config.subject,
            )
            workers = [asyncio.create_task(self._work(js)) for _ in range(config.workers)]
            workers.append(asyncio.create_task(self._watch_lag(subscription)))
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            await _close(client)

    async def _prepare(self, js: JetStreamContext) -> None:
        """The stream, the dead-letter stream and the durable consumer: created when
        missing (``create``), else required."""
        config = self._config
        if config.create:
            await _ensure_stream(js, config.stream, config.subject)
            await _ensure_stream(js, config.dead_letter_stream, config.dead_letter_subject)
        else:
            await js.find_stream_name_by_subject(config.dead_letter_subject)
        try:
            await js.consumer_info(config.stream, config.consumer)
        except nats.js.errors.NotFoundError:
            if not config.create:
                raise
            await js.add_consumer(config.stream, config=config.consumer_config())

    async def _work(self, js: JetStreamContext) -> None:
        # A subscription (an inbox) per worker: concurrent fetches on one inbox would take
        # each other's messages and status replies.
        config = self._config
        subscription = await js.pull_subscribe_bind(durable=config.consumer, stream=config.stream)
        while not self._stopping.is_set():
            try:
                messages = await _fetch(subscription, config.batch)
            except nats.errors.ConnectionClosedError:
                raise  # reconnected from the start by _run
            except Exception as error:  # a broken reply, or a reconnection under way
                _log.warning("fetch failed", error=str(error) or repr(error))
                await asyncio.sleep(RETRY_DELAY_S / 4)
                continue
            if not messages:
                continue
            with contextlib.suppress(Exception):
                self._observer.stream_pending(messages[-1].metadata.num_pending)
            await self._handle(js, messages)

    async def _watch_lag(self, subscription: Any) -> None:
        while not self._stopping.is_set():
            try:
                info = await subscription.consumer_info()
                self._observer.stream_pending(int(info.num_pending or 0))
            except Exception as error:
                _log.debug("consumer info not read", error=str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), LAG_INTERVAL_S)

    async def _handle(self, js: JetStreamContext, messages: list[Msg]) -> None:
        """Store a batch; acknowledge what is stored or dead-lettered, redeliver the rest."""
        events, kept, dead = _convert(messages)
        if events:
            try:
                result = await self._store(events, kept, dead)
            except Exception as error:  # not stored: redelivered later, none acknowledged
                _log.warning("batch not stored", messages=len(kept), error=str(error))
                await asyncio.gather(*(message.nak(delay=RETRY_DELAY_S) for message in kept))
                kept = []
                result = None
            if result is not None:
                for message in kept:
                    await message.ack()
                self._observer.stream_handled(STORED, result.accepted)
                self._observer.stream_handled(DUPLICATE, result.duplicates)
        for message, reason in dead:
            await self._dead_letter(js, message, reason)

    async def _store(
        self,
        events: list[TrackedEvent],
        kept: list[Msg],
        dead: list[tuple[Msg, str]],
    ) -> AppendResult:
        """``track_events`` for the batch; the events it refuses (InvalidArgument names
        them by index) are moved from ``kept`` to ``dead`` and the rest is tried again."""
        while events:
            try:
                return await self._sink.track_events(events)
            except InvalidArgument as error:
                refused = _refused(error.violations, len(events))
                if not refused:  # not about one event: each on its own says which
                    return await self._one_by_one(events, kept, dead)
                dead.extend((kept[i], refused[i]) for i in sorted(refused))
                survivors = [i for i in range(len(events)) if i not in refused]
                events = [events[i] for i in survivors]
                kept[:] = [kept[i] for i in survivors]
        return AppendResult(accepted=0, duplicates=0)

    async def _one_by_one(
        self, events: list[TrackedEvent], kept: list[Msg], dead: list[tuple[Msg, str]]
    ) -> AppendResult:
        accepted = duplicates = 0
        stored: list[Msg] = []
        for event, message in zip(events, kept, strict=True):
            try:
                result = await self._sink.track_events([event])
            except InvalidArgument as error:
                dead.append((message, _reason(error.violations)))
                continue
            accepted += result.accepted
            duplicates += result.duplicates
            stored.append(message)
        kept[:] = stored
        return AppendResult(accepted=accepted, duplicates=duplicates)

    async def _dead_letter(self, js: JetStreamContext, message: Msg, reason: str) -> None:
        headers = {
            REASON_HEADER: reason[:1024],
            SUBJECT_HEADER: message.subject,
        }
        with contextlib.suppress(Exception):
            headers[SEQUENCE_HEADER] = str(message.metadata.sequence.stream)
        if message.headers:
            headers = {**message.headers, **headers}
        try:
            await js.publish(self._config.dead_letter_subject, message.data, headers=headers)
        except Exception as error:  # kept in the stream: redelivered, dead-lettered then
            _log.warning("dead letter not published", error=str(error))
            await message.nak(delay=RETRY_DELAY_S)
            return
        await message.ack()
        self._observer.stream_handled(DEAD_LETTERED, 1)
        _log.info("message dead-lettered", subject=message.subject, reason=reason[:200])


async def _fetch(subscription: Any, batch: int) -> list[Msg]:
    """The next batch: waits (at most ``FETCH_WAIT_S``) for a first message, then takes
    what else is there, lingering ``LINGER_S`` for more. One fetch of ``batch`` would not
    do: once a message arrives, nats-py waits for the whole batch until the fetch expires,
    which would hold a lone event for up to a second."""
    # nats-py raises its TimeoutError or asyncio's (the builtin), depending on the path.
    try:
        messages: list[Msg] = await subscription.fetch(1, timeout=FETCH_WAIT_S)
    except TimeoutError:
        return []
    if batch > 1:
        with contextlib.suppress(TimeoutError):
            messages.extend(await subscription.fetch(batch - 1, timeout=LINGER_S))
    return messages


def _convert(messages: list[Msg]) -> tuple[list[TrackedEvent], list[Msg], list[tuple[Msg, str]]]:
    """The events of ``messages`` (as TrackEvents converts them), the messages they came
    from, and the messages that are no event with the reason."""
    decoded = []
    kept: list[Msg] = []
    dead: list[tuple[Msg, str]] = []
    for message in messages:
        try:
            decoded.append(decode_event(message.data, message.headers))
        except UndecodableMessage as error:
            dead.append((message, str(error)))
            continue
        kept.append(message)
    try:
        return tracked_events_from_proto(decoded), kept, dead
    except (InvalidArgument, ValueError, OverflowError):
        pass  # one of them is bad: converted one by one below
    events: list[TrackedEvent] = []
    converted: list[Msg] = []
    for message, event in zip(kept, decoded, strict=True):
        try:
            events.extend(tracked_events_from_proto([event]))
        except InvalidArgument as error:
            dead.append((message, _reason(error.violations)))
            continue
        except (ValueError, OverflowError) as error:
            dead.append((message, f"not a valid event: {error}"))
            continue
        converted.append(message)
    return events, converted, dead


def _refused(violations: list[FieldViolation], count: int) -> dict[int, str]:
    """The reasons by event index of violations that name ``events[i]``."""
    by_index: dict[int, list[FieldViolation]] = {}
    for violation in violations:
        match = _EVENT_INDEX.match(violation.field)
        if match is None or int(match.group(1)) >= count:
            return {}
        by_index.setdefault(int(match.group(1)), []).append(violation)
    return {index: _reason(items) for index, items in by_index.items()}


def _reason(violations: list[FieldViolation]) -> str:
    """``type: required ...; identifiers: ...``: the fields named as in one ``Event``."""
    return "; ".join(
        f"{_EVENT_INDEX.sub('', v.field) or 'event'}: {v.description}" for v in violations
    )


async def _ensure_stream(js: JetStreamContext, name: str, subject: str) -> None:
    try:
        await js.stream_info(name)
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await js.add_stream(name=name, subjects=[subject], storage=api.StorageType.FILE)
    except nats.js.errors.BadRequestError:
        await js.stream_info(name)  # another replica created it meanwhile: fine


async def _close(client: Client) -> None:
    """Send the acknowledgements still buffered, then disconnect. Not ``drain()``: a pull
    subscription's inbox keeps the fetch status replies nobody reads, and drain would wait
    for them until its timeout."""
    with contextlib.suppress(Exception):
        await client.flush(timeout=2)
    with contextlib.suppress(Exception):
        await client.close()


async def _log_error(error: Exception) -> None:
    _log.warning("stream connection error", error=str(error) or repr(error))


async def _log_disconnected() -> None:
    _log.warning("stream disconnected")


async def _log_reconnected() -> None:
    _log.info("stream reconnected")
