"""Querying the history in one command (issue 19): `list --since`, several `--status`
values, what `rollback-target` says when nothing earlier is verified, and `status`.

Histories are built through the data layer at explicit times (build_known_history in
tests/helpers.py) or through the CLI (the `history` fixture); every answer is read back
through the CLI and the public data functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import (
    History,
    assert_one_line_error,
    at,
    build_known_history,
    captured_sql,
    deploy,
    ok,
)

import deployment_tracker as dt

# --- list --since --------------------------------------------------------------


def listed_ids(db_path: Path, **filters: Any) -> list[str]:
    db = dt.connect(str(db_path), write=False)
    try:
        return [record["id"] for record in dt.list_deployments(db, **filters, limit=None)]
    finally:
        db.close()


def test_list_since_keeps_what_was_recorded_at_or_after_the_moment(db_path: Path) -> None:
    ids = build_known_history(db_path)
    # p4 was recorded at exactly 04-05 00:00: the start is included; s2 (04-04) is not.
    expected = [ids["p7"], ids["p6"], ids["p5"], ids["p4"]]
    assert listed_ids(db_path, since=at("04-05 00:00")) == expected
    assert listed_ids(db_path, since=at("04-05 00:01")) == expected[:3]
    assert listed_ids(db_path, since=at("04-01 00:00"), environment="staging") == [
        ids["s2"],
        ids["s1"],
    ]
    db = dt.connect(str(db_path), write=False)
    try:
        assert dt.count_deployments(db, since=at("04-05 00:00")) == 4
    finally:
        db.close()


def test_list_since_takes_a_date_through_the_cli(
    db_path: Path, cli_json: Callable[..., Any]
) -> None:
    ids = build_known_history(db_path)
    shown = cli_json("list", "--since", "2026-04-05", "--all")
    assert [record["id"] for record in shown] == [ids["p7"], ids["p6"], ids["p5"], ids["p4"]]
    # A time with a zone is the same moment in UTC: 02:00+02:00 is 04-05 00:00Z.
    zoned = cli_json("list", "--since", "2026-04-05T02:00:00+02:00", "-e", "production")
    assert [record["id"] for record in zoned] == [ids["p7"], ids["p6"], ids["p5"], ids["p4"]]


def test_list_since_takes_a_span_back_from_now(db_path: Path, cli: Callable[..., Result]) -> None:
    now = dt.utc_now()
    db = dt.connect(str(db_path), write=True)
    try:
        old = deploy(db, "staging", now - timedelta(days=5), sha="1" * 40)
        new = deploy(db, "staging", now - timedelta(hours=20), sha="2" * 40)
    finally:
        db.close()
    assert ok(cli("list", "--since", "1d", "--field", "id")) == new
    assert ok(cli("list", "--since", "1w", "--field", "id")).split() == [new, old]
    assert ok(cli("list", "--since", "12h", "--field", "id")) == ""


@pytest.mark.parametrize("bad", ["yesterday", "0d", "3x", "2999-01-01"])
def test_list_since_refuses_what_the_other_windows_refuse(
    cli: Callable[..., Result], bad: str
) -> None:
    result = cli("list", "--since", bad)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "--since", "since must be")


# --- list --status, several values ---------------------------------------------


def test_list_takes_several_statuses_in_one_query(db_path: Path) -> None:
    ids = build_known_history(db_path)
    # p2 and p7 failed; p5 was rolled back by p6.
    assert listed_ids(db_path, status=("failed", "rolled_back")) == [
        ids["p7"],
        ids["p5"],
        ids["p2"],
    ]
    assert listed_ids(db_path, status=["deployed", "failed"], environment="staging") == [ids["s2"]]
    assert listed_ids(db_path, status="rolled_back") == [ids["p5"]]
    db = dt.connect(str(db_path), write=False)
    try:
        statuses = ("failed", "rolled_back")
        (sql,) = captured_sql(db, lambda: dt.list_deployments(db, status=statuses))
        assert "status IN ('failed', 'rolled_back')" in sql
        assert dt.count_deployments(db, status=statuses, since=at("04-04 00:00")) == 2
    finally:
        db.close()


@pytest.mark.parametrize(
    "given",
    [
        ["--status", "failed,rolled_back"],
        ["--status", "failed", "--status", "rolled_back"],
        ["--status", "rolled_back, failed", "--status", "failed"],
    ],
    ids=["commas", "repeated", "both"],
)
def test_list_status_repeated_or_comma_separated(
    db_path: Path, cli_json: Callable[..., Any], given: list[str]
) -> None:
    ids = build_known_history(db_path)
    shown = cli_json("list", *given)
    assert [record["id"] for record in shown] == [ids["p7"], ids["p5"], ids["p2"]]


def test_list_status_combines_with_the_other_filters(
    db_path: Path, cli: Callable[..., Result]
) -> None:
    ids = build_known_history(db_path)
    result = cli("list", "--status", "failed,rolled_back", "--since", "2026-04-04", "--field", "id")
    assert ok(result).split() == [ids["p7"], ids["p5"]]
    result = cli("list", "-e", "staging", "--status", "verified,deployed", "--field", "id")
    assert ok(result).split() == [ids["s2"], ids["s1"]]


@pytest.mark.parametrize("bad", ["bogus", "failed,bogus", "failed,", ",", ""])
def test_a_bad_status_is_refused_while_parsing(cli: Callable[..., Result], bad: str) -> None:
    # No database exists: the value is refused before anything is opened.
    result = cli("list", "--status", "failed", "--status", bad)
    if bad == "failed,":  # an empty part is nothing, like a trailing comma in --field
        assert result.exit_code == 1
        assert_one_line_error(result.stderr, "no database")
        return
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "--status", "statuses are deployed, verified")


# --- rollback-target: when nothing earlier is verified ---------------------------


def rollback_target_error(cli: Callable[..., Result]) -> str:
    result = cli("rollback-target", "-e", "staging")
    assert result.exit_code == 1  # README: 1 is "nothing found"
    assert_one_line_error(result.stderr)
    return result.stderr.strip().removeprefix("Error: ")


def test_the_only_verified_deployment_is_the_running_one(
    cli: Callable[..., Result], history: History
) -> None:
    only = history.record("staging", verified=True)
    assert rollback_target_error(cli) == (
        f"the only verified, unblocked deployment in staging, {only}, is the one running now;"
        " nothing earlier to roll back to"
    )


def test_an_earlier_blocked_one_leaves_only_the_running_one(
    cli: Callable[..., Result], history: History
) -> None:
    earlier = history.record("staging", verified=True)
    running = history.record("staging", verified=True)
    ok(cli("block", earlier, "--reason", "bad migration"))
    assert rollback_target_error(cli).startswith(
        f"the only verified, unblocked deployment in staging, {running}, is the one running now"
    )


def test_every_verified_one_has_the_running_image(
    cli: Callable[..., Result], history: History
) -> None:
    good = history.record("staging", verified=True)
    history.record("staging", verified=False)
    history.verify(history.ids("-e", "staging")[0], "failed")
    restored = history.rollback("staging", good)  # the image of `good` again, not yet verified
    assert rollback_target_error(cli) == (
        f"every verified, unblocked deployment in staging has the image running now, {good}"
        f" (running: {restored}); nothing earlier to roll back to"
    )


def test_nothing_verified_is_still_said_so(db_path: Path, history: History) -> None:
    running = history.record("staging")
    db = dt.connect(str(db_path), write=False)
    try:
        with pytest.raises(dt.NotFound) as raised:
            dt.rollback_target(db, "staging")
    finally:
        db.close()
    assert str(raised.value) == (
        f"no verified deployment in staging to roll back to (running: {running})"
    )


# --- status ----------------------------------------------------------------------


def known_status(ids: dict[str, str]) -> list[dict[str, Any]]:
    """What `status` says of the known history (tests/helpers.py)."""
    return [
        {
            "environment": "production",
            # p7 failed at deploy; p6 (a rollback to p4) is the last verified; rolling back
            # from p7 goes to p6's image, which p4 first shipped.
            "id": ids["p7"],
            "status": "failed",
            "branch": "feature/x",
            "image_tag": ids["p7"],
            "since": "2026-04-08T00:00:00Z",
            "last_verified": ids["p6"],
            "last_verified_at": "2026-04-06T06:05:00Z",
            "rollback_target": ids["p4"],
        },
        {
            "environment": "staging",
            "id": ids["s2"],
            "status": "deployed",
            "branch": "branch_1",
            "image_tag": ids["s2"],
            "since": "2026-04-04T00:00:00Z",
            "last_verified": ids["s1"],
            "last_verified_at": "2026-04-01T23:10:00Z",
            "rollback_target": ids["s1"],
        },
    ]


def test_status_is_one_row_per_environment(db_path: Path) -> None:
    ids = build_known_history(db_path)
    db = dt.connect(str(db_path), write=False)
    try:
        assert dt.environment_status(db) == known_status(ids)
        assert dt.environment_status(db, "staging") == known_status(ids)[1:]
        assert dt.environment_status(db, "qa") == []
        # The same answers as the commands that ask one question each.
        for row in dt.environment_status(db):
            environment = row["environment"]
            assert row["id"] == dt.latest(db, environment, "any")["id"]
            assert row["last_verified"] == dt.latest(db, environment)["id"]
            assert row["rollback_target"] == dt.rollback_target(db, environment)[0]["id"]
    finally:
        db.close()


def test_status_through_the_cli(db_path: Path, cli_json: Callable[..., Any]) -> None:
    ids = build_known_history(db_path)
    assert cli_json("status") == known_status(ids)
    assert cli_json("status", "-e", "production") == known_status(ids)[:1]


def test_status_leaves_what_does_not_exist_blank(
    cli: Callable[..., Result], cli_json: Callable[..., Any], history: History
) -> None:
    only = history.record("staging")
    (row,) = cli_json("status")
    assert (row["id"], row["last_verified"], row["rollback_target"]) == (only, None, None)
    history.verify(only)
    fields = "environment,last_verified,rollback_target"
    assert ok(cli("status", "--field", fields), strip=False) == f"staging\t{only}\t\n"


def test_status_in_every_output_format(db_path: Path, cli: Callable[..., Result]) -> None:
    ids = build_known_history(db_path)
    table = ok(cli("status")).splitlines()
    assert table[0].split() == list(dt.ENVIRONMENT_STATUS_FIELDS)
    assert table[2].split() == [
        "production",
        ids["p7"],
        "failed",
        "feature/x",
        ids["p7"],
        "2026-04-08T00:00:00Z",
        ids["p6"],
        "2026-04-06T06:05:00Z",
        ids["p4"],
    ]
    csv = ok(cli("status", "-o", "csv")).splitlines()
    assert csv[0] == ",".join(dt.ENVIRONMENT_STATUS_FIELDS)
    assert csv[2].startswith(f"staging,{ids['s2']},deployed,branch_1,")
    tsv = ok(cli("status", "-o", "tsv", "--no-headers")).splitlines()
    assert [line.split("\t")[0] for line in tsv] == ["production", "staging"]
    github = ok(cli("status", "-o", "github"))
    assert github.startswith("| environment")
    assert ok(cli("status", "--json", "environment,rollback_target")) == (
        f'[\n  {{"environment": "production", "rollback_target": "{ids["p4"]}"}},\n'
        f'  {{"environment": "staging", "rollback_target": "{ids["s1"]}"}}\n]'
    )


@pytest.mark.parametrize(
    ("args", "exit_code", "fragment"),
    [
        (["status", "--field", "bogus"], 2, "fields are environment, id, status"),
        (["status", "-e", "Bad Name"], 2, "environment"),
        (["status", "-o", "nonsense"], 2, "--output"),
        (["status"], 1, "no database"),
    ],
)
def test_status_errors_are_one_line(
    cli: Callable[..., Result], args: list[str], exit_code: int, fragment: str
) -> None:
    result = cli(*args)
    assert result.exit_code == exit_code
    assert_one_line_error(result.stderr, fragment)


# -- what a rollback undoes (issue 19) --------------------------------------------------------


def test_the_preview_says_what_a_rollback_undoes(
    cli: Callable[..., Result], history: History
) -> None:
    target = history.record("staging", verified=True)
    between = history.record("staging", branch="feature/cart", verified=True)
    ok(cli("block", between, "--reason", "slow"))
    running = history.record("staging", branch="fix/typo")
    history.record("qa", verified=True)  # another environment: not undone
    text = ok(cli("rollback-target", "-e", "staging", "--preview"))
    target_sha = ok(cli("get", target, "--field", "commit_sha"))[:7]
    running_sha = ok(cli("get", running, "--field", "commit_sha"))[:7]
    lines = text.splitlines()
    assert lines[0] == f"Rolling staging back to {target} (commit {target_sha}) undoes:"
    assert [line.split()[0] for line in lines[1:-1]] == [running, between]
    assert (
        lines[-1] == f"Commits between (in a clone): git log --oneline {target_sha}..{running_sha}"
    )
    shown = json.loads(ok(cli("rollback-target", "-e", "staging", "--preview", "-o", "json")))
    assert shown["target"]["id"] == target
    assert [record["id"] for record in shown["undoes"]] == [running, between]
    assert shown["commits"] == f"{target_sha}..{running_sha}"


def test_latest_says_what_runs_when_nothing_there_is_verified(
    cli: Callable[..., Result], history: History
) -> None:
    running = history.record("production")
    result = cli("latest", "-e", "production")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: no verified deployment in production ({running}, deployed, runs there:"
        " --status any shows it)\n"
    )
    assert ok(cli("latest", "-e", "production", "--status", "any", "--field", "id")) == running
    result = cli("latest", "-e", "qa")
    assert result.stderr == "Error: no verified deployment in qa\n"
