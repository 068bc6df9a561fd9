"""`stats`: DORA figures over a known history, through the data layer and the CLI.

The history (build_known_history in tests/helpers.py) is built at explicit times; every figure
below is worked out by hand from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import NOW, SINCE, at, build_known_history, check, deploy

import deployment_tracker as dt

PRODUCTION = {
    "environment": "production",
    "since": "2026-04-01T00:00:00Z",
    "until": "2026-04-11T00:00:00Z",
    "days": 10.0,
    # p1, p2, p4, p5, p7; p0 is before the window, p3 and p6 are rollbacks.
    "deployments": 5,
    "deployments_per_day": 0.5,
    "deployments_per_week": 3.5,
    "rollbacks": 2,
    # p2 failed verification, p5 was rolled back, p7 failed to deploy.
    "change_failures": 3,
    "change_failure_rate": 0.6,
    # p2: 00:00 -> p3 verified 00:30 = 1800 s; p5: 04-06 00:00 -> p6 verified 06:05 = 21900 s.
    "restored": 2,
    "unrestored": 1,
    "time_to_restore_median_seconds": 11850,
    "time_to_restore_worst_seconds": 21900,
    # p1 7800 s, p4 15300 s, p5 2400 s (verified before it was rolled back); p2 failed.
    "lead_time_changes": 3,
    "lead_time_median_seconds": 7800,
}
STAGING = {
    **PRODUCTION,
    "environment": "staging",
    # s1 verified, s2 still unverified; neither has a commit time.
    "deployments": 2,
    "deployments_per_day": 0.2,
    "deployments_per_week": 1.4,
    "rollbacks": 0,
    "change_failures": 0,
    "change_failure_rate": 0.0,
    "restored": 0,
    "unrestored": 0,
    "time_to_restore_median_seconds": None,
    "time_to_restore_worst_seconds": None,
    "lead_time_changes": 0,
    "lead_time_median_seconds": None,
}
NOTHING = {
    "deployments": 0,
    "deployments_per_day": 0.0,
    "deployments_per_week": 0.0,
    "rollbacks": 0,
    "change_failures": 0,
    "change_failure_rate": None,
    "restored": 0,
    "unrestored": 0,
    "time_to_restore_median_seconds": None,
    "time_to_restore_worst_seconds": None,
    "lead_time_changes": 0,
    "lead_time_median_seconds": None,
}


@pytest.fixture
def known(db_path: Path) -> dict[str, str]:
    return build_known_history(db_path)


def stats(
    db_path: Path, *, since: datetime, now: datetime, environment: str | None = None
) -> list[dict[str, Any]]:
    db = dt.connect(str(db_path), write=False)
    try:
        return dt.deployment_stats(db, since=since, now=now, environment=environment)
    finally:
        db.close()


def test_every_figure_of_the_known_history(db_path: Path, known: dict[str, str]) -> None:
    assert stats(db_path, since=SINCE, now=NOW) == [PRODUCTION, STAGING]
    assert list(PRODUCTION) == list(dt.STATS_FIELDS)


def test_one_environment(db_path: Path, known: dict[str, str]) -> None:
    assert stats(db_path, since=SINCE, now=NOW, environment="staging") == [STAGING]


def test_the_window_decides_what_counts(db_path: Path, known: dict[str, str]) -> None:
    # From 03-29: p0 counts too (verified, no commit time).
    wider = stats(db_path, since=at("03-29 00:00"), now=NOW, environment="production")[0]
    assert (wider["deployments"], wider["change_failures"], wider["days"]) == (6, 3, 13.0)
    assert wider["change_failure_rate"] == 0.5
    # From 04-05 12:00: p5 (restored in 6h05m) and p7 (unrestored) are left.
    later = stats(db_path, since=at("04-05 12:00"), now=NOW, environment="production")[0]
    assert later["deployments"] == 2
    assert later["rollbacks"] == 1
    assert (later["restored"], later["unrestored"]) == (1, 1)
    assert later["time_to_restore_median_seconds"] == 21900
    assert later["lead_time_median_seconds"] == 2400
    # A window ending before p7: p7 is not counted.
    earlier = stats(db_path, since=SINCE, now=at("04-07 00:00"), environment="production")[0]
    assert (earlier["deployments"], earlier["change_failures"], earlier["unrestored"]) == (4, 2, 0)


def test_an_empty_window(db_path: Path, known: dict[str, str]) -> None:
    figures = stats(db_path, since=NOW - timedelta(hours=12), now=NOW)
    assert [figure["environment"] for figure in figures] == ["production", "staging"]
    for figure in figures:
        assert {key: figure[key] for key in NOTHING} == NOTHING
        assert figure["days"] == 0.5


def test_an_environment_with_no_deployments(db_path: Path, known: dict[str, str]) -> None:
    (figure,) = stats(db_path, since=SINCE, now=NOW, environment="qa")
    assert figure["environment"] == "qa"
    assert {key: figure[key] for key in NOTHING} == NOTHING


def test_a_database_with_no_deployments(db_path: Path) -> None:
    dt.connect(str(db_path), write=True).close()
    assert stats(db_path, since=SINCE, now=NOW) == []


def test_a_failure_is_restored_by_a_fix_forward_too(db_path: Path) -> None:
    db = dt.connect(str(db_path), write=True)
    first = deploy(db, "qa", "04-02 10:00", sha="1" * 40)
    check(db, first, "failed", "04-02 10:05")
    second = deploy(db, "qa", "04-02 11:00", sha="2" * 40)
    check(db, second, "failed", "04-02 11:05")
    # An unverified deployment restores nothing; the verified fix at 12:30 restores both.
    deploy(db, "qa", "04-02 12:00", sha="3" * 40)
    fix = deploy(db, "qa", "04-02 12:20", sha="4" * 40, committed="04-02 12:10")
    check(db, fix, "verified", "04-02 12:30")
    db.close()
    (figure,) = stats(db_path, since=SINCE, now=NOW)
    assert figure["change_failures"] == 2
    assert figure["change_failure_rate"] == 0.5
    # 2h30m and 1h30m.
    assert figure["time_to_restore_median_seconds"] == 7200
    assert figure["time_to_restore_worst_seconds"] == 9000
    assert figure["unrestored"] == 0
    assert figure["lead_time_median_seconds"] == 1200


def test_since_spans_and_dates() -> None:
    now = datetime(2026, 4, 11, 12, 30, tzinfo=timezone.utc)
    assert dt.parse_since("30d", now) == now - timedelta(days=30)
    assert dt.parse_since("12h", now) == now - timedelta(hours=12)
    assert dt.parse_since("2w", now) == now - timedelta(weeks=2)
    assert dt.parse_since("2026-01-01", now) == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert dt.parse_since("2026-04-11T10:00:00+02:00", now) == datetime(
        2026, 4, 11, 8, tzinfo=timezone.utc
    )
    for bad in ("yesterday", "0d", "30", "-3d", "2026-04-12", "2026-13-01"):
        with pytest.raises(dt.InvalidInput):
            dt.parse_since(bad, now)


def test_durations_for_people(db_path: Path, cli: Callable[..., Result]) -> None:
    """The table's durations: a failure per environment, restored after a known time."""
    db = dt.connect(str(db_path), write=True)
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=3)
    restores = {"e0": 0, "e1": 45, "e2": 1800, "e3": 1805, "e4": 7800, "e5": 90000}
    for environment, seconds in restores.items():
        failed = deploy(db, environment, start, branch=environment, sha="1" * 40)
        check(db, failed, "failed", start + timedelta(seconds=1))
        fix = deploy(
            db, environment, start + timedelta(seconds=2), branch=environment, sha="2" * 40
        )
        check(db, fix, "verified", start + timedelta(seconds=seconds))
    deploy(db, "e6", start, sha="3" * 40)  # nothing failed: nothing to measure
    db.close()
    result = cli("stats", "--since", "4d", "-o", "tsv")
    assert result.exit_code == 0, result.output
    figures = {row.split("\t")[0]: row.split("\t") for row in result.stdout.splitlines()}
    worst = dt.STATS_FIELDS.index("time_to_restore_worst_seconds")
    assert [figures[name][worst] for name in (*restores, "e6")] == [
        *map(str, restores.values()),
        "",
    ]
    table = cli("stats", "--since", "4d", "-o", "plain").stdout.splitlines()
    (row,) = [line for line in table if line.startswith("time to restore, worst")]
    shown = row.removeprefix("time to restore, worst").split("  ")
    assert [cell.strip() for cell in shown if cell.strip()] == [
        "0s",
        "45s",
        "30m",
        "30m 5s",
        "2h 10m",
        "1d 1h",
        "-",
    ]


# CLI: the figures that do not depend on the window's length, since `stats` ends it now.


def test_cli_json(known: dict[str, str], cli_json: Callable[..., object]) -> None:
    figures = cli_json("stats", "--since", "2026-04-01")
    assert isinstance(figures, list)
    independent = (
        *("deployments", "rollbacks", "change_failure_rate", "unrestored"),
        *("time_to_restore_median_seconds", "lead_time_median_seconds"),
    )
    assert [{key: figure[key] for key in independent} for figure in figures] == [
        {key: expected[key] for key in independent} for expected in (PRODUCTION, STAGING)
    ]


def test_cli_table(known: dict[str, str], cli: Callable[..., Result]) -> None:
    result = cli("stats", "--since", "2026-04-01", "--environment", "production")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Deployments from 2026-04-01 00:00 to ")
    rows = {line.split("  ")[0]: line.split()[-1] for line in lines[3:]}
    assert "60% (3/5)" in result.stdout
    assert rows["rollbacks"] == "2"
    assert rows["unrestored failures"] == "1"
    assert "3h 17m" in result.stdout  # median of 30m and 6h05m
    assert "6h 5m" in result.stdout
    assert "2h 10m (n=3)" in result.stdout


def test_cli_csv_and_github(known: dict[str, str], cli: Callable[..., Result]) -> None:
    result = cli("stats", "--since", "2026-04-01", "--format", "csv")
    assert result.exit_code == 0, result.output
    header, production, _staging = result.stdout.splitlines()
    assert header.split(",") == list(dt.STATS_FIELDS)
    assert production.startswith("production,2026-04-01T00:00:00Z,")
    github = cli("stats", "--since", "2026-04-01", "--format", "github")
    assert "| change failure rate     | 60% (3/5)    | 0% (0/2)  |" in github.stdout


def test_cli_empty(db_path: Path, cli: Callable[..., Result]) -> None:
    dt.connect(str(db_path), write=True).close()
    result = cli("stats")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("(30 days)\nNo deployments recorded.\n")
    assert json.loads(cli("stats", "--format", "json").stdout) == []
    qa = json.loads(cli("stats", "--environment", "qa", "--format", "json").stdout)
    assert [figure["deployments"] for figure in qa] == [0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--since", "yesterday"), "since must be a span such as 30d"),
        (("--since", "0h"), "longer than zero"),
        (("--since", "2999-01-01"), "since must be before now"),
        (("--environment", "Prod!"), "environment must be lowercase"),
        (("--format", "yaml"), "Invalid value for '-o' / '--output' / '--format'"),
    ],
)
def test_cli_bad_input(
    known: dict[str, str], cli: Callable[..., Result], arguments: tuple[str, ...], message: str
) -> None:
    result = cli("stats", *arguments)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_cli_missing_database(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(dt.cli, ["--db", str(tmp_path / "none.db"), "stats"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: no database at ")
    assert not (tmp_path / "none.db").exists()


def test_help_states_the_definitions(cli: Callable[..., Result]) -> None:
    help_text = cli("stats", "--help").stdout
    for phrase in (
        "deployment frequency",
        "change failure rate",
        "time to restore",
        "lead time for changes",
        "not a rollback",
        "from its deployment to the next",
        "verified deployment in its environment (rollback",
        "Example:",
    ):
        assert phrase in help_text
