"""Reading and validating a catalog document (YAML or the CatalogService message).

The document (docs/catalog.md): ``min_priority``, ``exploration``, ``defaults``, catalog-wide
``policies``/``contact_policies``/``volume``, ``issues`` (each with its policies, context
weight, factor switches and ``groups``) and ``actions``. Every problem is reported at once,
named by its place (``issues.retention.policies.eligibility``,
``actions[3] (gold_card).policies.suitability``); a bad document changes nothing.

Every CEL expression is compiled here, once; a catalog is the compiled result plus the
normalised document it came from (what is stored and re-parsed by every replica).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import yaml

from libs.contracts.arbitration import Factors
from libs.errors import FieldViolation, InvalidArgument, Violations
from services.arbitration.contact import ContactPolicy, parse_contact_policies
from services.arbitration.exploration import EPSILON_GREEDY, GREEDY, POLICIES, THOMPSON
from services.arbitration.model import ActionDefinition, Catalog, Exploration
from services.arbitration.policies import KINDS, Rule, compile_rule, merge_fields
from services.arbitration.typecheck import type_problem
from services.arbitration.volume import VolumeConstraint, parse_volume_constraints

MAX_ACTIONS = 2000
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_CATALOG_KEYS = {
    "min_priority",
    "actions",
    "defaults",
    "exploration",
    "policies",
    "contact_policies",
    "volume",
    "issues",
}
_ISSUE_KEYS = {"policies", "context_weight", "factors", "contact_policies", "volume", "groups"}
_GROUP_KEYS = {"policies", "contact_policies", "volume"}
_FACTOR_KEYS = ("propensity", "context_weight", "value", "lever")
_EXPLORATION_KEYS = {
    GREEDY: {"policy"},
    EPSILON_GREEDY: {"policy", "epsilon"},
    THOMPSON: {"policy", "pseudo_count", "draws"},
}
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
    "valid_from",
    "valid_until",
    "consent",
    "offer_without_profile",
    "policies",
    "context_weight",
    "contact_policies",
    "volume",
}


def document_version(document: dict[str, Any]) -> str:
    """Content hash of the normalised document: the same catalog has the same version."""
    body = json.dumps(document, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def json_safe(raw: Any) -> Any:
    """The value as JSON can hold it (timestamps as ISO 8601 text, keys as text)."""
    if isinstance(raw, dict):
        return {str(key): json_safe(value) for key, value in raw.items()}
    if isinstance(raw, list | tuple):
        return [json_safe(item) for item in raw]
    if isinstance(raw, datetime):
        return _aware(raw).isoformat()
    if isinstance(raw, date):
        return raw.isoformat()
    return raw


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


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


def _mapping(problems: Violations, where: str, raw: Any, keys: set[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(where, "must be a mapping")
        return {}
    prefix = f"{where}." if where else ""
    for key in sorted(set(raw) - keys, key=str):
        problems.add(f"{prefix}{key}", "unknown field")
    return raw


@dataclass(frozen=True)
class _Level:
    """What one level (catalog, issue, group) contributes to its actions."""

    rules: dict[str, Rule]
    contact: tuple[ContactPolicy, ...] = ()
    volume: tuple[VolumeConstraint, ...] = ()


def _policies(problems: Violations, where: str, raw: Any, label: str) -> dict[str, Rule]:
    """``policies: {eligibility, applicability, suitability}`` of one level, compiled."""
    here = f"{where}.policies" if where else "policies"
    rules: dict[str, Rule] = {}
    for kind, source in _mapping(problems, here, raw, set(KINDS)).items():
        if kind in KINDS:
            rule = compile_rule(source, f"{here}.{kind}", f"{kind}@{label}", problems)
            if rule is not None:
                rules[kind] = rule
    return rules


def _level(problems: Violations, where: str, raw: dict[str, Any], label: str) -> _Level:
    prefix = f"{where}." if where else ""
    return _Level(
        _policies(problems, where, raw.get("policies"), label),
        parse_contact_policies(raw.get("contact_policies"), f"{prefix}contact_policies", problems),
        parse_volume_constraints(raw.get("volume"), f"{prefix}volume", problems),
    )


def _factors(problems: Violations, where: str, raw: Any) -> Factors:
    switches = _mapping(problems, where, raw, set(_FACTOR_KEYS))
    values: dict[str, bool] = {}
    for name in _FACTOR_KEYS:
        if name in switches:
            if isinstance(switches[name], bool):
                values[name] = switches[name]
            else:
                problems.add(f"{where}.{name}", "must be true or false")
    return Factors(**values)


@dataclass(frozen=True)
class _Issue:
    level: _Level
    context_weight: Rule | None
    factors: Factors
    # None = the issue declares no groups (any group name allowed).
    groups: dict[str, _Level] | None


def _issues(problems: Violations, raw: Any) -> dict[str, _Issue] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add("issues", "must map each business issue to its settings")
        return {}
    issues: dict[str, _Issue] = {}
    for name, settings in raw.items():
        where = f"issues.{name}"
        if not isinstance(name, str) or not _ID.match(name):
            problems.add(where, "an issue name must be an identifier")
            continue
        body = _mapping(problems, where, settings if settings is not None else {}, _ISSUE_KEYS)
        weight = None
        if body.get("context_weight") is not None:
            weight = compile_rule(
                body["context_weight"],
                f"{where}.context_weight",
                f"context_weight@issue:{name}",
                problems,
            )
        groups: dict[str, _Level] | None = None
        if "groups" in body:
            groups = {}
            raw_groups = body["groups"]
            if not isinstance(raw_groups, dict):
                problems.add(f"{where}.groups", "must map each group to its settings")
                raw_groups = {}
            for group, group_settings in raw_groups.items():
                group_where = f"{where}.groups.{group}"
                if not isinstance(group, str) or not _ID.match(group):
                    problems.add(group_where, "a group name must be an identifier")
                    continue
                group_body = _mapping(
                    problems,
                    group_where,
                    group_settings if group_settings is not None else {},
                    _GROUP_KEYS,
                )
                groups[group] = _level(problems, group_where, group_body, f"group:{name}/{group}")
        issues[name] = _Issue(
            _level(problems, where, body, f"issue:{name}"),
            weight,
            _factors(problems, f"{where}.factors", body.get("factors")),
            groups,
        )
    return issues


def _exploration(problems: Violations, raw: Any) -> Exploration:
    if raw is None:
        return Exploration()
    if not isinstance(raw, dict):
        problems.add("exploration", "must be a mapping with a policy")
        return Exploration()
    policy = raw.get("policy", GREEDY)
    if policy not in POLICIES:
        problems.add("exploration.policy", f"one of {', '.join(POLICIES)}")
        return Exploration()
    _mapping(problems, "exploration", raw, _EXPLORATION_KEYS[policy])
    epsilon = _number(problems, "exploration.epsilon", raw.get("epsilon"), 0.05)
    problems.require(0 <= epsilon <= 1, "exploration.epsilon", "must be within [0, 1]")
    pseudo = _number(problems, "exploration.pseudo_count", raw.get("pseudo_count"), 100.0)
    problems.require(pseudo > 0, "exploration.pseudo_count", "must be > 0")
    draws = raw.get("draws", 200)
    if isinstance(draws, bool) or not isinstance(draws, int) or not 10 <= draws <= 100_000:
        problems.add("exploration.draws", "an integer within [10, 100000]")
        draws = 200
    if policy == EPSILON_GREEDY:
        return Exploration(policy, epsilon=epsilon)
    if policy == THOMPSON:
        return Exploration(policy, pseudo_count=pseudo, draws=draws)
    return Exploration()


def _moment(problems: Violations, where: str, raw: Any) -> datetime | None:
    """A timestamp (YAML's own, or ISO 8601 text); without a time zone it is UTC."""
    if raw is None:
        return None
    if isinstance(raw, datetime):
        return _aware(raw)
    if isinstance(raw, date):
        return datetime(raw.year, raw.month, raw.day, tzinfo=UTC)
    if isinstance(raw, str):
        try:
            return _aware(datetime.fromisoformat(raw))
        except ValueError:
            pass
    problems.add(where, "must be a timestamp such as 2026-01-01T00:00:00Z")
    return None


def parse_catalog(document: Any, *, check_types: bool = True) -> Catalog:
    """Validate a whole catalog; every problem is reported with the place at fault.
    ``check_types`` False: a stored catalog, type-checked when it was applied, is re-read
    as it is (a rule a later release would refuse still fails closed at decision time
    instead of leaving the replica without a catalog)."""
    if not isinstance(document, dict):
        raise InvalidArgument(FieldViolation("catalog", "must be a mapping with an actions list"))
    problems = Violations()
    for key in sorted(set(document) - _CATALOG_KEYS, key=str):
        problems.add(str(key), "unknown field")
    min_priority = _number(problems, "min_priority", document.get("min_priority"), 0.0)
    problems.require(min_priority >= 0, "min_priority", "must be >= 0")
    exploration = _exploration(problems, document.get("exploration"))
    top = _level(problems, "", document, "catalog")
    issues = _issues(problems, document.get("issues"))
    raw_actions = document.get("actions")
    if not isinstance(raw_actions, list) or not raw_actions:
        problems.add("actions", "must be a non-empty list")
        raw_actions = []
    problems.require(len(raw_actions) <= MAX_ACTIONS, "actions", f"at most {MAX_ACTIONS} actions")
    actions: list[ActionDefinition] = []
    normalised: list[dict[str, Any]] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_actions[:MAX_ACTIONS]):
        parsed = _action(problems, index, raw, seen, top, issues)
        if parsed is not None:
            actions.append(parsed[0])
            normalised.append(parsed[1])
    defaults = _defaults(problems, document.get("defaults", {}), actions)
    if check_types:
        _check_types(problems, top, issues, actions)
    problems.raise_if_any()
    frozen = tuple(actions)
    normal: dict[str, Any] = {
        "min_priority": min_priority,
        "defaults": defaults,
        "actions": normalised,
    }
    for key in ("exploration", "policies", "contact_policies", "volume", "issues"):
        if document.get(key) is not None:
            normal[key] = json_safe(document[key])
    rules = [rule for a in frozen for rule in a.rules]
    rules += [a.context_weight_rule for a in frozen if a.context_weight_rule is not None]
    parsed_catalog = Catalog(
        frozen,
        min_priority,
        document_version(normal),
        defaults=defaults,
        exploration=exploration,
        document=normal,
        customer_fields=merge_fields([rule.customer_fields for rule in rules]),
        action_fields=merge_fields([rule.action_fields for rule in rules]),
        request_fields=merge_fields([rule.request_fields for rule in rules]),
        uses_now=any(rule.uses_now for rule in rules),
    )
    programs: dict[str, Any] = {}
    for action in parsed_catalog.actions:  # compiled now, not in the first decision
        action.plan_rules_with(programs)
    return parsed_catalog


def _check_types(
    problems: Violations,
    top: _Level,
    issues: dict[str, _Issue] | None,
    actions: list[ActionDefinition],
) -> None:
    """Every expression of the document, once, against the declared types of its variables
    (typecheck.py), including those of an issue or group no action uses."""
    rules: list[Rule | None] = list(top.rules.values())
    for issue in (issues or {}).values():
        rules += [*issue.level.rules.values(), issue.context_weight]
        for group in (issue.groups or {}).values():
            rules += group.rules.values()
    for action in actions:
        rules += [*action.rules, action.context_weight_rule]
    seen: set[int] = set()
    for rule in rules:
        if rule is None or id(rule) in seen:
            continue
        seen.add(id(rule))
        problem = type_problem(rule)
        if problem is not None:
            problems.add(rule.where, problem)


def _action(
    problems: Violations,
    index: int,
    raw: Any,
    seen: set[str],
    top: _Level,
    issues: dict[str, _Issue] | None,
) -> tuple[ActionDefinition, dict[str, Any]] | None:
    where = f"actions[{index}]"
    if not isinstance(raw, dict):
        problems.add(where, "must be a mapping")
        return None
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
    issue_name = str(raw.get("issue", ""))
    problems.require(bool(_ID.match(issue_name)), f"{where}.issue", "required, an identifier")
    group = str(raw.get("group", "default"))
    problems.require(bool(_ID.match(group)), f"{where}.group", "must be an identifier")
    issue: _Issue | None = None
    group_level: _Level | None = None
    if issues is not None and _ID.match(issue_name):
        issue = issues.get(issue_name)
        if issue is None:
            problems.add(f"{where}.issue", f"{issue_name!r} is not declared under issues")
        elif issue.groups is not None:
            group_level = issue.groups.get(group)
            problems.require(
                group_level is not None,
                f"{where}.group",
                f"{group!r} is not a group of issues.{issue_name}",
            )
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
    valid_from = _moment(problems, f"{where}.valid_from", raw.get("valid_from"))
    valid_until = _moment(problems, f"{where}.valid_until", raw.get("valid_until"))
    if valid_from is not None and valid_until is not None:
        problems.require(
            valid_until > valid_from, f"{where}.valid_until", "must be after valid_from"
        )
    consent = raw.get("consent", [])
    if not isinstance(consent, list) or not all(
        isinstance(c, str) and _ID.match(c) for c in consent
    ):
        problems.add(f"{where}.consent", "must be a list of consent purposes (identifiers)")
        consent = []
    without_profile = raw.get("offer_without_profile", False)
    problems.require(
        isinstance(without_profile, bool),
        f"{where}.offer_without_profile",
        "must be true or false",
    )
    own = _level(problems, where, raw, f"action:{action_id}")
    weight = issue.context_weight if issue is not None else None
    if raw.get("context_weight") is not None:
        weight = compile_rule(
            raw["context_weight"],
            f"{where}.context_weight",
            f"context_weight@action:{action_id}",
            problems,
        )
    levels = [top, issue.level if issue is not None else None, group_level, own]
    present = [level for level in levels if level is not None]
    rules = tuple(level.rules[kind] for kind in KINDS for level in present if kind in level.rules)
    action = ActionDefinition(
        action_id=action_id,
        name=str(raw.get("name", action_id)),
        issue=issue_name,
        group=group,
        value=value,
        lever=lever,
        channels=tuple(channels),
        model=str(raw.get("model", "")),
        enabled=bool(enabled),
        treatments=dict(treatments),
        prior_propensity=prior,
        valid_from=valid_from,
        valid_until=valid_until,
        consent=tuple(consent),
        rules=rules,
        context_weight_rule=weight,
        factors=issue.factors if issue is not None else Factors(),
        offer_without_profile=without_profile is True,
        contact_policies=tuple(p for level in present for p in level.contact),
        volume=tuple(v for level in present for v in level.volume),
    )
    normal = _base_document(action)
    for key in ("valid_from", "valid_until"):
        moment = getattr(action, key)
        if moment is not None:
            normal[key] = moment.isoformat()
    if action.consent:
        normal["consent"] = list(action.consent)
    if action.offer_without_profile:
        normal["offer_without_profile"] = True
    for key in ("policies", "context_weight", "contact_policies", "volume"):
        if raw.get(key) is not None:
            normal[key] = json_safe(raw[key])
    return action, json_safe(normal)


def _base_document(action: ActionDefinition) -> dict[str, Any]:
    return {
        "id": action.action_id,
        "name": action.name,
        "issue": action.issue,
        "group": action.group,
        "channels": list(action.channels),
        "value": action.value,
        "lever": action.lever,
        "model": action.model,
        "enabled": action.enabled,
        "treatments": action.treatments,
        "prior_propensity": action.prior_propensity,
    }


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


# libyaml's loader when PyYAML was built with it: the pure-Python one takes seconds for a
# large document (and holds the GIL all along).
_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_catalog_yaml(text: str) -> Catalog:
    """The document as YAML (JSON is YAML too)."""
    try:
        document = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        raise InvalidArgument(FieldViolation("catalog", f"not valid YAML: {error}")) from None
    return parse_catalog(document)


def catalog_to_document(catalog: Catalog) -> dict[str, Any]:
    """The inverse of parse_catalog (what is stored and what `nextbest catalog show` prints):
    the normalised document when the catalog came from one, else built from its actions."""
    if catalog.document:
        copied: dict[str, Any] = json.loads(json.dumps(catalog.document))  # nobody alters ours
        return copied
    return {
        "min_priority": catalog.min_priority,
        "defaults": dict(catalog.defaults),
        "actions": [_base_document(a) for a in catalog.actions],
    }
