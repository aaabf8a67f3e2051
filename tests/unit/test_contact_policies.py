"""Contact policies: parsing and validation, caps, suppressions and cool-downs by scope,
channel and window boundary (fixed clock, contacts built by hand)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from libs.contracts.context import Contact
from libs.errors import Violations
from services.arbitration.contact import (
    ContactHistory,
    ContactPolicy,
    contact_block,
    contact_policy_to_document,
    merge_contact_policies,
    parse_contact_policies,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
# action -> (issue, group): two cards in one group, a loan in another group of the same
# issue, and a retention offer in another issue.
ISSUE_OF = {
    "gold_card": ("sales", "cards"),
    "silver_card": ("sales", "cards"),
    "car_loan": ("sales", "loans"),
    "retention_offer": ("retention", "offers"),
}


def parse(raw: Any) -> tuple[tuple[ContactPolicy, ...], list[tuple[str, str]]]:
    problems = Violations()
    policies = parse_contact_policies(raw, "contact_policies", problems)
    return policies, [(v.field, v.description) for v in problems.items]


def policy(text: str) -> ContactPolicy:
    policies, problems = parse([yaml.safe_load(text)])
    assert problems == []
    return policies[0]


def ago(action_id: str, kind: str, channel: str, **delta: float) -> Contact:
    return Contact(action_id, channel, kind, NOW - timedelta(**delta))


def block(
    policies: ContactPolicy | list[ContactPolicy],
    contacts: list[Contact],
    *,
    action_id: str = "gold_card",
    channel: str = "email",
    now: datetime = NOW,
) -> tuple[str, str] | None:
    issue, group = ISSUE_OF[action_id]
    # Newest first, as the context returns them.
    newest_first = sorted(contacts, key=lambda c: c.occurred_at, reverse=True)
    found = contact_block(
        policies if isinstance(policies, list) else [policies],
        action_id=action_id,
        issue=issue,
        group=group,
        issue_of=ISSUE_OF,
        contacts=newest_first,
        channel=channel,
        now=now,
    )
    # The same answer from the contacts indexed once per decision.
    indexed = contact_block(
        policies if isinstance(policies, list) else [policies],
        action_id=action_id,
        issue=issue,
        group=group,
        issue_of=ISSUE_OF,
        contacts=newest_first,
        channel=channel,
        now=now,
        history=ContactHistory(newest_first, ISSUE_OF),
    )
    assert indexed == found
    return found


AFTER_REJECT = "{name: after_reject, suppress_after: [reject, dismiss], for: 30d}"
WEEKLY_CAP = "{name: weekly_cap, max: 3, of: impression, within: 7d}"


# ---------------------------------------------------------------------------- parsing


def test_the_three_declared_kinds_parse_with_their_defaults() -> None:
    policies, problems = parse(
        yaml.safe_load(
            """
            - {name: weekly_cap, max: 3, of: impression, within: 7d, channels: same,
               only_on: [email]}
            - {name: after_reject, suppress_after: [reject, dismiss], for: 30d, scope: action}
            - {name: cool_down, suppress_after: accept, for: 14d, scope: group}
            """
        )
    )
    assert problems == []
    cap, reject, cool = policies
    assert (cap.is_cap, cap.max, cap.kinds, cap.window_s) == (True, 3, ("impression",), 7 * 86400)
    assert (cap.scope, cap.channels, cap.only_on) == ("action", "same", ("email",))
    assert (reject.is_cap, reject.kinds, reject.window) == (False, ("reject", "dismiss"), "30d")
    assert (reject.channels, reject.only_on) == ("any", ())
    assert (cool.kinds, cool.scope) == (("accept",), "group")
    # What `catalog show` prints parses back to the same policies.
    assert parse([contact_policy_to_document(p) for p in policies])[0] == policies


def test_absent_list_is_no_policy_and_a_non_list_is_refused() -> None:
    assert parse(None) == ((), [])
    assert parse({"name": "x"})[1] == [("contact_policies", "must be a list of contact policies")]


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (
            {"name": "c", "max": 3, "of": "impression", "within": "7d", "every": 2},
            ".every",
            "unknown",
        ),
        ({"name": "c", "max": -1, "of": "impression", "within": "7d"}, ".max", ">= 1"),
        ({"name": "c", "max": 0, "of": "impression", "within": "7d"}, ".max", ">= 1"),
        ({"name": "c", "max": 2.5, "of": "impression", "within": "7d"}, ".max", "integer"),
        ({"name": "c", "max": True, "of": "impression", "within": "7d"}, ".max", "integer"),
        ({"name": "c", "of": "impression", "within": "7d"}, ".max", "required"),
        ({"name": "c", "max": 3, "of": "view", "within": "7d"}, ".of", "not a contact kind"),
        ({"name": "c", "max": 3, "within": "7d"}, ".of", "required"),
        ({"name": "c", "max": 3, "of": "impression", "within": "7 days"}, ".within", "duration"),
        ({"name": "c", "max": 3, "of": "impression", "within": "0d"}, ".within", "duration"),
        ({"name": "c", "max": 3, "of": "impression", "within": "500d"}, ".within", "400d"),
        ({"name": "c", "suppress_after": "reject", "for": -5}, ".for", "duration"),
        ({"name": "c", "suppress_after": "reject"}, ".for", "duration"),
        ({"name": "c", "suppress_after": [], "for": "1d"}, ".suppress_after", "required"),
        (
            {"name": "c", "suppress_after": "reject", "for": "1d", "scope": "team"},
            ".scope",
            "one of",
        ),
        (
            {"name": "c", "suppress_after": "reject", "for": "1d", "channels": "web"},
            ".channels",
            "any",
        ),
        (
            {"name": "c", "suppress_after": "reject", "for": "1d", "only_on": "web"},
            ".only_on",
            "list",
        ),
        ({"name": "c", "max": 1, "of": "reject", "within": "1d", "for": "1d"}, "", "either"),
        ({"name": "c", "scope": "action"}, "", "declare a cap"),
        ({"name": "Bad Name", "suppress_after": "reject", "for": "1d"}, ".name", "required"),
        ({"suppress_after": "reject", "for": "1d"}, ".name", "required"),
    ],
)
def test_every_bad_field_is_named(raw: dict[str, Any], field: str, words: str) -> None:
    policies, problems = parse([raw])
    assert policies == ()
    name = raw.get("name")
    expected = f"contact_policies[0] ({name}){field}" if name else f"contact_policies[0]{field}"
    assert any(f == expected and words in d for f, d in problems), problems


def test_a_bare_on_key_gets_a_hint() -> None:
    _, problems = parse(yaml.safe_load("[{name: c, suppress_after: reject, for: 1d, on: [web]}]"))
    assert problems == [
        ("contact_policies[0] (c).True", "unknown field (write only_on: YAML reads `on` as true)")
    ]


def test_a_name_twice_at_one_level_and_a_non_mapping_are_refused() -> None:
    _, problems = parse(
        [
            {"name": "c", "suppress_after": "reject", "for": "1d"},
            {"name": "c", "suppress_after": "accept", "for": "1d"},
            "c",
        ]
    )
    assert [f for f, _ in problems] == ["contact_policies[1] (c).name", "contact_policies[2]"]


def test_an_inner_level_replaces_a_policy_of_the_same_name() -> None:
    outer = (policy(AFTER_REJECT), policy(WEEKLY_CAP))
    inner = (policy("{name: after_reject, suppress_after: reject, for: 2d}"),)
    merged = merge_contact_policies(outer, inner)
    assert [(p.name, p.window) for p in merged] == [("weekly_cap", "7d"), ("after_reject", "2d")]


# ---------------------------------------------------------------------------- suppression


def test_a_reject_on_web_suppresses_on_every_channel_until_the_period_ends() -> None:
    rule = policy(AFTER_REJECT)
    rejected = [
        ago("gold_card", "decision", "web", days=3),
        ago("gold_card", "reject", "web", days=3),
    ]
    for channel in ("email", "call_center", "web"):
        found = block(rule, rejected, channel=channel)
        assert found is not None and found[0] == "after_reject"
        assert "reject of gold_card on web" in found[1]
    # Exactly 30 days after the reject it is offered again; a second before, not yet.
    at_reject = NOW - timedelta(days=3)
    assert block(rule, rejected, now=at_reject + timedelta(days=30)) is None
    assert block(rule, rejected, now=at_reject + timedelta(days=30, seconds=-1)) is not None


def test_suppression_only_follows_its_kinds() -> None:
    rule = policy(AFTER_REJECT)
    assert block(rule, [ago("gold_card", "dismiss", "mobile", days=1)]) is not None
    assert block(rule, [ago("gold_card", "impression", "web", hours=1)]) is None
    assert block(rule, [ago("gold_card", "accept", "web", hours=1)]) is None
    assert block(rule, []) is None


def test_action_scope_does_not_reach_sibling_actions() -> None:
    rule = policy(AFTER_REJECT)
    rejected = [ago("gold_card", "reject", "web", days=1)]
    assert block(rule, rejected, action_id="gold_card") is not None
    assert block(rule, rejected, action_id="silver_card") is None


def test_group_scope_cools_down_the_whole_group_after_an_accept() -> None:
    rule = policy("{name: cool_down, suppress_after: [accept], for: 14d, scope: group}")
    accepted = [ago("gold_card", "accept", "branch", days=13)]
    found = block(rule, accepted, action_id="silver_card")
    assert found is not None and found[0] == "cool_down"
    assert "accept of gold_card on branch" in found[1]
    assert block(rule, accepted, action_id="car_loan") is None  # same issue, other group
    assert (
        block(rule, [ago("gold_card", "accept", "branch", days=14)], action_id="silver_card")
        is None
    )


def test_issue_scope_reaches_every_group_of_the_issue_only() -> None:
    rule = policy("{name: quiet, suppress_after: reject, for: 7d, scope: issue}")
    rejected = [ago("gold_card", "reject", "web", days=2)]
    assert block(rule, rejected, action_id="car_loan") is not None
    assert block(rule, rejected, action_id="retention_offer") is None


def test_contacts_about_actions_gone_from_the_catalog_count_for_their_id_only() -> None:
    group_rule = policy("{name: g, suppress_after: reject, for: 7d, scope: group}")
    assert block(group_rule, [ago("old_card", "reject", "web", days=1)]) is None
    action_rule = policy("{name: a, suppress_after: reject, for: 7d}")
    assert block(action_rule, [ago("gold_card", "reject", "web", days=1)]) is not None


def test_same_channel_only_counts_contacts_on_the_deciding_channel() -> None:
    rule = policy("{name: r, suppress_after: reject, for: 7d, channels: same}")
    rejected = [ago("gold_card", "reject", "web", days=1)]
    assert block(rule, rejected, channel="web") is not None
    assert block(rule, rejected, channel="email") is None


def test_on_limits_the_channels_where_a_policy_applies() -> None:
    rule = policy("{name: r, suppress_after: reject, for: 7d, only_on: [email, sms]}")
    rejected = [ago("gold_card", "reject", "web", days=1)]
    assert block(rule, rejected, channel="email") is not None
    assert block(rule, rejected, channel="call_center") is None


# ---------------------------------------------------------------------------- caps


def test_a_cap_blocks_at_max_contacts_within_the_window() -> None:
    rule = policy(WEEKLY_CAP)
    two = [ago("gold_card", "impression", c, days=d) for c, d in (("web", 1), ("email", 2))]
    assert block(rule, two) is None
    three = [*two, ago("gold_card", "impression", "mobile", days=6)]
    found = block(rule, three)
    assert found is not None and found[0] == "weekly_cap"
    assert found[1] == "3 impression of this action on any channel within 7d (at most 3)"


def test_a_cap_window_is_half_open() -> None:
    rule = policy(WEEKLY_CAP)
    oldest = ago("gold_card", "impression", "web", days=6)
    contacts = [
        ago("gold_card", "impression", "web", days=1),
        ago("gold_card", "impression", "web", days=2),
        oldest,
    ]
    window_end = oldest.occurred_at + timedelta(days=7)
    assert block(rule, contacts, now=window_end - timedelta(microseconds=1)) is not None
    assert block(rule, contacts, now=window_end) is None


def test_a_cap_counts_only_its_kinds() -> None:
    rule = policy("{name: c, max: 2, of: [decision, impression], within: 1d}")
    contacts = [
        ago("gold_card", "click", "web", hours=1),
        ago("gold_card", "decision", "web", hours=2),
    ]
    assert block(rule, contacts) is None
    assert block(rule, [*contacts, ago("gold_card", "impression", "web", hours=3)]) is not None


def test_cap_scopes_and_channels() -> None:
    group_same = policy(
        "{name: email_cards, max: 2, of: decision, within: 1d, scope: group, channels: same}"
    )
    contacts = [
        ago("gold_card", "decision", "email", hours=1),
        ago("silver_card", "decision", "email", hours=2),
        ago("car_loan", "decision", "email", hours=3),
    ]
    assert block(group_same, contacts, action_id="gold_card", channel="email") is not None
    assert block(group_same, contacts, action_id="gold_card", channel="web") is None
    assert block(group_same, contacts, action_id="car_loan", channel="email") is None
    issue_cap = policy("{name: sales_cap, max: 3, of: decision, within: 1d, scope: issue}")
    assert block(issue_cap, contacts, action_id="car_loan", channel="web") is not None
    assert block(issue_cap, contacts, action_id="retention_offer") is None


def test_the_first_blocking_policy_is_reported_and_history_can_be_shared() -> None:
    rules = [policy(WEEKLY_CAP), policy(AFTER_REJECT)]
    contacts = [ago("gold_card", "reject", "web", hours=1)]
    found = block(rules, contacts)
    assert found is not None and found[0] == "after_reject"
    history = ContactHistory(contacts, ISSUE_OF)
    shared = contact_block(
        rules,
        action_id="gold_card",
        issue="sales",
        group="cards",
        issue_of=ISSUE_OF,
        contacts=contacts,
        channel="email",
        now=NOW,
        history=history,
    )
    assert shared == found
