"""A model file that carries its own feature list: ONNX metadata_props "nextbest.features".

The value is the JSON list ``[{"name": ..., "type": "number" | "boolean", "default": ...}]``
in input column order, the same shape as a ``--features`` file of ``nextbest models
register``. Training code embeds it (``embed_features``), so registering needs only the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from services.scoring.model import FeatureSpec, FeatureType
from services.scoring.runtime import ModelValidationError, read_metadata

FEATURES_KEY = "nextbest.features"


def parse_feature_list(items: Any) -> tuple[FeatureSpec, ...]:
    """``[{"name", "default"?, "type"?}, ...]`` as FeatureSpecs; ValueError says what is wrong."""
    if not isinstance(items, list):
        raise ValueError("expected a JSON list of {name, type, default} objects")
    specs = []
    types = ", ".join(t.value for t in FeatureType)
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"[{index}]: expected an object with a string name")
        default = item.get("default", 0.0)
        if isinstance(default, bool) or not isinstance(default, int | float):
            raise ValueError(f"[{index}] ({item['name']}).default: expected a number")
        kind = item.get("type") or None
        if kind is not None and kind not in {t.value for t in FeatureType}:
            raise ValueError(f"[{index}] ({item['name']}).type: expected one of {types}")
        specs.append(FeatureSpec(item["name"], float(default), FeatureType(kind) if kind else None))
    return tuple(specs)


def feature_list_json(features: Sequence[FeatureSpec]) -> str:
    return json.dumps(
        [
            {"name": f.name, **({"type": f.type.value} if f.type else {}), "default": f.default}
            for f in features
        ]
    )


def embedded_features(onnx_bytes: bytes) -> tuple[FeatureSpec, ...] | None:
    """The feature list the file carries; None when it has none; ModelValidationError when
    the file cannot be read or the list is malformed."""
    text = read_metadata(onnx_bytes).get(FEATURES_KEY)
    if text is None:
        return None
    try:
        return parse_feature_list(json.loads(text))
    except ValueError as error:  # JSONDecodeError is a ValueError
        raise ModelValidationError(f"metadata {FEATURES_KEY!r} is malformed: {error}") from None


def embed_features(onnx_bytes: bytes, features: Sequence[FeatureSpec]) -> bytes:
    """The same model with ``features`` in its metadata (replacing a list it had).

    Needs the ``onnx`` package (the ``train`` extra), imported here only.
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    kept = [p for p in model.metadata_props if p.key != FEATURES_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = FEATURES_KEY, feature_list_json(features)
    data: bytes = model.SerializeToString()
    return data
