"""Scoring domain logic: the model registry and batched propensity scoring.

Design:

- Every change to the registry (register, activate, rollback, challenger) is validated
  first and committed in one transaction under a per-model lock; a refusal changes nothing.
  Replicas read the serving versions from the database every ``refresh_s`` (loading only
  versions they do not hold yet) and the change feed tells decision streams to re-decide.
- Rollback re-activates the version activated last before the active one (the registry
  keeps when each version last became active).
- Champion/challenger: a challenger version scores ``traffic_share`` of the profiles. The
  split is sticky: a stable hash (sha256) of the model name and the profile id, the same on
  every replica and across restarts; a request without a profile id gets the champion.
  ``CandidateScore.model_version`` says which version scored, so the decision records it.
- Where the model runs is a ``ModelBackend``: onnxruntime in-process, or an external Open
  Inference Protocol v2 server (services/scoring/inference.py). Registration always
  validates the file in-process with onnxruntime, whatever the backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from libs.changes import ALL, ChangePublisher
from libs.clock import utc_now
from libs.contracts.context import ProfileContext
from libs.contracts.scoring import CandidateScore, ScoringCandidate
from libs.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Violations
from libs.logging import get_logger
from libs.memo import ByIdentity
from libs.storage import StorageConflict
from services.scoring.features import FeatureBuilder, ScoringInput, resolve_features
from services.scoring.metadata import FEATURES_KEY, embedded_features
from services.scoring.model import FeatureSpec, ModelInfo, ModelStatus
from services.scoring.repository import ScoringUnitOfWork
from services.scoring.runtime import LoadedModel, ModelValidationError, checksum, load_model

UnitOfWorkFactory = Callable[[bool], ScoringUnitOfWork]
# Told (model name, version, seconds) of each batched model run (metrics).
InferenceObserver = Callable[[str, str, float], None]
MAX_MODEL_BYTES = 64 * 1024 * 1024
MAX_FEATURES = 512
# Candidate tuples whose grouping per model is kept (a few per channel and catalog).
_GROUPINGS = 64
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_log = get_logger("nextbest.scoring")


class ScorerUnavailable(Exception):
    """A model backend could not score (an external server down or too slow): the
    candidates fall back to their priors."""


class Scorer(Protocol):
    """One serving model version, wherever it runs."""

    async def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """P(accept) per row of a (rows, features) matrix."""
        ...


class ModelBackend(Protocol):
    """Where models run: ``load`` gives the scorer of a registered version."""

    @property
    def needs_model_bytes(self) -> bool:
        """Whether ``load`` needs the ONNX bytes (read from the database only then)."""
        ...

    def load(self, info: ModelInfo, onnx_model: bytes) -> Scorer:
        """Raises ModelValidationError when the version cannot serve."""
        ...


@dataclass(frozen=True)
class LocalScorer:
    model: LoadedModel

    async def predict(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return self.model.predict(features)


class OnnxRuntimeBackend:
    """In-process onnxruntime (the default)."""

    needs_model_bytes = True

    def load(self, info: ModelInfo, onnx_model: bytes) -> Scorer:
        names = [feature.name for feature in info.features]
        return LocalScorer(load_model(info.name, info.version, onnx_model, names))


@dataclass(frozen=True)
class ServingModel:
    info: ModelInfo
    scorer: Scorer
    features: FeatureBuilder


@dataclass(frozen=True)
class ModelRoute:
    """The versions of one model that serve: the champion (active) and maybe a challenger."""

    champion: ServingModel | None
    challenger: ServingModel | None = None

    def pick(self, profile_id: str) -> ServingModel | None:
        if self.challenger is None or not profile_id:
            return self.champion
        share = self.challenger.info.traffic_share
        if challenger_point(self.challenger.info.name, profile_id) < share:
            return self.challenger
        return self.champion

    def versions(self) -> list[ServingModel]:
        return [entry for entry in (self.champion, self.challenger) if entry is not None]


def challenger_point(model: str, profile_id: str) -> float:
    """Where a profile falls in [0, 1) for the split of ``model``: stable across processes
    and releases (not Python's salted hash()), and independent between models."""
    digest = hashlib.sha256(f"{model}\x00{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class ScoringService:
    """Serves the active version (and challenger) of every model; reloads when another
    replica changes them."""

    def __init__(
        self,
        units: UnitOfWorkFactory,
        refresh_s: float = 2.0,
        clock: Callable[[], datetime] = utc_now,
        changes: ChangePublisher | None = None,
        on_inference: InferenceObserver | None = None,
        backend: ModelBackend | None = None,
    ) -> None:
        self._changes = changes
        self._on_inference = on_inference
        self._units = units
        self._refresh_s = refresh_s
        self._clock = clock
        self._backend: ModelBackend = backend or OnnxRuntimeBackend()
        self._routes: dict[str, ModelRoute] = {}
        self._checked_at = -float("inf")
        # Candidate tuples grouped per model (see _groups).
        self._grouped: ByIdentity[
            Sequence[ScoringCandidate],
            list[tuple[str, tuple[int, ...], tuple[ScoringCandidate, ...]]],
        ] = ByIdentity(_GROUPINGS)

    async def serving_models(self) -> dict[str, ModelRoute]:
        """The route of every model that serves, re-read from the database every refresh_s."""
        if time.monotonic() - self._checked_at < self._refresh_s:
            return self._routes
        loaded = {
            (e.info.name, e.info.version): e for r in self._routes.values() for e in r.versions()
        }
        slots: dict[str, dict[ModelStatus, ServingModel]] = {}
        async with self._units(False) as uow:
            for info in await uow.models.serving():
                current = loaded.get((info.name, info.version))
                if current is not None and current.info.checksum == info.checksum:
                    entry: ServingModel | None = replace(current, info=info)
                else:
                    entry = await self._load(uow, info)
                if entry is None:
                    # Validated at registration, so this means a changed runtime: keep the
                    # version that served before rather than none.
                    previous = self._routes.get(info.name)
                    entry = previous.champion if previous else None
                    if entry is None or info.status is not ModelStatus.ACTIVE:
                        continue
                slots.setdefault(info.name, {})[info.status] = entry
        routes = {
            name: ModelRoute(found.get(ModelStatus.ACTIVE), found.get(ModelStatus.CHALLENGER))
            for name, found in slots.items()
        }
        self._routes = routes
        self._checked_at = time.monotonic()
        return routes

    async def _load(self, uow: ScoringUnitOfWork, info: ModelInfo) -> ServingModel | None:
        data = b""
        if self._backend.needs_model_bytes:
            data = await uow.models.onnx_bytes(info.name, info.version) or b""
        try:
            return ServingModel(info, self._backend.load(info, data), FeatureBuilder(info.features))
        except (ModelValidationError, InvalidArgument) as error:
            _log.error("model failed to load", model=info.label, error=str(error))
            return None

    async def serving_model(self, name: str, version: str = "") -> ServingModel | None:
        """A version that serves (``""``: the active one), for the inference protocol."""
        route = (await self.serving_models()).get(name)
        if route is None:
            return None
        if not version:
            return route.champion
        return next((e for e in route.versions() if e.info.version == version), None)

    async def warm_up(self) -> None:
        """Load the serving models and run each once on a row of defaults before serving
        (a runtime's first inference pays for allocations the next ones reuse); not counted
        as an inference. A remote backend that cannot answer yet is left for later."""
        routes = await self.serving_models()
        scoring_input = ScoringInput(ProfileContext(profile_id=""), {}, "")
        for name, route in routes.items():
            probe = (ScoringCandidate("warm-up", name, "", "", 0.0, 1.0, 0.0),)
            for entry in route.versions():
                try:
                    await entry.scorer.predict(entry.features.matrix(scoring_input, probe))
                except ScorerUnavailable as error:
                    _log.warning("model not warmed up", model=entry.info.label, error=str(error))

    async def score_candidates(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> list[CandidateScore]:
        """P for every candidate: one batched model run per model, priors where none serves."""
        propensity, versions = await self.score_arrays(
            context, request_context, channel, candidates
        )
        return [
            CandidateScore(c.action_id, p, version, not version)
            for c, p, version in zip(candidates, propensity.tolist(), versions, strict=True)
        ]

    async def score_arrays(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> tuple[npt.NDArray[np.float64], tuple[str, ...]]:
        """``score_candidates`` as arrays aligned with ``candidates``: the propensities and
        each one's model version ("" where the prior stood in)."""
        routes = await self.serving_models()
        propensity = np.empty(len(candidates), dtype=np.float64)
        versions: list[str] = [""] * len(candidates)
        scoring_input = ScoringInput(context, request_context, channel)
        for name, indexes, group in self._groups(candidates):
            route = routes.get(name)
            entry = route.pick(context.profile_id) if route is not None else None
            scored = None
            if entry is not None:
                matrix = entry.features.matrix(scoring_input, group)
                scored = await self._predict(entry, matrix)
            if entry is None or scored is None:
                propensity[list(indexes)] = [c.prior_propensity for c in group]
                continue
            propensity[list(indexes)] = scored
            label = entry.info.label
            for index in indexes:
                versions[index] = label
        return propensity, tuple(versions)

    def _groups(
        self, candidates: Sequence[ScoringCandidate]
    ) -> list[tuple[str, tuple[int, ...], tuple[ScoringCandidate, ...]]]:
        """The candidates per model (name, their indexes, them), in order of first
        appearance; kept for a tuple passed again (the embedded shape's candidate lists)."""
        known = self._grouped.get(candidates)
        if known is not None:
            return known
        by_model: dict[str, list[int]] = {}
        for index, candidate in enumerate(candidates):
            by_model.setdefault(candidate.model, []).append(index)
        groups = [
            (name, tuple(indexes), tuple(candidates[index] for index in indexes))
            for name, indexes in by_model.items()
        ]
        if isinstance(candidates, tuple):  # immutable: safe to know again by identity
            self._grouped.put(candidates, groups)
        return groups

    async def _predict(
        self, entry: ServingModel, matrix: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float64] | None:
        started = time.perf_counter()
        try:
            propensities = await entry.scorer.predict(matrix)
        except ScorerUnavailable as error:
            _log.warning("model backend unavailable", model=entry.info.label, error=str(error))
            return None
        if self._on_inference is not None:
            elapsed_s = time.perf_counter() - started
            self._on_inference(entry.info.name, entry.info.version, elapsed_s)
        return propensities

    async def register_model(
        self,
        name: str,
        version: str,
        onnx_model: bytes,
        features: Sequence[FeatureSpec] = (),
        *,
        activate: bool = False,
    ) -> ModelInfo:
        """Validate then store a version (and activate it when asked).

        ``features`` empty = the list embedded in the file (``nextbest.features``). The
        file must load, have one float input as wide as the feature list, and give
        probabilities without NaN/inf on a probe batch; a refusal stores nothing.
        """
        problems = _identity_problems(name, version)
        problems.require(
            0 < len(onnx_model) <= MAX_MODEL_BYTES,
            "onnx_model",
            f"required, at most {MAX_MODEL_BYTES} bytes",
        )
        problems.require(
            len(features) <= MAX_FEATURES, "features", f"at most {MAX_FEATURES} features"
        )
        problems.require(
            bool(features or onnx_model),
            "features",
            f"required unless the model file embeds them ({FEATURES_KEY})",
        )
        problems.raise_if_any()
        declared = resolve_features(_features_of(onnx_model, features))
        info = ModelInfo(
            name=name,
            version=version,
            checksum=checksum(onnx_model),
            features=declared,
            status=ModelStatus.REGISTERED,
            created_at=self._clock(),
        )
        _validate(info, onnx_model)
        try:
            async with self._units(True) as uow:
                await uow.models.lock(name)
                existing = await uow.models.get(name, version)
                if existing is not None and existing.checksum != info.checksum:
                    raise FailedPrecondition(
                        f"model {info.label} is already registered with other content "
                        f"(checksum {existing.checksum[:12]}); register a new version"
                    )
                if existing is None:
                    await uow.models.add(info, onnx_model)
                if activate:
                    await uow.models.activate(name, version, self._clock())
                await uow.commit()
                stored = await uow.models.get(name, version)
        except StorageConflict:
            raise FailedPrecondition(f"model {info.label} was registered concurrently") from None
        if activate:
            await self._model_changed()
        return stored or info

    async def activate_model(self, name: str, version: str) -> ModelInfo:
        """Atomically make ``version`` the serving one; the previous one is retired."""
        _identity_problems(name, version).raise_if_any()
        async with self._units(True) as uow:
            await uow.models.lock(name)
            found = await uow.models.get(name, version)
            if found is None:
                raise NotFound(f"model {name}:{version} is not registered")
            await uow.models.activate(name, version, self._clock())
            await uow.commit()
            activated = await uow.models.get(name, version)
        await self._model_changed()
        return activated or replace(found, status=ModelStatus.ACTIVE)

    async def rollback_model(self, name: str) -> ModelInfo:
        """Re-activate the version that was active before the active one (which retires)."""
        _identity_problems(name).raise_if_any()
        async with self._units(True) as uow:
            await uow.models.lock(name)
            if not await uow.models.all(name):
                raise NotFound(f"model {name} is not registered")
            previous = await uow.models.previous(name)
            if previous is None:
                raise FailedPrecondition(
                    f"model {name} has no previously active version to roll back to"
                )
            await uow.models.activate(name, previous.version, self._clock())
            await uow.commit()
            activated = await uow.models.get(name, previous.version)
        _log.info("model rolled back", model=previous.label)
        await self._model_changed()
        return activated or replace(previous, status=ModelStatus.ACTIVE)

    async def set_challenger(self, name: str, version: str, share: float) -> ModelInfo | None:
        """Let ``version`` score ``share`` (0 < share < 1) of the profiles beside the active
        version, replacing any other challenger; share 0 ends the challenge. Returns the
        challenger as stored (None when there was no challenge to end)."""
        _identity_problems(name, version if share else None).raise_if_any()
        if not (math.isfinite(share) and 0.0 <= share < 1.0):
            raise InvalidArgument(
                FieldViolation("share", "a share of profiles in (0, 1), or 0 to end")
            )
        async with self._units(True) as uow:
            await uow.models.lock(name)
            if share == 0.0:
                ended = await uow.models.clear_challenger(name)
                await uow.commit()
                changed = await uow.models.get(name, ended.version) if ended else None
            else:
                found = await uow.models.get(name, version)
                if found is None:
                    raise NotFound(f"model {name}:{version} is not registered")
                if found.status is ModelStatus.ACTIVE:
                    raise FailedPrecondition(
                        f"model {found.label} is the active version: it cannot challenge itself"
                    )
                if not any(
                    m.status is ModelStatus.ACTIVE
                    for m in await uow.models.serving()
                    if m.name == name
                ):
                    raise FailedPrecondition(
                        f"model {name} has no active version to challenge; activate one first"
                    )
                await uow.models.set_challenger(name, version, share)
                await uow.commit()
                changed = await uow.models.get(name, version)
        if changed is not None:
            _log.info("model challenger", model=changed.label, share=changed.traffic_share)
            await self._model_changed()
        return changed

    async def _model_changed(self) -> None:
        # This replica reloads at once; the others within refresh_s, and the change feed
        # makes decision streams re-decide.
        self._checked_at = -float("inf")
        if self._changes is not None:
            await asyncio.sleep(0)
            await self._changes.publish([ALL])

    async def list_models(self, name: str = "") -> list[ModelInfo]:
        async with self._units(False) as uow:
            return await uow.models.all(name)


def _features_of(onnx_model: bytes, declared: Sequence[FeatureSpec]) -> Sequence[FeatureSpec]:
    """The declared features, else those the file embeds; both: their names must agree."""
    try:
        embedded = embedded_features(onnx_model)
    except ModelValidationError as error:
        raise InvalidArgument(FieldViolation("onnx_model", str(error))) from None
    if not declared:
        if not embedded:
            raise InvalidArgument(
                FieldViolation(
                    "features",
                    f"required: none given and the model file embeds none ({FEATURES_KEY})",
                )
            )
        return embedded
    if embedded is not None:
        given, carried = [f.name for f in declared], [f.name for f in embedded]
        if given != carried:
            raise InvalidArgument(
                FieldViolation(
                    "features",
                    f"differ from the list embedded in the model file ({FEATURES_KEY}): "
                    f"{carried}; give the same names in the same order, or none",
                )
            )
    return declared


def _validate(info: ModelInfo, onnx_model: bytes) -> None:
    FeatureBuilder(info.features)
    names = [feature.name for feature in info.features]
    try:
        load_model(info.name, info.version, onnx_model, names)
    except ModelValidationError as error:
        raise InvalidArgument(FieldViolation("onnx_model", str(error))) from None


def _identity_problems(name: str, version: str | None = None) -> Violations:
    """A model's name (and version, when given) as every registry call requires them."""
    problems = Violations()
    problems.require(
        bool(_NAME.match(name)), "name", "required: lower-case letters, digits, _ . - (max 128)"
    )
    if version is not None:
        problems.require(
            bool(_VERSION.match(version)), "version", "required: letters, digits, _ . + - (max 64)"
        )
    return problems
