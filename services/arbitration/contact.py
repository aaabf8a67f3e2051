"""Contact policies: how often, and how soon after a reject or an accept, an action may be
offered to one customer, across channels. They read ``ProfileContext.contacts``: the
decisions served and the outcomes reported within the contact history window
(``NEXTBEST_CONTACT_HISTORY``, newest first, bounded).

Two kinds, declared as ``contact_policies`` lists at catalog, issue, group or action level:

- a cap: ``{name: weekly_cap, max: 3, of: impression, within: 7d}`` - the action is not
  offered while ``max`` contacts of those kinds or more fall within the last ``within``;
- a suppression: ``{name: after_reject, suppress_after: [reject, dismiss], for: 30d}`` -
  not offered for ``for`` after one contact of those kinds (a cool-down after ``accept``
  is the same rule).

Common fields: ``scope`` (``action``, the default: contacts about this action; ``group`` or
``issue``: about any action of its group or issue, so a reject of one card suppresses the
whole card group), ``channels`` (``any``, the default: contacts on every channel count, the
cross-channel memory of story 4; ``same``: only those on the channel deciding now) and
``only_on`` (the channels where the policy applies; empty = all; not ``on``, which YAML
reads as ``true``).

Windows are half-open, ending now: a contact at ``t`` counts while ``now - t < window``, so
an action suppressed ``for: 30d`` after a reject at ``t`` comes back at ``t + 30d`` exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from libs.config import duration_s
from libs.contracts.context import Contact, Outcome
from libs.errors import Violations
from services.arbitration.declared import open_declaration, parse_named_list

DECISION = "decision"
CONTACT_KINDS = (DECISION, *(outcome.value for outcome in Outcome))
SCOPES = ("action", "group", "issue")
CHANNEL_MODES = ("any", "same")
MAX_POLICIES = 50
# The context keeps at most 400 days of contacts (NEXTBEST_CONTACT_HISTORY).
MAX_WINDOW_S = 400 * 86400
_KEYS = {"name", "max", "of", "within", "suppress_after", "for", "scope", "channels", "only_on"}


@dataclass(frozen=True)
class ContactPolicy:
    """One declared contact policy.

    ``max`` set: a cap (at most ``max`` contacts of ``kinds`` within ``window``); None: a
    suppression (nothing for ``window`` after one contact of ``kinds``)."""

    name: str
    kinds: tuple[str, ...] = ()
    window: str = ""
    max: int | None = None
    scope: str = "action"
    channels: str = "any"
    only_on: tuple[str, ...] = ()
    window_s: int = 0

    @property
    def is_cap(self) -> bool:
        return self.max is not None

    def applies_on(self, channel: str) -> bool:
        return not self.only_on or channel in self.only_on


def _kinds(problems: Violations, where: str, raw: Any) -> tuple[str, ...]:
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values:
        problems.add(
            where, f"required: a contact kind or a list of them ({', '.join(CONTACT_KINDS)})"
        )
        return ()
    kinds: list[str] = []
    for value in values:
        if value not in CONTACT_KINDS:
            problems.add(where, f"{value!r} is not a contact kind ({', '.join(CONTACT_KINDS)})")
        elif value not in kinds:
            kinds.append(value)
    return tuple(kinds)


def _window(problems: Violations, where: str, raw: Any) -> tuple[str, int]:
    label = raw if isinstance(raw, str) else ""
    try:
        seconds = duration_s(label)
    except ValueError:
        problems.add(where, "required: a duration like 30s, 12h, 7d")
        return "", 0
    if seconds > MAX_WINDOW_S:
        problems.add(where, "at most 400d")
    return label, seconds


def _channel_names(problems: Violations, where: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(c, str) and c for c in raw):
        problems.add(where, "must be a list of channel names")
        return ()
    return tuple(raw)


def parse_contact_policy(raw: Any, where: str, problems: Violations) -> ContactPolicy | None:
    """One policy; ``where`` names it in every problem (e.g. ``contact_policies[0]``)."""
    before = len(problems.items)
    opened = open_declaration(
        raw, where, problems, keys=_KEYS, shape="name, max/of/within or suppress_after/for"
    )
    if opened is None:
        return None
    name, where = opened
    is_cap = "max" in raw or "of" in raw or "within" in raw
    is_suppression = "suppress_after" in raw or "for" in raw
    maximum: int | None = None
    kinds: tuple[str, ...] = ()
    label, seconds = "", 0
    if is_cap and is_suppression:
        problems.add(where, "either a cap (max, of, within) or a suppression (suppress_after, for)")
    elif is_cap:
        raw_max = raw.get("max")
        if isinstance(raw_max, bool) or not isinstance(raw_max, int) or raw_max < 1:
            problems.add(f"{where}.max", "required: an integer >= 1")
        else:
            maximum = raw_max
        kinds = _kinds(problems, f"{where}.of", raw.get("of"))
        label, seconds = _window(problems, f"{where}.within", raw.get("within"))
    elif is_suppression:
        kinds = _kinds(problems, f"{where}.suppress_after", raw.get("suppress_after"))
        label, seconds = _window(problems, f"{where}.for", raw.get("for"))
    else:
        problems.add(
            where, "declare a cap (max, of, within) or a suppression (suppress_after, for)"
        )
    scope = raw.get("scope", "action")
    if scope not in SCOPES:
        problems.add(f"{where}.scope", f"one of {', '.join(SCOPES)}")
    channels = raw.get("channels", "any")
    if channels not in CHANNEL_MODES:
        problems.add(f"{where}.channels", "any (contacts on every channel count) or same")
    only_on = _channel_names(problems, f"{where}.only_on", raw.get("only_on"))
    if len(problems.items) > before or not (is_cap or is_suppression):
        return None
    return ContactPolicy(
        name=str(name),
        kinds=kinds,
        window=label,
        max=maximum,
        scope=str(scope),
        channels=str(channels),
        only_on=only_on,
        window_s=seconds,
    )


def parse_contact_policies(raw: Any, where: str, problems: Violations) -> tuple[ContactPolicy, ...]:
    """Validate the ``contact_policies`` list found at ``where`` (catalog, issue, group or
    action level, e.g. ``actions[3] (gold_card).contact_policies``); every problem is added
    to ``problems`` as ``<where>[<index>] (<name>).<field>``."""
    return parse_named_list(
        raw, where, problems, parse_contact_policy, what="contact policies", limit=MAX_POLICIES
    )


def merge_contact_policies(*levels: Sequence[ContactPolicy]) -> tuple[ContactPolicy, ...]:
    """The policies of an action from the outermost level (catalog) to the innermost
    (action): a policy named like an outer one replaces it, so an action can loosen or
    tighten an inherited rule; the others add up."""
    merged: dict[str, ContactPolicy] = {}
    for level in levels:
        for policy in level:
            merged.pop(policy.name, None)
            merged[policy.name] = policy
    return tuple(merged.values())


def contact_policy_to_document(policy: ContactPolicy) -> dict[str, Any]:
    """The inverse of parse_contact_policy (for showing a stored catalog)."""
    document: dict[str, Any] = {"name": policy.name}
    if policy.max is not None:
        document.update(max=policy.max, of=list(policy.kinds), within=policy.window)
    else:
        document.update({"suppress_after": list(policy.kinds), "for": policy.window})
    document.update(scope=policy.scope, channels=policy.channels)
    if policy.only_on:
        document["only_on"] = list(policy.only_on)
    return document


class ContactHistory:
    """A profile's contacts indexed once per decision by action, group and issue, so that
    checking every candidate looks only at the contacts of its own scope."""

    def __init__(self, contacts: Sequence[Contact], issue_of: dict[str, tuple[str, str]]) -> None:
        self.by_action: dict[str, list[Contact]] = {}
        self.by_group: dict[tuple[str, str], list[Contact]] = {}
        self.by_issue: dict[str, list[Contact]] = {}
        for contact in contacts:
            self.by_action.setdefault(contact.action_id, []).append(contact)
            # Contacts about actions no longer in the catalog count for their own id only.
            where = issue_of.get(contact.action_id)
            if where is not None:
                self.by_group.setdefault(where, []).append(contact)
                self.by_issue.setdefault(where[0], []).append(contact)
        for lists in (self.by_action, self.by_group, self.by_issue):
            for listed in lists.values():
                listed.sort(key=lambda c: c.occurred_at, reverse=True)

    def concerns(self, action_id: str, issue: str, group: str) -> bool:
        """Whether any contact is about the action, its group or its issue: when none is, no
        contact policy of any scope can block it (``contact_block`` need not run)."""
        return (
            action_id in self.by_action or issue in self.by_issue or (issue, group) in self.by_group
        )

    def about(self, scope: str, action_id: str, issue: str, group: str) -> list[Contact]:
        if scope == "group":
            return self.by_group.get((issue, group), [])
        if scope == "issue":
            return self.by_issue.get(issue, [])
        return self.by_action.get(action_id, [])


def _about(
    contacts: Sequence[Contact],
    scope: str,
    action_id: str,
    issue: str,
    group: str,
    issue_of: dict[str, tuple[str, str]],
) -> list[Contact]:
    """The contacts of the scope, newest first (one scan; ContactHistory indexes once)."""
    if scope == "group":
        found = [c for c in contacts if issue_of.get(c.action_id) == (issue, group)]
    elif scope == "issue":
        found = [c for c in contacts if (issue_of.get(c.action_id) or ("",))[0] == issue]
    else:
        found = [c for c in contacts if c.action_id == action_id]
    found.sort(key=lambda c: c.occurred_at, reverse=True)
    return found


def _recent(
    contacts: Iterable[Contact], policy: ContactPolicy, channel: str, since: datetime
) -> Iterable[Contact]:
    """The contacts (newest first) of the policy's kinds and channels after ``since``."""
    for contact in contacts:
        if contact.occurred_at <= since:
            return
        if contact.kind in policy.kinds and (
            policy.channels == "any" or contact.channel == channel
        ):
            yield contact


def _describe(policy: ContactPolicy, channel: str) -> str:
    where = "any channel" if policy.channels == "any" else channel
    return f"{'/'.join(policy.kinds)} of this {policy.scope} on {where}"


def contact_block(
    policies: Sequence[ContactPolicy],
    *,
    action_id: str,
    issue: str,
    group: str,
    issue_of: dict[str, tuple[str, str]],
    contacts: Sequence[Contact],
    channel: str,
    now: datetime,
    history: ContactHistory | None = None,
) -> tuple[str, str] | None:
    """``(policy name, human reason)`` of the first policy that forbids offering the action
    now, or None. ``issue_of`` maps every catalog action id to its (issue, group), so group
    and issue scopes can count contacts about sibling actions. ``history``: the contacts
    indexed once for the whole decision (``ContactHistory(contacts, issue_of)``), which
    spares a scan of every contact per candidate and policy; without it each check scans."""
    if not policies or not contacts:
        return None
    for policy in policies:
        if not policy.applies_on(channel):
            continue
        if history is not None:
            about = history.about(policy.scope, action_id, issue, group)
        else:
            about = _about(contacts, policy.scope, action_id, issue, group, issue_of)
        if not about:
            continue
        since = now - timedelta(seconds=policy.window_s)
        if policy.max is not None:
            count = sum(1 for _ in _recent(about, policy, channel, since))
            if count >= policy.max:
                return policy.name, (
                    f"{count} {_describe(policy, channel)} within {policy.window}"
                    f" (at most {policy.max})"
                )
            continue
        last = next(iter(_recent(about, policy, channel, since)), None)
        if last is not None:
            until = last.occurred_at + timedelta(seconds=policy.window_s)
            return policy.name, (
                f"{last.kind} of {last.action_id} on {last.channel} at"
                f" {last.occurred_at.isoformat(timespec='seconds')}: {policy.scope} suppressed"
                f" for {policy.window}, until {until.isoformat(timespec='seconds')}"
            )
    return None
