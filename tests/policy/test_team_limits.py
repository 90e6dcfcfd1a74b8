"""A team's limits: one counter per team, shared by every key of the team, whatever its tier."""

from __future__ import annotations

from typing import Any

from quotagate.auth import Principal
from quotagate.config import parse_config
from quotagate.limits import Algorithm, Calendar, InProcessStore, Limit, Limiter, Unit, Usage
from quotagate.policy import Policy

ALICE = Principal("key1", "alice", "free", None, None, team="research")
BOB = Principal("key2", "bob", "paid", None, None, team="research")
CAROL = Principal("key3", "carol", "free", None, None, team="ops")
DAVE = Principal("key4", "dave", "free", None, None)  # no team
TEAMS = {"research": {"rpm": 3, "tpd": 1000, "usd_per_day": 0.5}, "ops": {"rph": 100}}


def policy(**config: Any) -> Policy:
    return Policy(parse_config({"tiers": {"free": {"rpm": 10}, "paid": {}}, **config}))


def team_limits(policy: Policy, principal: Principal, model: str | None = "gpt-4o-mini") -> list[Limit]:
    return [limit for limit in policy.limits_for(principal, model).limits if limit.scope == "team"]


def test_keys_of_one_team_share_its_limits_whatever_their_tier() -> None:
    """Two keys of a team on different tiers get the very same team limits: one counter each."""
    p = policy(teams=TEAMS)
    alice, bob = team_limits(p, ALICE), team_limits(p, BOB)
    assert alice == bob
    assert [limit.key for limit in alice] == [
        "{team:research}:rpm:3/60",
        "{team:research}:tpd",
        "{team:research}:usd_per_day",
    ]
    assert [limit.label for limit in alice] == [
        "requests per minute (RPM) of team research",
        "tokens per day (TPD) of team research",
        "USD per day (budget) of team research",
    ]
    # The key's own tier limits stay its own.
    assert [limit.key for limit in p.limits_for(ALICE, None).limits if limit.scope == "key"] == ["{k:key1}:rpm:10/60"]


def test_team_limits_use_the_tier_shorthands_algorithms_and_calendars() -> None:
    """Rates are GCRAs, per day a calendar quota in the configured time zone, USD a micro-dollar budget."""
    p = policy(teams=TEAMS, timezone="Asia/Shanghai")
    rpm, tpd, usd = team_limits(p, ALICE)
    assert (rpm.unit, rpm.algorithm, rpm.amount, rpm.period) == (Unit.REQUESTS, Algorithm.GCRA, 3, 60.0)
    assert (tpd.unit, tpd.algorithm, tpd.calendar, tpd.timezone) == (
        Unit.TOKENS,
        Algorithm.CALENDAR,
        Calendar.DAY,
        "Asia/Shanghai",
    )
    assert (usd.unit, usd.algorithm, usd.amount) == (Unit.SPEND, Algorithm.CALENDAR, 500_000)
    applied = p.limits_for(ALICE, "gpt-4o-mini")
    assert applied.counts_tokens and applied.counts_spend


def test_other_teams_and_keys_without_a_team() -> None:
    """Another team counts apart; a key without a team, or of a team not configured, gets none."""
    p = policy(teams=TEAMS)
    [ops] = team_limits(p, CAROL)
    assert (ops.key, ops.label) == ("{team:ops}:rph:100/3600", "requests per hour (RPH) of team ops")
    assert team_limits(p, DAVE) == []
    gone = Principal("key5", "erin", "free", None, None, team="disbanded")
    assert team_limits(p, gone) == []
    assert [limit.key for limit in p.limits_for(gone, None).limits] == ["{k:key5}:rpm:10/60"]


def test_teams_alone_enable_the_policy_and_tokenizing() -> None:
    """A configuration whose only limits are a team's still limits, and tokenizes when one counts tokens."""
    bare = {"tiers": {"free": {}}}
    assert not Policy(parse_config(bare)).enabled
    requests_only = Policy(parse_config({**bare, "teams": {"research": {"rpm": 3}}}))
    assert requests_only.enabled and not requests_only.counts_tokens
    tokens = Policy(parse_config({**bare, "teams": {"research": {"tpm": 3000}}}))
    assert tokens.enabled and tokens.counts_tokens
    assert not Policy(parse_config({**bare, "teams": {"research": {}}})).enabled


def test_a_team_scoped_limit_counts_each_team() -> None:
    """limits[] with scope team: one counter per team, none for a key without a team."""
    spec = {"scope": "team", "unit": "requests", "amount": 50, "per": "minute", "algorithm": "sliding-window"}
    p = policy(limits=[{**spec, "name": "team-rpm"}])
    [alice], [bob], [carol] = (team_limits(p, who) for who in (ALICE, BOB, CAROL))
    assert alice == bob
    assert (alice.key, alice.label, alice.algorithm) == (
        "{team:research}:x:team-rpm",
        "team-rpm of team research",
        Algorithm.SLIDING_WINDOW,
    )
    assert carol.key == "{team:ops}:x:team-rpm"
    assert team_limits(p, DAVE) == []
    [unnamed] = team_limits(policy(limits=[spec]), ALICE)
    assert unnamed.label == "requests per minute of team research"


def test_match_team_restricts_any_scoped_limit() -> None:
    """match: {team: [...]} applies a limit only to keys of those teams (never to keys without one)."""
    p = policy(
        limits=[{"scope": "user", "unit": "tokens", "amount": 1000, "per": "day", "match": {"team": ["research"]}}]
    )

    def scoped(principal: Principal) -> list[str]:
        return [limit.key for limit in p.limits_for(principal, None).limits if limit.scope == "user"]

    assert len(scoped(ALICE)) == len(scoped(BOB)) == 1
    assert scoped(CAROL) == scoped(DAVE) == []


def test_a_team_name_cannot_break_the_hash_tag() -> None:
    """Braces in a team's name are replaced in its storage key (the label keeps the name)."""
    [limit] = team_limits(policy(teams={"a{b}": {"rpd": 5}}), Principal("k", "u", "free", None, None, team="a{b}"))
    assert limit.key == "{team:a(b)}:rpd" and limit.label == "requests per day (RPD) of team a{b}"


async def test_two_keys_of_a_team_draw_on_one_counter() -> None:
    """Through the limiter, the team's RPM admits its amount across both keys together."""
    p = policy(teams={"research": {"rpm": 3}}, tiers={"free": {"rpm": 10}, "paid": {"rpm": 10}})
    limiter = Limiter(InProcessStore())
    try:
        allowed = []
        for who in (ALICE, BOB, ALICE, BOB, CAROL):
            reservation = await limiter.reserve(list(p.limits_for(who, None).limits), Usage())
            allowed.append(reservation.allowed)
            if not reservation.allowed:
                assert reservation.decision.denied_by is not None
                assert reservation.decision.denied_by.limit.label == "requests per minute (RPM) of team research"
        assert allowed == [True, True, True, False, True]  # CAROL's team has no limit
    finally:
        await limiter.aclose()
