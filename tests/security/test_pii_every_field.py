"""No raw e-mail address or phone number reaches the database through any string of any
request (PRODUCT.md §7), on SQLite and on PostgreSQL.

Data-driven from the descriptors of the generated stubs: every method of every service in
proto/, every string field of its request at any depth (repeated fields, map keys and
values, google.protobuf.Struct keys and values, nested Structs included). Each field is
filled, one at a time, with a raw e-mail address and then a raw phone number, in an
otherwise valid request (a baseline that succeeds as it is), and sent through the real gRPC
server: the embedded hub on port 0, which serves the public, admin and internal services on
one port. Then the stored bytes are searched for every raw value sent. Refusing the value
(INVALID_ARGUMENT) is as good as storing it redacted. A field added to a proto later is
walked without changing this test; an RPC added later needs a baseline here (the test says
so).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from nextbest.arbitration.v1 import arbitration_pb2
from nextbest.catalog.v1 import catalog_pb2
from nextbest.context.v1 import context_pb2, profile_pb2
from nextbest.decision.v1 import decision_pb2
from nextbest.identity.v1 import identity_pb2
from nextbest.inference.v2 import open_inference_pb2
from nextbest.privacy.v1 import privacy_pb2
from nextbest.scoring.v1 import model_pb2, scoring_pb2
from sqlalchemy import create_engine, select

from libs.config import Settings, Target
from libs.rpc.interceptors import REQUEST_ID_KEY
from libs.storage.database import sync_url
from libs.storage.migrate import upgrade
from services.app import MIGRATIONS
from services.arbitration.api import catalog_to_proto
from services.arbitration.catalog import parse_catalog_yaml
from services.demo.seed import DEMO_CATALOG, demo_features
from services.demo.train import DEMO_MODEL_NAME, DEMO_MODEL_VERSION
from services.identity.tables import MergeRow
from services.scoring.api import feature_to_proto
from services.scoring.inference import INFERENCE_SERVICE
from tests.conftest import create_postgres_database, drop_postgres_database, require_postgres
from tests.demo_hub import serve_demo
from tests.storage.scan import on_disk, tables_mentioning

# Every proto package of the product: the walk covers each service these files declare.
MODULES = (
    decision_pb2,
    privacy_pb2,
    profile_pb2,
    catalog_pb2,
    model_pb2,
    identity_pb2,
    context_pb2,
    scoring_pb2,
    arbitration_pb2,
    open_inference_pb2,
)
# The path a service is served at, when it is not its descriptor's full name.
SERVED_AS = {"nextbest.inference.v2.GRPCInferenceService": INFERENCE_SERVICE}
# Codes a call may end with on purpose (a refusal, an unknown id); INTERNAL never.
DELIBERATE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
}
_STRUCT = "google.protobuf.Struct"


# --------------------------------------------------------------------------- the walk

Setter = Callable[[Message, str], None]


def _first(container: Any) -> Message:
    """The first element of a repeated message field (one is added when it is empty)."""
    element: Message = container[0] if len(container) else container.add()
    return element


def _field(message: Message, name: str) -> Message:
    field: Message = getattr(message, name)
    return field


def _first_of(message: Message, name: str) -> Message:
    return _first(getattr(message, name))


def _inside(get: Callable[[Message], Message], setter: Setter) -> Setter:
    return lambda message, raw: setter(get(message), raw)


def _struct_slots(path: str, name: str) -> Iterator[tuple[str, Setter]]:
    """A Struct's keys and values, at its top level and one level down."""

    def put(make: Callable[[str], dict[str, Any]]) -> Setter:
        return lambda message, raw: getattr(message, name).update(make(raw))

    yield f"{path}{{key}}", put(lambda raw: {raw: "x"})
    yield f"{path}{{value}}", put(lambda raw: {"note": raw})
    yield f"{path}{{nested key}}", put(lambda raw: {"nested": {raw: 1}})
    yield f"{path}{{nested value}}", put(lambda raw: {"nested": {"items": [{"note": raw}]}})


def string_slots(
    descriptor: Descriptor, path: str = "", seen: frozenset[str] = frozenset()
) -> Iterator[tuple[str, Setter]]:
    """Every place of a ``descriptor`` message where a string can go: its path and how to put
    a value there (into a message that already holds a valid request)."""
    for field in descriptor.fields:
        name, where = field.name, f"{path}.{field.name}" if path else field.name
        repeated = field.is_repeated
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            if key.type == FieldDescriptor.TYPE_STRING:
                yield f"{where}{{key}}", _map_key_setter(name, value)
            if value.type == FieldDescriptor.TYPE_STRING:
                yield f"{where}{{value}}", _map_value_setter(name)
            elif value.message_type is not None and value.message_type.full_name not in seen:
                for inner, setter in string_slots(
                    value.message_type, f"{where}{{value}}", seen | {descriptor.full_name}
                ):
                    yield inner, _inside(functools.partial(_map_entry, name=name), setter)
        elif entry is not None and entry.full_name == _STRUCT:
            yield from _struct_slots(where, name)
        elif entry is not None:
            if entry.full_name in seen:
                continue  # a recursive message: its strings are walked once
            get = functools.partial(_first_of if repeated else _field, name=name)
            for inner, setter in string_slots(entry, where, seen | {descriptor.full_name}):
                yield inner, _inside(get, setter)
        elif field.type == FieldDescriptor.TYPE_STRING:
            yield where, (_list_setter(name) if repeated else _scalar_setter(name))


def _scalar_setter(name: str) -> Setter:
    return lambda message, raw: setattr(message, name, raw)


def _list_setter(name: str) -> Setter:
    def put(message: Message, raw: str) -> None:
        values = getattr(message, name)
        if len(values):
            values[0] = raw
        else:
            values.append(raw)

    return put


def _map_entry(message: Message, name: str) -> Message:
    entries = getattr(message, name)
    key = next(iter(entries), "k")
    entry: Message = entries[key]
    return entry


def _map_key_setter(name: str, value: FieldDescriptor) -> Setter:
    def put(message: Message, raw: str) -> None:
        entries = getattr(message, name)
        if value.message_type is not None:
            entries[raw].CopyFrom(entries[next(iter(entries))] if len(entries) else entries[raw])
        else:
            entries[raw] = next(iter(entries.values()), "x")

    return put


def _map_value_setter(name: str) -> Setter:
    def put(message: Message, raw: str) -> None:
        entries = getattr(message, name)
        entries[next(iter(entries), "k")] = raw

    return put


def every_method() -> list[MethodDescriptor]:
    return [
        method
        for module in MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


# --------------------------------------------------------------------------- baselines


@dataclass
class Known:
    """What the baselines refer to: a customer, her profile and one of her decisions."""

    customer: decision_pb2.Identifier
    profile_id: str
    decision_id: str
    model_bytes: bytes


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def profile_context(known: Known) -> context_pb2.ProfileContext:
    at = now()
    return context_pb2.ProfileContext(
        profile_id=known.profile_id,
        attributes=struct(tier="gold"),
        counters=[
            context_pb2.EventCounter(
                event_type="page_view", count=1, last_occurred_at=at, first_occurred_at=at
            )
        ],
        interactions=[
            context_pb2.InteractionSummary(action_id="x", channel="web", last_contact_at=at)
        ],
        windows=[context_pb2.WindowAggregate(event_type="page_view", window="1h", count=1)],
        channels=[
            context_pb2.ChannelActivity(channel="web", events=1, first_seen_at=at, last_seen_at=at)
        ],
        predictions=[
            context_pb2.Prediction(name="churn", value=0.5, version="v1", predicted_at=at)
        ],
        consents=[
            context_pb2.PurposeConsent(
                purpose="marketing", granted=True, source="form", updated_at=at
            )
        ],
        contacts=[
            context_pb2.Contact(action_id="x", channel="web", kind="impression", occurred_at=at)
        ],
    )


def baselines(known: Known) -> dict[str, Callable[[], Message]]:
    """A valid request of every method (by full name), made fresh for each call (ids that
    must be new each time are)."""

    # Rows that a later call would overwrite (a prediction, a consent) must not hide what an
    # earlier one stored: writes go to a new customer or profile each time.
    def who() -> list[decision_pb2.Identifier]:
        return [decision_pb2.Identifier(type="customer_id", value=fresh("walker"))]

    def profile() -> str:
        return uuid.uuid4().hex

    prediction = context_pb2.Prediction(name="churn", value=0.4, version="v1", predicted_at=now())
    purpose = context_pb2.PurposeConsent(purpose="marketing", granted=True, source="form")
    full = context_pb2.PERSONALIZATION_LEVEL_FULL
    demo_catalog = catalog_to_proto(parse_catalog_yaml(DEMO_CATALOG.read_text()))
    demo_catalog.defaults["web"] = demo_catalog.actions[0].action_id
    candidate = demo_catalog.actions[0]
    oip = open_inference_pb2

    def decision_record() -> context_pb2.DecisionRecord:
        return context_pb2.DecisionRecord(
            decision_id=uuid.uuid4().hex,
            request_id=fresh("r"),
            profile_id=profile(),
            channel="web",
            placement="home",
            action_id=candidate.action_id,
            decided_at=now(),
            payload=struct(note="none"),
            predictions=[prediction],
        )

    return {
        "nextbest.decision.v1.DecisionService.Decide": lambda: decision_pb2.DecideRequest(
            identifiers=who(),
            channel="web",
            placement="home",
            context=struct(page="/plans"),
            request_id=fresh("r"),
        ),
        "nextbest.decision.v1.DecisionService.RecordOutcome": lambda: (
            decision_pb2.RecordOutcomeRequest(
                decision_id=known.decision_id,
                outcome=decision_pb2.OUTCOME_CLICK,
                idempotency_key=fresh("k"),
            )
        ),
        "nextbest.decision.v1.DecisionService.TrackEvents": lambda: decision_pb2.TrackEventsRequest(
            events=[
                decision_pb2.Event(
                    event_id=fresh("e"),
                    identifiers=who(),
                    type="page_view",
                    channel="web",
                    attributes=struct(page="/plans"),
                )
            ]
        ),
        "nextbest.decision.v1.DecisionService.WatchDecisions": lambda: (
            decision_pb2.WatchDecisionsRequest(
                identifiers=who(), channel="web", placement="home", context=struct(page="/x")
            )
        ),
        "nextbest.privacy.v1.PrivacyService.ExportProfile": lambda: (
            privacy_pb2.ExportProfileRequest(identifiers=who())
        ),
        "nextbest.privacy.v1.PrivacyService.EraseProfile": lambda: privacy_pb2.EraseProfileRequest(
            identifiers=[decision_pb2.Identifier(type="cookie_id", value=fresh("gone"))]
        ),
        "nextbest.privacy.v1.PrivacyService.SetConsent": lambda: privacy_pb2.SetConsentRequest(
            identifiers=who(), level=full, purposes=[purpose], source="preference_centre"
        ),
        "nextbest.privacy.v1.PrivacyService.GetConsent": lambda: privacy_pb2.GetConsentRequest(
            identifiers=who()
        ),
        "nextbest.context.v1.ProfileService.SetProfileAttributes": lambda: (
            profile_pb2.SetProfileAttributesRequest(
                identifiers=who(), attributes=struct(tier="gold"), remove_keys=["old"]
            )
        ),
        "nextbest.context.v1.ProfileService.SetProfilePredictions": lambda: (
            profile_pb2.SetProfilePredictionsRequest(identifiers=who(), predictions=[prediction])
        ),
        "nextbest.context.v1.ProfileService.GetProfile": lambda: profile_pb2.GetProfileRequest(
            identifiers=who()
        ),
        "nextbest.catalog.v1.CatalogService.ApplyCatalog": lambda: catalog_pb2.ApplyCatalogRequest(
            catalog=demo_catalog
        ),
        "nextbest.catalog.v1.CatalogService.GetCatalog": catalog_pb2.GetCatalogRequest,
        "nextbest.scoring.v1.ModelService.RegisterModel": lambda: model_pb2.RegisterModelRequest(
            name=DEMO_MODEL_NAME,
            version=fresh("v"),
            onnx_model=known.model_bytes,
            features=[feature_to_proto(spec) for spec in demo_features()],
        ),
        "nextbest.scoring.v1.ModelService.ActivateModel": lambda: model_pb2.ActivateModelRequest(
            name=DEMO_MODEL_NAME, version=DEMO_MODEL_VERSION
        ),
        "nextbest.scoring.v1.ModelService.RollbackModel": lambda: model_pb2.RollbackModelRequest(
            name=DEMO_MODEL_NAME
        ),
        "nextbest.scoring.v1.ModelService.SetChallenger": lambda: model_pb2.SetChallengerRequest(
            name=DEMO_MODEL_NAME
        ),
        "nextbest.scoring.v1.ModelService.ListModels": lambda: model_pb2.ListModelsRequest(
            name=DEMO_MODEL_NAME
        ),
        "nextbest.identity.v1.IdentityService.ResolveProfile": lambda: (
            identity_pb2.ResolveProfileRequest(identifiers=who())
        ),
        "nextbest.identity.v1.IdentityService.ResolveProfiles": lambda: (
            identity_pb2.ResolveProfilesRequest(
                identifier_sets=[identity_pb2.IdentifierSet(identifiers=who())]
            )
        ),
        "nextbest.identity.v1.IdentityService.SettleMerges": lambda: (
            identity_pb2.SettleMergesRequest(
                survivor_profile_id=known.profile_id, merged_profile_ids=[uuid.uuid4().hex]
            )
        ),
        "nextbest.identity.v1.IdentityService.LookupProfile": lambda: (
            identity_pb2.LookupProfileRequest(identifiers=who())
        ),
        "nextbest.identity.v1.IdentityService.EraseProfile": lambda: (
            identity_pb2.EraseProfileRequest(profile_id=uuid.uuid4().hex)
        ),
        "nextbest.context.v1.ContextService.GetProfileContext": lambda: (
            context_pb2.GetProfileContextRequest(profile_id=known.profile_id)
        ),
        "nextbest.context.v1.ContextService.AppendEvents": lambda: context_pb2.AppendEventsRequest(
            events=[
                context_pb2.ProfileEvent(
                    event_id=fresh("e"),
                    profile_id=profile(),
                    type="page_view",
                    channel="web",
                    occurred_at=now(),
                    attributes=struct(page="/plans"),
                )
            ]
        ),
        "nextbest.context.v1.ContextService.RecordDecision": lambda: (
            context_pb2.RecordDecisionRequest(record=decision_record())
        ),
        "nextbest.context.v1.ContextService.RecordDecisions": lambda: (
            context_pb2.RecordDecisionsRequest(records=[decision_record()])
        ),
        "nextbest.context.v1.ContextService.RecordOutcome": lambda: (
            context_pb2.RecordOutcomeRequest(
                decision_id=known.decision_id,
                outcome=decision_pb2.OUTCOME_CLICK,
                idempotency_key=fresh("k"),
            )
        ),
        "nextbest.context.v1.ContextService.ExportProfile": lambda: (
            context_pb2.ExportProfileRequest(profile_id=known.profile_id)
        ),
        "nextbest.context.v1.ContextService.EraseProfile": lambda: context_pb2.EraseProfileRequest(
            profile_id=uuid.uuid4().hex
        ),
        "nextbest.context.v1.ContextService.MergeProfiles": lambda: (
            context_pb2.MergeProfilesRequest(
                survivor_profile_id=known.profile_id, merged_profile_ids=[uuid.uuid4().hex]
            )
        ),
        "nextbest.context.v1.ContextService.SetAttributes": lambda: (
            context_pb2.SetAttributesRequest(
                profile_id=profile(), attributes=struct(tier="gold"), remove_keys=["old"]
            )
        ),
        "nextbest.context.v1.ContextService.SetPredictions": lambda: (
            context_pb2.SetPredictionsRequest(profile_id=profile(), predictions=[prediction])
        ),
        "nextbest.context.v1.ContextService.SetConsent": lambda: context_pb2.SetConsentRequest(
            profile_id=profile(), level=full, purposes=[purpose], source="form"
        ),
        "nextbest.context.v1.ContextService.GetConsent": lambda: context_pb2.GetConsentRequest(
            profile_id=known.profile_id
        ),
        "nextbest.arbitration.v1.ArbitrationService.ListCandidates": lambda: (
            arbitration_pb2.ListCandidatesRequest(
                channel="web", placement="home", request_context=struct(page="/x")
            )
        ),
        "nextbest.arbitration.v1.ArbitrationService.Prioritize": lambda: (
            arbitration_pb2.PrioritizeRequest(
                candidates=[
                    arbitration_pb2.ScoredCandidate(
                        action_id=candidate.action_id, propensity=0.5, model_version="m:1"
                    )
                ],
                channel="web",
                placement="home",
                profile_context=profile_context(known),
                request_context=struct(page="/x"),
            )
        ),
        "nextbest.scoring.v1.ScoringService.ScoreCandidates": lambda: (
            scoring_pb2.ScoreCandidatesRequest(
                profile_context=profile_context(known),
                request_context=struct(page="/x"),
                channel="web",
                candidates=[
                    scoring_pb2.Candidate(
                        action_id=candidate.action_id,
                        model=DEMO_MODEL_NAME,
                        issue=candidate.issue,
                        group=candidate.group,
                        value=1.0,
                        lever=1.0,
                        prior_propensity=0.1,
                    )
                ],
            )
        ),
        "nextbest.inference.v2.GRPCInferenceService.ServerLive": oip.ServerLiveRequest,
        "nextbest.inference.v2.GRPCInferenceService.ServerReady": oip.ServerReadyRequest,
        "nextbest.inference.v2.GRPCInferenceService.ServerMetadata": oip.ServerMetadataRequest,
        "nextbest.inference.v2.GRPCInferenceService.ModelReady": lambda: oip.ModelReadyRequest(
            name=DEMO_MODEL_NAME, version=DEMO_MODEL_VERSION
        ),
        "nextbest.inference.v2.GRPCInferenceService.ModelMetadata": lambda: (
            oip.ModelMetadataRequest(name=DEMO_MODEL_NAME, version=DEMO_MODEL_VERSION)
        ),
        "nextbest.inference.v2.GRPCInferenceService.ModelInfer": lambda: oip.ModelInferRequest(
            model_name=DEMO_MODEL_NAME,
            id="infer-1",
            parameters={"note": oip.InferParameter(string_param="x")},
            inputs=[
                oip.ModelInferRequest.InferInputTensor(
                    name="input",
                    datatype="FP32",
                    shape=[1, 1],
                    parameters={"note": oip.InferParameter(string_param="x")},
                )
            ],
            outputs=[
                oip.ModelInferRequest.InferRequestedOutputTensor(
                    name="probabilities",
                    parameters={"note": oip.InferParameter(string_param="x")},
                )
            ],
        ),
    }


# A baseline that cannot succeed as it stands; every other must (else the walk would prove
# nothing: a refused request stores nothing whatever its strings hold).
BASELINE_MAY_FAIL = {
    # Needs tensor data matching the model's inputs; it stores nothing either way.
    "nextbest.inference.v2.GRPCInferenceService.ModelInfer",
    # Rolling back needs an earlier active version than the one in force.
    "nextbest.scoring.v1.ModelService.RollbackModel",
}


# Requests whose strings are the business's own text, kept as written by design: every
# string is still sent (a call must not end in INTERNAL) but not looked for in storage. A
# catalog is what its author wrote (a treatment's support number is shown to customers as
# written; docs/operations.md), and each version applied is kept to read old decisions.
AUTHORED = {
    "nextbest.catalog.v1.CatalogService.ApplyCatalog",
}


# --------------------------------------------------------------------------- the hub


@dataclass
class Hub:
    address: str
    database_url: str
    database_file: Path | None


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def hub(
    request: pytest.FixtureRequest, tmp_path: Path, demo_model_bytes: bytes
) -> AsyncIterator[Hub]:
    database_url = ""
    if request.param == "postgresql":
        require_postgres()
        database_url = create_postgres_database()
        upgrade(database_url, MIGRATIONS)
    settings = Settings(
        target=Target.ALL,
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        database_url=database_url,  # empty: a SQLite file in data_dir
    )
    built = await serve_demo(settings, demo_model_bytes)
    url = settings.effective_database_url
    try:
        database_file = None
        if url.startswith("sqlite"):
            database_file = Path(url.split(":///", 1)[1])
        yield Hub(f"127.0.0.1:{built.port}", url, database_file)
    finally:
        await built.server.stop(0)
        await built.close()
        if database_url:
            drop_postgres_database(database_url)


async def call(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message
) -> tuple[grpc.StatusCode, str]:
    """How the call ended: its code and message (a stream: after its first answer)."""
    service = SERVED_AS.get(
        method.containing_service.full_name, method.containing_service.full_name
    )
    path = f"/{service}/{method.name}"
    response_type = message_factory.GetMessageClass(method.output_type)
    try:
        if method.server_streaming:
            stream = channel.unary_stream(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )(request, timeout=10)
            async for _first in stream:
                stream.cancel()
                break
        else:
            await channel.unary_unary(
                path,
                request_serializer=type(request).SerializeToString,
                response_deserializer=response_type.FromString,
            )(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def stored_anywhere(hub: Hub, needles: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per needle found: the tables holding it (rows), and the SQLite files (occurrences)."""
    wanted = sorted(needles)
    stored = await asyncio.to_thread(tables_mentioning, hub.database_url, wanted)
    if hub.database_file is not None:
        # The SQLite files as bytes too: the database file and its write-ahead log.
        for needle in wanted:
            for file_name, count in on_disk(hub.database_file, needle).items():
                if count:
                    stored.setdefault(needle, {})[file_name] = count
    return stored


def raw_values(number: int) -> tuple[str, tuple[str, ...]]:
    """The raw e-mail address or phone number sent in slot ``number``, and what must not be
    found stored: the value, and a phone's bare digits too (a normalised copy)."""
    if number % 2 == 0:
        email = f"walk{number}.pii@example.com"
        return email, (email,)
    phone = f"+44 7700 9{number:05d}"
    return phone, (phone, phone.replace(" ", "").lstrip("+"))


async def test_no_string_of_any_request_reaches_storage_raw(
    hub: Hub, demo_model_bytes: bytes
) -> None:
    methods = every_method()
    async with grpc.aio.insecure_channel(hub.address) as channel:
        customer = decision_pb2.Identifier(type="customer_id", value=fresh("walker"))
        first = decision_pb2.DecideRequest(identifiers=[customer], channel="web")
        reply = await channel.unary_unary(
            "/nextbest.decision.v1.DecisionService/Decide",
            request_serializer=decision_pb2.DecideRequest.SerializeToString,
            response_deserializer=decision_pb2.DecideResponse.FromString,
        )(first, timeout=10)
        known = Known(
            customer, reply.decision.profile_id, reply.decision.decision_id, demo_model_bytes
        )
        requests = baselines(known)
        names = {method.full_name for method in methods}
        assert names == set(requests), (
            "give every RPC a valid baseline request here",
            sorted(names ^ set(requests)),
        )

        sent: dict[str, tuple[str, ...]] = {}  # slot -> raw values to look for
        failures: list[str] = []
        counter = itertools.count()
        slots = 0
        for method in methods:
            make = requests[method.full_name]
            code, details = await call(channel, method, make())
            if method.full_name not in BASELINE_MAY_FAIL:
                assert code == grpc.StatusCode.OK, (method.full_name, "baseline", details)
            for path, put in string_slots(method.input_type):
                for _kind in ("email", "phone"):
                    number = next(counter)
                    raw, needles = raw_values(number)
                    request = make()
                    put(request, raw)
                    code, details = await call(channel, method, request)
                    slot = f"{method.full_name}: {path} = {raw!r}"
                    if code not in DELIBERATE:
                        failures.append(f"{slot} -> {code.name}: {details}")
                    if method.full_name not in AUTHORED:
                        sent[slot] = needles
                slots += 1
    assert slots > 150, slots  # the walk found the fields (a broken walk finds none)
    assert not failures, failures

    stored = await stored_anywhere(hub, {needle for found in sent.values() for needle in found})
    leaked = sorted(
        f"{slot} -> {stored[needle]}"
        for slot, found in sent.items()
        for needle in found
        if needle in stored
    )
    assert not leaked, "\n".join(leaked)


def merge_request_ids(database_url: str) -> list[str]:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            return [str(found) for found in connection.scalars(select(MergeRow.request_id))]
    finally:
        engine.dispose()


async def test_a_request_id_sent_as_metadata_is_not_stored_raw(hub: Hub) -> None:
    """The ``x-request-id`` metadata is kept with each merge identity records (who caused
    it): an e-mail address or a phone number in it is stored as a placeholder."""
    raws = {"metadata.walk@example.com": "[email]", "+44 7700 900999": "[phone]"}
    async with grpc.aio.insecure_channel(hub.address) as channel:
        # Identity itself (served on the embedded hub's port): no decision budget to miss.
        resolve = channel.unary_unary(
            "/nextbest.identity.v1.IdentityService/ResolveProfile",
            request_serializer=identity_pb2.ResolveProfileRequest.SerializeToString,
            response_deserializer=identity_pb2.ResolveProfileResponse.FromString,
        )
        for raw in raws:
            cookies = [decision_pb2.Identifier(type="cookie_id", value=fresh("c")) for _ in "ab"]
            for cookie in cookies:  # two profiles, one per cookie
                await resolve(identity_pb2.ResolveProfileRequest(identifiers=[cookie]), timeout=10)
            # Seen together: identity merges them, on behalf of this request.
            await resolve(
                identity_pb2.ResolveProfileRequest(identifiers=cookies),
                metadata=((REQUEST_ID_KEY, raw),),
                timeout=10,
            )

    assert sorted(await asyncio.to_thread(merge_request_ids, hub.database_url)) == sorted(
        raws.values()
    )
    assert not await stored_anywhere(hub, [*raws, "447700900999"])
