"""Storage of the model registry behind a repository and a unit of work."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import select, update

from libs.storage import SqlUnitOfWork, UnitOfWork
from libs.storage.session import DbSession
from services.scoring.model import FeatureSpec, ModelInfo, ModelStatus
from services.scoring.tables import ModelRow


class ModelRepository(Protocol):
    async def get(self, name: str, version: str) -> ModelInfo | None: ...
    async def onnx_bytes(self, name: str, version: str) -> bytes | None: ...
    async def add(self, info: ModelInfo, onnx_model: bytes) -> None: ...
    async def activate(self, name: str, version: str, at: datetime) -> None: ...
    async def active(self) -> list[ModelInfo]: ...
    async def all(self, name: str = "") -> list[ModelInfo]: ...


class ScoringUnitOfWork(UnitOfWork, Protocol):
    @property
    def models(self) -> ModelRepository: ...


def _info(row: ModelRow) -> ModelInfo:
    return ModelInfo(
        name=row.name,
        version=row.version,
        checksum=row.checksum,
        features=tuple(FeatureSpec(f["name"], float(f.get("default", 0.0))) for f in row.features),
        status=ModelStatus(row.status),
        created_at=row.created_at,
        activated_at=row.activated_at,
    )


_INFO_COLUMNS = (
    ModelRow.name,
    ModelRow.version,
    ModelRow.checksum,
    ModelRow.features,
    ModelRow.status,
    ModelRow.created_at,
    ModelRow.activated_at,
)


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
                features=[{"name": f.name, "default": f.default} for f in info.features],
                status=info.status.value,
                onnx_model=onnx_model,
                created_at=info.created_at,
                activated_at=info.activated_at,
            )
        )

    async def activate(self, name: str, version: str, at: datetime) -> None:
        """Retire the serving version and activate this one, in the caller's transaction."""
        await self._session.execute(
            update(ModelRow)
            .where(ModelRow.name == name, ModelRow.status == ModelStatus.ACTIVE.value)
            .values(status=ModelStatus.RETIRED.value)
        )
        await self._session.execute(
            update(ModelRow)
            .where(ModelRow.name == name, ModelRow.version == version)
            .values(status=ModelStatus.ACTIVE.value, activated_at=at)
        )

    async def active(self) -> list[ModelInfo]:
        return await self._infos(ModelRow.status == ModelStatus.ACTIVE.value)

    async def all(self, name: str = "") -> list[ModelInfo]:
        return await self._infos(*([ModelRow.name == name] if name else []))


class SqlScoringUnitOfWork(SqlUnitOfWork):
    models: SqlModelRepository

    def _open(self) -> None:
        self.models = SqlModelRepository(self.session)
