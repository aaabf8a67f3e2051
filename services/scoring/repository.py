"""Storage of the model registry behind a repository and a unit of work."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select, update

from libs.storage import SqlUnitOfWork, UnitOfWork
from libs.storage.session import DbSession
from services.scoring.model import FeatureSpec, FeatureType, ModelInfo, ModelStatus
from services.scoring.tables import ModelRow


class ModelRepository(Protocol):
    async def get(self, name: str, version: str) -> ModelInfo | None: ...
    async def onnx_bytes(self, name: str, version: str) -> bytes | None: ...
    async def add(self, info: ModelInfo, onnx_model: bytes) -> None: ...
    async def lock(self, name: str) -> None: ...
    async def activate(self, name: str, version: str, at: datetime) -> None: ...
    async def previous(self, name: str) -> ModelInfo | None: ...
    async def set_challenger(self, name: str, version: str, share: float) -> None: ...
    async def clear_challenger(self, name: str) -> ModelInfo | None: ...
    async def serving(self) -> list[ModelInfo]: ...
    async def all(self, name: str = "") -> list[ModelInfo]: ...


class ScoringUnitOfWork(UnitOfWork, Protocol):
    @property
    def models(self) -> ModelRepository: ...


def features_to_json(features: tuple[FeatureSpec, ...]) -> list[dict[str, Any]]:
    return [
        {"name": f.name, "default": f.default, **({"type": f.type.value} if f.type else {})}
        for f in features
    ]


def features_from_json(items: list[dict[str, Any]]) -> tuple[FeatureSpec, ...]:
    return tuple(
        FeatureSpec(
            f["name"],
            float(f.get("default", 0.0)),
            FeatureType(f["type"]) if f.get("type") else None,
        )
        for f in items
    )


def _info(row: ModelRow) -> ModelInfo:
    return ModelInfo(
        name=row.name,
        version=row.version,
        checksum=row.checksum,
        features=features_from_json(row.features),
        status=ModelStatus(row.status),
        created_at=row.created_at,
        activated_at=row.activated_at,
        traffic_share=float(row.traffic_share or 0.0),
    )


_INFO_COLUMNS = (
    ModelRow.name,
    ModelRow.version,
    ModelRow.checksum,
    ModelRow.features,
    ModelRow.status,
    ModelRow.created_at,
    ModelRow.activated_at,
    ModelRow.traffic_share,
)
_SERVING = (ModelStatus.ACTIVE.value, ModelStatus.CHALLENGER.value)


class SqlModelRepository:
    def __init__(self, session: DbSession) -> None:
        self._session = session

    async def _infos(self, *conditions: object) -> list[ModelInfo]:
        # Only the metadata columns: the ONNX bytes are read when a model is loaded.
        rows = await self._session.execute(
            select(*_INFO_COLUMNS).where(*conditions).order_by(ModelRow.name, ModelRow.created_at)  # type: ignore[arg-type]
        )
        return [_info(ModelRow(**row._mapping)) for row in rows]

    async def get(self, name: str, version: str) -> ModelInfo | None:
        found = await self._infos(ModelRow.name == name, ModelRow.version == version)
        return found[0] if found else None

    async def onnx_bytes(self, name: str, version: str) -> bytes | None:
        data: bytes | None = await self._session.scalar(
            select(ModelRow.onnx_model).where(ModelRow.name == name, ModelRow.version == version)
        )
        return data

    async def add(self, info: ModelInfo, onnx_model: bytes) -> None:
        self._session.add(
            ModelRow(
                name=info.name,
                version=info.version,
                checksum=info.checksum,
                features=features_to_json(info.features),
                status=info.status.value,
                onnx_model=onnx_model,
                created_at=info.created_at,
                activated_at=info.activated_at,
                traffic_share=info.traffic_share,
            )
        )

    async def lock(self, name: str) -> None:
        """Serialise status changes of one model until the transaction ends (row locks on
        PostgreSQL; SQLite has one writer anyway), so two concurrent activations cannot
        leave two active versions."""
        await self._session.execute(
            select(ModelRow.version).where(ModelRow.name == name).with_for_update()
        )

    async def _end_challenge(self, name: str) -> None:
        # Back to what it was before the challenge: retired if it ever served, else registered.
        for was_active, status in ((True, ModelStatus.RETIRED), (False, ModelStatus.REGISTERED)):
            activated_at = ModelRow.activated_at
            served = activated_at.is_not(None) if was_active else activated_at.is_(None)
            await self._session.execute(
                update(ModelRow)
                .where(ModelRow.name == name, ModelRow.status == ModelStatus.CHALLENGER.value)
                .where(served)
                .values(status=status.value, traffic_share=0.0)
            )

    async def activate(self, name: str, version: str, at: datetime) -> None:
        """Retire the serving version and activate this one, in the caller's transaction
        (a challenger that becomes active stops being the challenger)."""
        await self._session.execute(
            update(ModelRow)
            .where(ModelRow.name == name, ModelRow.status == ModelStatus.ACTIVE.value)
            .values(status=ModelStatus.RETIRED.value)
        )
        await self._session.execute(
            update(ModelRow)
            .where(ModelRow.name == name, ModelRow.version == version)
            .values(status=ModelStatus.ACTIVE.value, activated_at=at, traffic_share=0.0)
        )

    async def previous(self, name: str) -> ModelInfo | None:
        """The version that was active before the active one: of the versions not active
        now, the one activated last."""
        found = await self._infos(
            ModelRow.name == name,
            ModelRow.status != ModelStatus.ACTIVE.value,
            ModelRow.activated_at.is_not(None),
        )
        return max(found, key=lambda m: m.activated_at or m.created_at, default=None)

    async def set_challenger(self, name: str, version: str, share: float) -> None:
        await self._end_challenge(name)
        await self._session.execute(
            update(ModelRow)
            .where(ModelRow.name == name, ModelRow.version == version)
            .values(status=ModelStatus.CHALLENGER.value, traffic_share=share)
        )

    async def clear_challenger(self, name: str) -> ModelInfo | None:
        """End the challenge of ``name``; returns the former challenger (None: there was none)."""
        found = await self._infos(
            ModelRow.name == name, ModelRow.status == ModelStatus.CHALLENGER.value
        )
        await self._end_challenge(name)
        return found[0] if found else None

    async def serving(self) -> list[ModelInfo]:
        """The active version and the challenger of every model."""
        return await self._infos(ModelRow.status.in_(_SERVING))

    async def all(self, name: str = "") -> list[ModelInfo]:
        return await self._infos(*([ModelRow.name == name] if name else []))


class SqlScoringUnitOfWork(SqlUnitOfWork):
    models: SqlModelRepository

    def _open(self) -> None:
        self.models = SqlModelRepository(self.session)
