"""Tables owned by the scoring service (the model registry)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from libs.storage import Base
from libs.storage.types import UtcDateTime


class ModelRow(Base):
    __tablename__ = "scoring_models"
    __table_args__ = (Index("ix_scoring_models_status", "status"),)

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    checksum: Mapped[str] = mapped_column(String(64))
    # [{"name": ..., "default": ..., "type": "number" | "boolean"}] in input column order.
    features: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    onnx_model: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # When it last became the active version: the latest one among the others is what a
    # rollback re-activates.
    activated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Share of profiles in (0, 1) it scores while its status is "challenger", else 0.
    traffic_share: Mapped[float] = mapped_column(Float, server_default=text("0"), default=0.0)
