"""Reading and validating a catalog document (YAML or the CatalogService message)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict
from typing import Any

import yaml

from libs.errors import FieldViolation, InvalidArgument, Violations
from services.arbitration.model import ActionDefinition, Catalog

MAX_ACTIONS = 2000
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_CATALOG_KEYS = {"min_priority", "actions", "defaults"}
_ACTION_KEYS = {
    "id",
    "action_id",
    "name",
    "issue",
    "group",
    "channels",
    "value",
    "lever",
    "model",
    "enabled",
    "treatments",
    "prior_propensity",
}


def catalog_version(
    actions: tuple[ActionDefinition, ...], min_priority: float, defaults: dict[str, str]
) -> str:
    """Content hash: the same catalog applied twice has the same version."""
    body = json.dumps(
        {
            "min_priority": min_priority,
            "actions": [asdict(a) for a in actions],
            "defaults": defaults,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _number(problems: Violations, where: str, raw: Any, default: float) -> float:
    if raw is None:
        return default
    try:
        number = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
    except OverflowError:  # an integer too large for a float
        number = None
    if number is None or not math.isfinite(number):
        problems.add(where, "must be a finite number")
        return default
    return number


def parse_catalog(document: Any) -> Catalog:
    """Validate a whole catalog; every problem is reported with the action and field at fault."""
    if not isinstance(document, dict):
        raise InvalidArgument(FieldViolation("catalog", "must be a mapping with an actions list"))
    problems = Violations()
    for key in sorted(set(document) - _CATALOG_KEYS, key=str):
        problems.add(str(key), "unknown field")
    min_priority = _number(problems, "min_priority", document.get("min_priority"), 0.0)
    problems.require(min_priority >= 0, "min_priority", "must be >= 0")
    raw_actions = document.get("actions")
    if not isinstance(raw_actions, list) or not raw_actions:
        problems.add("actions", "must be a non-empty list")
        raw_actions = []
    problems.require(len(raw_actions) <= MAX_ACTIONS, "actions", f"at most {MAX_ACTIONS} actions")
    actions: list[ActionDefinition] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_actions[:MAX_ACTIONS]):
        where = f"actions[{index}]"
        if not isinstance(raw, dict):
            problems.add(where, "must be a mapping")
            continue
        action_id = str(raw.get("id", raw.get("action_id", "")))
        if action_id:
            where = f"actions[{index}] ({action_id})"
        for key in sorted(set(raw) - _ACTION_KEYS, key=str):
            problems.add(f"{where}.{key}", "unknown field")
        if not _ID.match(action_id):
            problems.add(f"{where}.id", "required: lower-case letters, digits, _ . - (max 128)")
        elif action_id in seen:
            problems.add(f"{where}.id", "duplicated action id")
        seen.add(action_id)
        issue = str(raw.get("issue", ""))
        problems.require(bool(_ID.match(issue)), f"{where}.issue", "required, an identifier")
        group = str(raw.get("group", "default"))
        problems.require(bool(_ID.match(group)), f"{where}.group", "must be an identifier")
        value = _number(problems, f"{where}.value", raw.get("value"), 0.0)
        problems.require(value > 0, f"{where}.value", "required, > 0")
        lever = _number(problems, f"{where}.lever", raw.get("lever"), 1.0)
        problems.require(lever >= 0, f"{where}.lever", "must be >= 0")
        prior = _number(problems, f"{where}.prior_propensity", raw.get("prior_propensity"), 0.05)
        problems.require(0 <= prior <= 1, f"{where}.prior_propensity", "must be within [0, 1]")
        channels = raw.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            problems.add(f"{where}.channels", "must be a list of channel names")
            channels = []
        treatments = raw.get("treatments", {})
        if not isinstance(treatments, dict):
            problems.add(f"{where}.treatments", "must be a mapping of channel to content")
            treatments = {}
        enabled = raw.get("enabled", True)
        problems.require(isinstance(enabled, bool), f"{where}.enabled", "must be true or false")
        actions.append(
            ActionDefinition(
                action_id=action_id,
                name=str(raw.get("name", action_id)),
                issue=issue,
                group=group,
                value=value,
                lever=lever,
                channels=tuple(channels),
                model=str(raw.get("model", "")),
                enabled=bool(enabled),
                treatments=dict(treatments),
                prior_propensity=prior,
            )
        )
    defaults = _defaults(problems, document.get("defaults", {}), actions)
    problems.raise_if_any()
    frozen = tuple(actions)
    return Catalog(
        frozen, min_priority, catalog_version(frozen, min_priority, defaults), defaults=defaults
    )


def _defaults(problems: Violations, raw: Any, actions: list[ActionDefinition]) -> dict[str, str]:
    """``{"web": action_id, "web/home_hero": action_id}``: each an action offered there."""
    if not isinstance(raw, dict):
        problems.add("defaults", "must map a channel (or channel/placement) to an action id")
        return {}
    by_id = {action.action_id: action for action in actions}
    defaults: dict[str, str] = {}
    for key, action_id in raw.items():
        where = f"defaults.{key}"
        channel = str(key).split("/", 1)[0]
        action = by_id.get(str(action_id))
        if action is None:
            problems.add(where, f"{action_id!r} is not an action of this catalog")
        elif not action.offered_on(channel):
            problems.add(where, f"{action_id!r} is not offered on {channel!r}")
        else:
            defaults[str(key)] = action.action_id
    return defaults


def parse_catalog_yaml(text: str) -> Catalog:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidArgument(FieldViolation("catalog", f"not valid YAML: {error}")) from None
    return parse_catalog(document)


def catalog_to_document(catalog: Catalog) -> dict[str, Any]:
    """The inverse of parse_catalog (what `nextbest catalog show` prints)."""
    return {
        "min_priority": catalog.min_priority,
        "defaults": dict(catalog.defaults),
        "actions": [
            {
                "id": a.action_id,
                "name": a.name,
                "issue": a.issue,
                "group": a.group,
                "channels": list(a.channels),
                "value": a.value,
                "lever": a.lever,
                "model": a.model,
                "enabled": a.enabled,
                "treatments": a.treatments,
                "prior_propensity": a.prior_propensity,
            }
            for a in catalog.actions
        ],
    }
