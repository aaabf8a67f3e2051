"""The decision kernel: one decision's arbitration over arrays, per catalog version and channel.

A ``ChannelPlan`` is made once per (catalog, channel): the actions offered there, their
value, lever and prior as arrays with each issue's factor switches applied, which actions
share a consent requirement, which have rules, contact policies or their own context weight.
A decision (``judge``) then:

- runs each distinct CEL rule once (a catalog, issue or group rule shared by many actions is
  one execution; an action's own rules one execution each: policies.py ``RulePlan``);
- checks consent once per distinct set of purposes, contact policies only for the actions the
  customer's contacts concern, a shared context weight once for every action it covers;
- computes Priority = P x C x V x L for every candidate at once (numpy) and orders the
  eligible ones by (priority desc, action id);
- builds no explanation: ``Judgement.explanation(i)`` makes one when a caller reads it.

The order of checks, and so the rule an explanation names, is the one described in
services/arbitration/service.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from libs.contracts.arbitration import CandidateExplanation, CandidateTable, ScoredCandidate
from libs.contracts.context import PERSONALIZATION, PersonalizationLevel, ProfileContext
from libs.priority import priority_factors
from services.arbitration.contact import ContactHistory, contact_block
from services.arbitration.model import ActionDefinition, Catalog
from services.arbitration.policies import PolicyEvaluation, Rule, customer_variable

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def _epoch(moment: datetime | None, missing: float) -> float:
    return moment.timestamp() if moment is not None else missing


@dataclass(frozen=True, eq=False)
class ChannelPlan:
    """What a decision on one channel needs of one catalog, made once (see module doc)."""

    catalog: Catalog
    channel: str
    actions: tuple[ActionDefinition, ...]
    ids: tuple[str, ...]
    positions: IndexArray
    index: dict[str, int]
    # Explanations of the catalog's actions that are not offered on this channel.
    unlisted: tuple[CandidateExplanation, ...]
    value: FloatArray
    lever: FloatArray
    prior: FloatArray
    # The factors as they enter the product: V and L are 1 where switched off; P and C are
    # replaced by 1 where ``propensity_on`` / ``weight_on`` is False.
    value_used: FloatArray
    lever_used: FloatArray
    propensity_on: BoolArray
    weight_on: BoolArray
    all_propensity_on: bool
    all_weight_on: bool
    # Validity windows as epoch seconds (-inf / inf when open); None: no action has one.
    valid_from: FloatArray | None
    valid_until: FloatArray | None
    # Position of each action id in sorted order: ties of priority go to the smaller id.
    tie_rank: IndexArray
    consent_groups: tuple[tuple[tuple[str, ...], IndexArray], ...]
    ruled: tuple[int, ...]
    shared_weights: tuple[tuple[Rule, IndexArray], ...]
    own_weights: tuple[tuple[int, Rule], ...]
    contacted: tuple[int, ...]
    # Candidates per model name (scoring runs one batch per model).
    by_model: tuple[tuple[str, IndexArray], ...]
    # 0..size-1: every action of the plan as the candidates, in plan order.
    everyone: IndexArray
    # Actions whose checks read the customer (rules, context weight, consent, contact
    # policies) and that the author did not declare safe without her profile.
    needs_profile: tuple[int, ...]
    # Ids of actions with nothing to check at all (see CandidateList.unconditional).
    unconditional: frozenset[str]
    # The engagement policies of ``ruled`` in one pass: every distinct conjunction of
    # shared (catalog, issue, group) rules once, then each action's own conjunction; only
    # a candidate that fails (or whose rules need the ``action`` variable) is run rule by
    # rule to name the rule that removes it (policies.py ``PolicyEvaluation.removal``).
    shared_levels: tuple[Any, ...]
    # Per ruled action, the indexes of its shared levels (len(shared_levels) = "holds").
    level_matrix: IndexArray
    # Per ruled action: its own conjunction, None (nothing of its own), or SLOW.
    own_programs: tuple[Any, ...]

    @property
    def size(self) -> int:
        return len(self.actions)


def plan_channel(catalog: Catalog, channel: str) -> ChannelPlan:
    """The plan of ``channel``: the enabled actions offered there, in catalog order."""
    actions: list[ActionDefinition] = []
    positions: list[int] = []
    unlisted: list[CandidateExplanation] = []
    for position, action in enumerate(catalog.actions):
        if not action.enabled:
            unlisted.append(
                CandidateExplanation(action.action_id, False, "enabled", "action is disabled")
            )
        elif not action.offered_on(channel):
            unlisted.append(
                CandidateExplanation(
                    action.action_id, False, "channels", f"not offered on {channel!r}"
                )
            )
        else:
            actions.append(action)
            positions.append(position)
    n = len(actions)
    value = np.array([a.value for a in actions], dtype=np.float64)
    lever = np.array([a.lever for a in actions], dtype=np.float64)
    prior = np.array([a.prior_propensity for a in actions], dtype=np.float64)
    value_on = np.array([a.factors.value for a in actions], dtype=np.bool_)
    lever_on = np.array([a.factors.lever for a in actions], dtype=np.bool_)
    propensity_on = np.array([a.factors.propensity for a in actions], dtype=np.bool_)
    weight_on = np.array([a.factors.context_weight for a in actions], dtype=np.bool_)
    windowed = any(a.valid_from is not None or a.valid_until is not None for a in actions)
    ids = tuple(a.action_id for a in actions)
    tie_rank = np.empty(n, dtype=np.int64)
    tie_rank[np.array(sorted(range(n), key=ids.__getitem__), dtype=np.int64)] = np.arange(n)
    consent: dict[tuple[str, ...], list[int]] = {}
    ruled: list[int] = []
    shared_weights: dict[int, tuple[Rule, list[int]]] = {}
    own_weights: list[tuple[int, Rule]] = []
    contacted: list[int] = []
    by_model: dict[str, list[int]] = {}
    for i, action in enumerate(actions):
        by_model.setdefault(action.model, []).append(i)
        if action.consent:
            consent.setdefault(action.consent, []).append(i)
        if action.rules:
            ruled.append(i)
        if action.contact_policies:
            contacted.append(i)
        weighting = action.context_weight_rule if action.factors.context_weight else None
        if weighting is not None:
            # The same expression with the action's fields written in (policies.py).
            rule = action.rule_plan.weight or weighting
            if rule.uses_action:
                own_weights.append((i, rule))
            else:
                shared_weights.setdefault(id(rule), (rule, []))[1].append(i)
    shared_levels, level_matrix, own_programs = _rule_passes(actions, ruled)
    return ChannelPlan(
        catalog=catalog,
        channel=channel,
        actions=tuple(actions),
        ids=ids,
        positions=np.array(positions, dtype=np.int64),
        index={action_id: i for i, action_id in enumerate(ids)},
        unlisted=tuple(unlisted),
        value=value,
        lever=lever,
        prior=prior,
        value_used=np.where(value_on, value, 1.0),
        lever_used=np.where(lever_on, lever, 1.0),
        propensity_on=propensity_on,
        weight_on=weight_on,
        all_propensity_on=bool(propensity_on.all()),
        all_weight_on=bool(weight_on.all()),
        valid_from=np.array([_epoch(a.valid_from, -np.inf) for a in actions]) if windowed else None,
        valid_until=np.array([_epoch(a.valid_until, np.inf) for a in actions])
        if windowed
        else None,
        tie_rank=tie_rank,
        consent_groups=tuple(
            (purposes, np.array(members, dtype=np.int64)) for purposes, members in consent.items()
        ),
        ruled=tuple(ruled),
        shared_weights=tuple(
            (rule, np.array(members, dtype=np.int64)) for rule, members in shared_weights.values()
        ),
        own_weights=tuple(own_weights),
        contacted=tuple(contacted),
        everyone=np.arange(n, dtype=np.int64),
        shared_levels=shared_levels,
        level_matrix=level_matrix,
        own_programs=own_programs,
        needs_profile=tuple(i for i, a in enumerate(actions) if _needs_profile(a)),
        unconditional=frozenset(
            a.action_id
            for a in actions
            if not (a.rules or a.consent or a.contact_policies or a.volume)
            and (a.context_weight_rule is None or not a.factors.context_weight)
        ),
        by_model=tuple(
            (name, np.array(members, dtype=np.int64)) for name, members in by_model.items()
        ),
    )


# An action whose rules run one by one in ``PolicyEvaluation.removal`` (see ChannelPlan).
SLOW = object()


def _rule_passes(
    actions: Sequence[ActionDefinition], ruled: Sequence[int]
) -> tuple[tuple[Any, ...], IndexArray, tuple[Any, ...]]:
    """``ChannelPlan.shared_levels``, ``level_matrix`` and ``own_programs``."""
    level_index: dict[str, int] = {}
    programs: list[Any] = []
    rows: list[list[int]] = []
    owns: list[Any] = []
    for member in ruled:
        plan = actions[member].rule_plan
        row: list[int] = []
        for key, program in plan.shared:
            if key not in level_index:
                level_index[key] = len(programs)
                programs.append(program)
            row.append(level_index[key])
        rows.append(row)
        if not plan.combined or plan.own_uses_action:
            owns.append(SLOW)
        else:
            owns.append(plan.own)
    width = max((len(row) for row in rows), default=0) or 1
    holds = len(programs)  # the padding: an index that always holds
    matrix = np.full((len(rows), width), holds, dtype=np.int64)
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return tuple(programs), matrix, tuple(owns)


def _needs_profile(action: ActionDefinition) -> bool:
    if action.offer_without_profile:
        return False
    if action.consent or action.contact_policies:
        return True
    weight = action.context_weight_rule if action.factors.context_weight else None
    rules = (*action.rules, weight) if weight is not None else action.rules
    return any(rule.customer_fields != frozenset() for rule in rules)


PROFILE_UNREAD = (
    "profile",
    "the customer's profile could not be read: the rules, consent and contact policies "
    "that use it cannot be checked",
)


def consent_problem(purposes: Sequence[str], profile: ProfileContext) -> tuple[str, str] | None:
    """The first purpose not granted. A purpose is granted only by an explicit yes (refused
    and never asked both block: these are opt-in purposes such as marketing_email);
    ``personalization`` is her level (basic or full)."""
    for purpose in purposes:
        if purpose == PERSONALIZATION:
            if profile.personalization == PersonalizationLevel.NONE:
                return f"consent:{purpose}", "personalization level is none"
            continue
        granted = profile.consents.get(purpose)
        if granted is not True:
            said = "refused" if granted is False else "never given"
            return f"consent:{purpose}", f"consent to {purpose} {said}"
    return None


def evaluation_for(
    catalog: Catalog,
    profile: ProfileContext,
    channel: str,
    placement: str,
    request_context: dict[str, object] | None,
    now: datetime,
) -> PolicyEvaluation:
    """The CEL variables of this decision, converted once and only what rules read."""
    fields = catalog.request_fields
    request: dict[str, object] | None = None
    if fields is None or fields:
        request = {**(request_context or {}), "channel": channel, "placement": placement}
        if fields is not None:
            request = {name: value for name, value in request.items() if name in fields}
    return PolicyEvaluation(
        customer_variable(profile, catalog.customer_fields),
        request,
        now if catalog.uses_now else None,
        catalog.cel_actions,
    )


@dataclass(eq=False)
class Judgement:
    """One decision's candidates judged: arrays over ``members`` (indexes into the plan)."""

    plan: ChannelPlan
    members: IndexArray
    propensity: FloatArray
    model_versions: tuple[str, ...]
    weight: FloatArray
    priority: FloatArray
    # Candidate (index into members) -> (rule name, why).
    removals: dict[int, tuple[str, str]]
    # Eligible candidates best first (indexes into members).
    order: IndexArray
    # How many of ``order`` reach the minimum priority.
    contenders: int

    def action(self, candidate: int) -> ActionDefinition:
        return self.plan.actions[int(self.members[candidate])]

    def explanation(self, candidate: int, rank: int = 0) -> CandidateExplanation:
        """``priority_factors`` of one candidate (a removed one's priority is 0)."""
        return priority_factors(
            self.action(candidate),
            ScoredCandidate(
                self.plan.ids[int(self.members[candidate])],
                float(self.propensity[candidate]),
                self.model_versions[candidate],
            ),
            float(self.weight[candidate]),
            rank=rank,
            removal=self.removals.get(candidate),
        )

    def removed_explanations(self) -> list[CandidateExplanation]:
        return [self.explanation(candidate) for candidate in sorted(self.removals)]

    def table(self) -> CandidateTable:
        priority = self.priority.copy()
        if self.removals:
            priority[np.fromiter(self.removals, dtype=np.int64, count=len(self.removals))] = 0.0
        return CandidateTable(
            catalog_version=self.plan.catalog.version,
            action_ids=self.plan.ids
            if self.members is self.plan.everyone
            else tuple(self.plan.ids[m] for m in self.members.tolist()),
            positions=self.plan.positions[self.members],
            propensity=self.propensity,
            model_versions=self.model_versions,
            context_weight=self.weight,
            priority=priority,
            removed_by={candidate: why[0] for candidate, why in self.removals.items()},
        )


class Ranking(Sequence[CandidateExplanation]):
    """The eligible candidates of a judgement, best first, each explanation made when first
    read: an unexplained decision reads only the one served (and, when a volume cap refuses
    it, the next ones). ``length``: only the first ``length`` (the contenders)."""

    def __init__(self, judgement: Judgement, length: int | None = None) -> None:
        self._judgement = judgement
        self._order = judgement.order
        self._length = len(self._order) if length is None else length
        self._made: dict[int, CandidateExplanation] = {}

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> CandidateExplanation: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[CandidateExplanation]: ...

    def __getitem__(
        self, index: int | slice
    ) -> CandidateExplanation | Sequence[CandidateExplanation]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(self._length)))
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        made = self._made.get(index)
        if made is None:
            made = self._made[index] = self._judgement.explanation(
                int(self._order[index]), rank=index + 1
            )
        return made

    def __iter__(self) -> Iterator[CandidateExplanation]:
        return iter(self.explained())

    def explained(self) -> tuple[CandidateExplanation, ...]:
        return tuple(self[i] for i in range(self._length))

    def propensity_counts(self) -> list[bool]:
        """Per contender, whether its propensity factor is on (Thompson samples only those)."""
        plan = self._judgement.plan
        members = self._judgement.members
        return [bool(plan.propensity_on[members[c]]) for c in self._order[: self._length]]


def judge(
    plan: ChannelPlan,
    members: IndexArray,
    propensity: FloatArray,
    model_versions: tuple[str, ...],
    profile: ProfileContext,
    *,
    placement: str,
    request_context: dict[str, object] | None,
    now: datetime,
    profile_known: bool = True,
) -> Judgement:
    """Validity, consent, engagement policies, contact policies and context weights for the
    candidates ``members`` (plan indexes, aligned with ``propensity``), then P x C x V x L and
    the order of the eligible ones. ``profile_known`` False: the profile could not be read,
    and every candidate whose checks use it is removed (fails closed)."""
    catalog = plan.catalog
    n = len(members)
    full = members is plan.everyone or (
        n == plan.size and bool(np.array_equal(members, plan.everyone))
    )
    # Candidate index of each plan member in this decision (-1: not a candidate).
    where: IndexArray | None = None
    if not full:
        where = np.full(plan.size, -1, dtype=np.int64)
        where[members] = np.arange(n)
    removals: dict[int, tuple[str, str]] = {}
    weight = np.ones(n, dtype=np.float64)

    def candidate_of(member: int) -> int:
        return member if where is None else int(where[member])

    if not profile_known:
        for member in plan.needs_profile:
            candidate = candidate_of(member)
            if candidate >= 0:
                removals[candidate] = PROFILE_UNREAD
    if plan.valid_from is not None and plan.valid_until is not None:
        moment = now.timestamp()
        outside = (plan.valid_from[members] > moment) | (plan.valid_until[members] <= moment)
        for candidate in np.flatnonzero(outside).tolist():
            if candidate not in removals:
                why = plan.actions[int(members[candidate])].validity_problem(now)
                removals[candidate] = ("validity", why)
    for purposes, group in plan.consent_groups:
        refusal = consent_problem(purposes, profile)
        if refusal is None:
            continue
        for member in group.tolist():
            candidate = candidate_of(member)
            if candidate >= 0 and candidate not in removals:
                removals[candidate] = refusal
    evaluation: PolicyEvaluation | None = None
    if plan.ruled or plan.shared_weights or plan.own_weights:
        evaluation = evaluation_for(catalog, profile, plan.channel, placement, request_context, now)
    if plan.ruled:
        assert evaluation is not None
        context = evaluation.context
        holds = np.ones(len(plan.shared_levels) + 1, dtype=np.bool_)
        for level, program in enumerate(plan.shared_levels):
            try:
                holds[level] = program.execute(context) is True
            except Exception:  # the rule at fault is named below
                holds[level] = False
        levels_hold: list[bool] = np.logical_and.reduce(holds[plan.level_matrix], axis=1).tolist()
        actions = plan.actions
        owns = plan.own_programs
        for row, member in enumerate(plan.ruled):
            candidate = candidate_of(member)
            if candidate < 0 or candidate in removals:
                continue
            if levels_hold[row]:
                own = owns[row]
                if own is None:
                    continue
                if own is not SLOW:
                    try:
                        if own.execute(context) is True:
                            continue
                    except Exception:  # the rule at fault is named below
                        pass
            action = actions[member]
            removal = evaluation.removal(action.rule_plan, action.action_id)
            if removal is not None:
                removals[candidate] = removal
    if plan.contacted and profile.contacts:
        history = ContactHistory(profile.contacts, catalog.issue_of)
        for member in plan.contacted:
            candidate = candidate_of(member)
            if candidate < 0 or candidate in removals:
                continue
            action = plan.actions[member]
            if not history.concerns(action.action_id, action.issue, action.group):
                continue
            blocked = contact_block(
                action.contact_policies,
                action_id=action.action_id,
                issue=action.issue,
                group=action.group,
                issue_of=catalog.issue_of,
                contacts=profile.contacts,
                channel=plan.channel,
                now=now,
                history=history,
            )
            if blocked is not None:
                removals[candidate] = (f"contact:{blocked[0]}", blocked[1])
    if evaluation is not None:
        # Weights only for the candidates still in: a removed one keeps C = 1.
        alive = np.ones(n, dtype=np.bool_)
        if removals:
            alive[np.fromiter(removals, dtype=np.int64, count=len(removals))] = False
        for rule, group in plan.shared_weights:
            covered = group if where is None else where[group]
            covered = covered[covered >= 0]
            covered = covered[alive[covered]]
            if not len(covered):
                continue
            value, error = evaluation.weight(rule, plan.actions[int(group[0])].action_id)
            weight[covered] = value
            if error:
                for candidate in covered.tolist():
                    removals[candidate] = (_weight_name(plan, candidate, members), error)
        for member, rule in plan.own_weights:
            candidate = candidate_of(member)
            if candidate < 0 or candidate in removals:
                continue
            value, error = evaluation.weight(rule, plan.actions[member].action_id)
            weight[candidate] = value
            if error:
                removals[candidate] = (_weight_name(plan, candidate, members), error)
    used_p = (
        propensity
        if plan.all_propensity_on
        else np.where(plan.propensity_on[members], propensity, 1.0)
    )
    used_w = weight if plan.all_weight_on else np.where(plan.weight_on[members], weight, 1.0)
    priority = used_p * used_w * plan.value_used[members] * plan.lever_used[members]
    if removals:
        eligible = np.ones(n, dtype=np.bool_)
        eligible[np.fromiter(removals, dtype=np.int64, count=len(removals))] = False
        kept = np.flatnonzero(eligible)
    else:
        kept = np.arange(n, dtype=np.int64)
    kept_priority = priority[kept]
    order = kept[np.lexsort((plan.tie_rank[members[kept]], -kept_priority))]
    contenders = int(np.count_nonzero(priority[order] >= catalog.min_priority))
    return Judgement(
        plan, members, propensity, model_versions, weight, priority, removals, order, contenders
    )


def _weight_name(plan: ChannelPlan, candidate: int, members: IndexArray) -> str:
    rule = plan.actions[int(members[candidate])].context_weight_rule
    return rule.name if rule is not None else "context_weight"


def scored_arrays(
    plan: ChannelPlan, scored: Sequence[ScoredCandidate]
) -> tuple[IndexArray, FloatArray, tuple[str, ...], list[int]]:
    """Scored candidates named by id (the Prioritize RPC) as the kernel's arrays: plan
    indexes, propensities, model versions; and the positions in ``scored`` of ids the plan
    does not hold (the caller refuses or explains them)."""
    index = plan.index
    members: list[int] = []
    propensity: list[float] = []
    versions: list[str] = []
    unknown: list[int] = []
    for position, candidate in enumerate(scored):
        member = index.get(candidate.action_id)
        if member is None:
            unknown.append(position)
            continue
        members.append(member)
        propensity.append(candidate.propensity)
        versions.append(candidate.model_version)
    return (
        np.array(members, dtype=np.int64),
        np.array(propensity, dtype=np.float64),
        tuple(versions),
        unknown,
    )
