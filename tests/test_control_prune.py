"""Retention: `prune --keep N` removes old records but never what a rollback needs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from helpers import History, ok, row_count

import deployment_tracker as dt


def prune_ids(cli: Callable[..., Result], *args: str) -> list[str]:
    result = cli("prune", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return [record["id"] for record in json.loads(result.stdout)]


def foreign_key_problems(db_path: Path) -> list[object]:
    db = sqlite3.connect(db_path)
    try:
        return list(db.execute("PRAGMA foreign_key_check"))
    finally:
        db.close()


def test_prune_keeps_the_newest_per_environment(
    cli: Callable[..., Result], history: History, db_path: Path
) -> None:
    staging = [history.record("staging") for _ in range(6)]
    qa = [history.record("qa") for _ in range(3)]
    removed = prune_ids(cli, "--keep", "2", "--by", "carol")
    assert removed == [qa[0], staging[3], staging[2], staging[1], staging[0]]
    assert history.ids() == [qa[2], qa[1], staging[5], staging[4]]
    assert row_count(db_path, "events") == 4
    assert foreign_key_problems(db_path) == []
    db = dt.connect(str(db_path), write=False)
    try:
        (log,) = dt.prunes(db)
    finally:
        db.close()
    assert (log["by"], log["environment"], log["keep"]) == ("carol", None, 2)
    assert (log["removed"], log["removed_events"]) == (5, 5)
    assert json.loads(log["removed_ids"]) == removed
    # Nothing more to remove: success, and no second log entry.
    result = cli("prune", "--keep", "2")
    assert result.exit_code == 0
    assert result.stderr == "removed 0 deployment(s) and 0 event(s)\n"
    assert row_count(db_path, "prunes") == 1


def test_prune_never_removes_running_verified_candidate_or_blocked(
    cli: Callable[..., Result], history: History
) -> None:
    blocked = history.record("staging", verified=True)
    ok(cli("block", "--id", blocked, "--reason", "keep as evidence"))
    old = history.record("staging")
    candidate = history.record("staging", verified=True)
    plain = history.record("staging")
    latest_verified = history.record("staging", verified=True)
    running = history.record("staging", image=latest_verified)
    # keep 0: only the protected ones stay.
    assert prune_ids(cli, "--keep", "0") == [plain, old]
    assert history.ids() == [running, latest_verified, candidate, blocked]
    assert ok(cli("rollback-target", "-e", "staging", "--field", "id")) == candidate


def test_prune_keeps_rollback_targets_transitively(
    cli: Callable[..., Result], history: History, db_path: Path
) -> None:
    first = history.record("staging")
    replaced = history.record("staging")
    rollback_1 = history.rollback("staging", first)
    broken = history.record("staging")
    broken_2 = history.record("staging")
    rollback_2 = history.rollback("staging", rollback_1)
    assert prune_ids(cli, "--keep", "1") == [broken_2, broken, replaced]
    assert history.ids() == [rollback_2, rollback_1, first]
    assert foreign_key_problems(db_path) == []


def test_prune_of_one_environment_keeps_what_another_was_promoted_from(
    cli: Callable[..., Result], history: History
) -> None:
    unused = history.record("staging")
    promoted = history.record("staging", verified=True)
    history.record("staging", verified=True)
    history.record("staging", verified=True)
    production = history.promote(promoted)
    removed = prune_ids(cli, "--keep", "1", "--environment", "staging")
    assert removed == [unused]
    assert promoted in history.ids()
    assert history.get(production)["promoted_from"] == promoted


def test_dry_run_writes_nothing_and_shows_the_same(
    cli: Callable[..., Result], history: History, db_path: Path
) -> None:
    for _ in range(5):
        history.record("staging")
    before = db_path.read_bytes()
    result = cli("prune", "--keep", "2", "--dry-run", "--format", "json")
    assert result.exit_code == 0
    assert result.stderr == "would remove 3 deployment(s) and 3 event(s)\n"
    assert db_path.read_bytes() == before
    assert len(history.ids()) == 5
    planned = [record["id"] for record in json.loads(result.stdout)]
    assert prune_ids(cli, "--keep", "2") == planned
    # The table output lists what went, with the list columns.
    history.record("staging")
    history.record("staging")
    table = ok(cli("prune", "--keep", "1", "--dry-run"))
    assert table.splitlines()[0].split()[:2] == ["id", "environment"]


def test_prune_refusals(cli: Callable[..., Result], history: History, db_path: Path) -> None:
    result = cli("prune", "--keep", "1", "--dry-run")
    assert result.exit_code == 1
    assert "no database" in result.stderr
    for args in (
        ("prune",),
        ("prune", "--keep", "-1"),
        ("prune", "--keep", "x"),
        ("prune", "--keep", "1", "--environment", "Bad Env"),
        ("prune", "--keep", "1", "--by", "\x01"),
    ):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
    assert not db_path.exists()
    history.record("staging")
    history.record("staging")
    before = db_path.read_bytes()
    for args in (("prune", "--keep", "-1"), ("prune", "--keep", "0", "-e", "Bad Env")):
        assert cli(*args).exit_code == 2
    assert db_path.read_bytes() == before
    assert len(history.ids()) == 2


def test_data_layer_prune_is_one_transaction(history: History, db_path: Path) -> None:
    for _ in range(4):
        history.record("staging")
    # A plan reads; the prune of that plan, in one transaction, removes exactly it.
    db = dt.connect(str(db_path), write=True)
    try:
        planned = dt.plan_prune(db, 1)
        assert len(planned) == 3
        # A failure inside the transaction (here: a table that refuses deletes)
        # leaves every record and event in place.
        db.execute(
            "CREATE TEMP TRIGGER refuse BEFORE DELETE ON deployments"
            " WHEN old.id = '" + planned[-1]["id"] + "' BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        with pytest.raises(sqlite3.IntegrityError):
            dt.prune(db, 1)
        assert row_count(db_path) == 4 and row_count(db_path, "events") == 4
        assert row_count(db_path, "prunes") == 0
        db.execute("DROP TRIGGER refuse")
        removed, events = dt.prune(db, 1, by="test")
        assert [r["id"] for r in removed] == [r["id"] for r in planned] and events == 3
    finally:
        db.close()
