"""Arbitration's own vocabulary: the action catalog (what crosses its port, candidates,
scores and explanations, is in libs/contracts/arbitration.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from libs.contracts.arbitration import Factors
from services.arbitration.contact import ContactPolicy
from services.arbitration.policies import Rule, RulePlan, action_variable, plan_rules
from services.arbitration.volume import VolumeConstraint


@dataclass(frozen=True)
class Exploration:
    """How the served action is chosen among the contenders (see exploration.py)."""

    policy: str = "greedy"
    epsilon: float = 0.0
    pseudo_count: float = 100.0
    draws: int = 200


@dataclass(frozen=True)
class ActionDefinition:
    action_id: str
    name: str
    issue: str
    group: str
    value: float
    lever: float = 1.0
    channels: tuple[str, ...] = ()
    model: str = ""
    enabled: bool = True
    treatments: dict[str, Any] = field(default_factory=dict)
    prior_propensity: float = 0.05
    # Offered only within [valid_from, valid_until) when set.
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    # Consent purposes the customer must have granted (see docs/catalog.md).
    consent: tuple[str, ...] = ()
    # Effective engagement policies of every level, in evaluation order (kind, then
    # catalog -> issue -> group -> action); all must hold.
    rules: tuple[Rule, ...] = ()
    # C: the action's expression, else its issue's; None = 1.
    context_weight_rule: Rule | None = None
    factors: Factors = field(default_factory=Factors)
    # The author declares the action safe to offer when the customer's profile cannot be
    # read (its rules then see an empty customer); otherwise such an action is withheld.
    offer_without_profile: bool = False
    # Effective contact policies and volume constraints (catalog, issue, group, action).
    contact_policies: tuple[ContactPolicy, ...] = ()
    volume: tuple[VolumeConstraint, ...] = ()

    def offered_on(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def treatment_for(self, channel: str) -> dict[str, Any]:
        chosen = self.treatments.get(channel, self.treatments.get("default", {}))
        return dict(chosen) if isinstance(chosen, dict) else {}

    def validity_problem(self, now: datetime) -> str:
        """Why the action is outside its validity window now ("" when inside)."""
        if self.valid_from is not None and now < self.valid_from:
            return f"valid from {self.valid_from.isoformat()}"
        if self.valid_until is not None and now >= self.valid_until:
            return f"expired at {self.valid_until.isoformat()}"
        return ""

    @cached_property
    def cel_value(self) -> dict[str, Any]:
        """The ``action`` variable of CEL expressions."""
        return {
            "id": self.action_id,
            "name": self.name,
            "issue": self.issue,
            "group": self.group,
            "value": self.value,
            "lever": self.lever,
            "channels": list(self.channels),
            "model": self.model,
            "prior_propensity": self.prior_propensity,
        }

    @cached_property
    def rule_plan(self) -> RulePlan:
        """How its rules run in a decision (policies.py); made when the catalog is parsed
        (``plan_rules_with``), else at its first decision."""
        return plan_rules(self.rules, self.context_weight_rule, self.cel_value)

    def plan_rules_with(self, programs: dict[str, Any]) -> None:
        """Make ``rule_plan`` now, with the programs compiled for the catalog's other
        actions (by source): a catalog's actions share most of their programs."""
        self.__dict__["rule_plan"] = plan_rules(
            self.rules, self.context_weight_rule, self.cel_value, programs
        )


@dataclass(frozen=True)
class Catalog:
    actions: tuple[ActionDefinition, ...]
    min_priority: float = 0.0
    version: str = ""
    applied_at: datetime | None = None
    # Fallback action per "channel" or "channel/placement" (see catalog.proto).
    defaults: dict[str, str] = field(default_factory=dict)
    exploration: Exploration = field(default_factory=Exploration)
    # The validated, normalised document (what is stored, and what `catalog show` prints);
    # empty for a catalog built in code.
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Fields of the CEL ``customer``, ``action`` and ``request`` variables some rule reads
    # (None = all), and whether one reads ``now``; a catalog built in code sets none of
    # them: all of the request and ``now`` are then given to its rules.
    customer_fields: frozenset[str] | None = field(default=frozenset(), compare=False)
    action_fields: frozenset[str] | None = field(default=frozenset(), compare=False)
    request_fields: frozenset[str] | None = field(default=None, compare=False)
    uses_now: bool = field(default=True, compare=False)

    def action(self, action_id: str) -> ActionDefinition | None:
        return self.by_id.get(action_id)

    @cached_property
    def by_id(self) -> dict[str, ActionDefinition]:
        return {a.action_id: a for a in self.actions}

    @cached_property
    def cel_actions(self) -> dict[str, dict[str, Any]]:
        """The CEL ``action`` variable of every action: only the fields some rule reads."""
        return {a.action_id: action_variable(a.cel_value, self.action_fields) for a in self.actions}

    def cel_action(self, action_id: str) -> dict[str, Any]:
        return self.cel_actions[action_id]

    @cached_property
    def issue_of(self) -> dict[str, tuple[str, str]]:
        """Every action's (issue, group), for contact policies of a group or issue scope."""
        return {a.action_id: (a.issue, a.group) for a in self.actions}

    def default_for(self, channel: str, placement: str) -> str:
        return self.defaults.get(f"{channel}/{placement}", self.defaults.get(channel, ""))
