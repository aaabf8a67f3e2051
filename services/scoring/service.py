"""Scoring domain logic: the model registry and batched propensity scoring."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from libs.changes import ALL, ChangePublisher
from libs.clock import utc_now
from libs.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Violations
from libs.logging import get_logger
from libs.storage import StorageConflict
from services.context.model import ProfileContext
from services.scoring.features import FeatureBuilder, ScoringInput
from services.scoring.model import (
    CandidateScore,
    FeatureSpec,
    ModelInfo,
    ModelStatus,
    ScoringCandidate,
)
from services.scoring.repository import ScoringUnitOfWork
from services.scoring.runtime import LoadedModel, ModelValidationError, checksum, load_model

UnitOfWorkFactory = Callable[[bool], ScoringUnitOfWork]
# Told (model name, version, seconds) of each batched model run (metrics).
InferenceObserver = Callable[[str, str, float], None]
MAX_MODEL_BYTES = 64 * 1024 * 1024
MAX_FEATURES = 512
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
_log = get_logger("nextbest.scoring")


@dataclass(frozen=True)
class ServingModel:
    info: ModelInfo
    model: LoadedModel
    features: FeatureBuilder


class ScoringService:
    """Serves the active version of every model; reloads when another replica activates one."""

    def __init__(
        self,
        units: UnitOfWorkFactory,
        refresh_s: float = 2.0,
        clock: Callable[[], datetime] = utc_now,
        changes: ChangePublisher | None = None,
        on_inference: InferenceObserver | None = None,
    ) -> None:
        self._changes = changes
        self._on_inference = on_inference
        self._units = units
        self._refresh_s = refresh_s
        self._clock = clock
        self._serving: dict[str, ServingModel] = {}
        self._checked_at = -float("inf")

    async def serving_models(self) -> dict[str, ServingModel]:
        if time.monotonic() - self._checked_at < self._refresh_s:
            return self._serving
        async with self._units(False) as uow:
            active = await uow.models.active()
            serving: dict[str, ServingModel] = {}
            for info in active:
                current = self._serving.get(info.name)
                if current is not None and current.info.checksum == info.checksum:
                    serving[info.name] = current
                    continue
                data = await uow.models.onnx_bytes(info.name, info.version)
                try:
                    serving[info.name] = _serve(info, data or b"")
                except (ModelValidationError, InvalidArgument) as error:
                    # Validated at registration, so this means a changed runtime: keep the
                    # previous version serving rather than none.
                    _log.error("model failed to load", model=info.label, error=str(error))
                    if current is not None:
                        serving[info.name] = current
        self._serving = serving
        self._checked_at = time.monotonic()
        return serving

    async def score_candidates(
        self,
        context: ProfileContext,
        request_context: dict[str, Any],
        channel: str,
        candidates: Sequence[ScoringCandidate],
    ) -> list[CandidateScore]:
        """P for every candidate: one batched model run per model, priors where none serves."""
        serving = await self.serving_models()
        scores: list[CandidateScore | None] = [None] * len(candidates)
        by_model: dict[str, list[int]] = {}
        for index, candidate in enumerate(candidates):
            by_model.setdefault(candidate.model, []).append(index)
        scoring_input = ScoringInput(context, request_context, channel)
        for name, indexes in by_model.items():
            entry = serving.get(name)
            if entry is None:
                for index in indexes:
                    c = candidates[index]
                    scores[index] = CandidateScore(c.action_id, c.prior_propensity, "", True)
                continue
            group = [candidates[index] for index in indexes]
            matrix = entry.features.matrix(scoring_input, group)
            started = time.perf_counter()
            propensities = entry.model.predict(matrix)
            if self._on_inference is not None:
                elapsed_s = time.perf_counter() - started
                self._on_inference(entry.info.name, entry.info.version, elapsed_s)
            for index, propensity in zip(indexes, propensities, strict=True):
                scores[index] = CandidateScore(
                    candidates[index].action_id, float(propensity), entry.info.label
                )
        return [score for score in scores if score is not None]

    async def register_model(
        self,
        name: str,
        version: str,
        onnx_model: bytes,
        features: Sequence[FeatureSpec],
        *,
        activate: bool = False,
    ) -> ModelInfo:
        """Validate (loads, inputs match the features, outputs probabilities) then store."""
        problems = Violations()
        problems.require(
            bool(_NAME.match(name)), "name", "required: lower-case letters, digits, _ . - (max 128)"
        )
        problems.require(
            bool(_VERSION.match(version)), "version", "required: letters, digits, _ . + - (max 64)"
        )
        problems.require(
            0 < len(onnx_model) <= MAX_MODEL_BYTES,
            "onnx_model",
            f"required, at most {MAX_MODEL_BYTES} bytes",
        )
        problems.require(
            0 < len(features) <= MAX_FEATURES, "features", f"between 1 and {MAX_FEATURES} features"
        )
        problems.raise_if_any()
        info = ModelInfo(
            name=name,
            version=version,
            checksum=checksum(onnx_model),
            features=tuple(features),
            status=ModelStatus.REGISTERED,
            created_at=self._clock(),
        )
        _serve(info, onnx_model)
        try:
            async with self._units(True) as uow:
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
        self._checked_at = -float("inf")
        if activate:
            await self._model_changed()
        return stored or info

    async def activate_model(self, name: str, version: str) -> ModelInfo:
        """Atomically make ``version`` the serving one; the previous one is retired."""
        async with self._units(True) as uow:
            found = await uow.models.get(name, version)
            if found is None:
                raise NotFound(f"model {name}:{version} is not registered")
            await uow.models.activate(name, version, self._clock())
            await uow.commit()
            activated = await uow.models.get(name, version)
        self._checked_at = -float("inf")
        await self._model_changed()
        return activated or replace(found, status=ModelStatus.ACTIVE)

    async def _model_changed(self) -> None:
        # Other replicas pick the model up within refresh_s; streams re-decide after that.
        if self._changes is not None:
            await asyncio.sleep(0)
            await self._changes.publish([ALL])

    async def list_models(self, name: str = "") -> list[ModelInfo]:
        async with self._units(False) as uow:
            return await uow.models.all(name)


def _serve(info: ModelInfo, onnx_model: bytes) -> ServingModel:
    features = FeatureBuilder(info.features)
    names = [feature.name for feature in info.features]
    try:
        model = load_model(info.name, info.version, onnx_model, names)
    except ModelValidationError as error:
        raise InvalidArgument(FieldViolation("onnx_model", str(error))) from None
    return ServingModel(info, model, features)
