"""Blocking a deployment: marked everywhere, never picked for a rollback unless forced."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from helpers import History, captured_sql, ok, query_plan, row_count

import deployment_tracker as dt


def staging_with_three(history: History) -> tuple[str, str, str]:
    """A and B verified, C running (deployed, unverified)."""
    a = history.record("staging", verified=True)
    b = history.record("staging", verified=True)
    c = history.record("staging")
    return a, b, c


def test_block_marks_the_deployment_in_get_and_list(
    cli: Callable[..., Result], history: History
) -> None:
    a, b, _ = staging_with_three(history)
    out = ok(cli("block", "--id", b, "--reason", "corrupts uploads (#12)", "--by", "alice"))
    assert out == b

    record = history.get(b)
    assert record["blocked"] is True
    assert record["blocked_reason"] == "corrupts uploads (#12)"
    assert record["blocked_by"] == "alice"
    assert record["blocked_at"].endswith("Z")
    assert record["status"] == "verified"  # a block is not a status change
    assert [e["status"] for e in record["events"]] == ["deployed", "verified", "blocked"]
    assert record["events"][-1]["by"] == "alice"
    assert record["events"][-1]["note"] == "corrupts uploads (#12)"
    assert history.get(a)["blocked"] is False

    listed = {r["id"]: r["blocked"] for r in json.loads(ok(cli("list", "--format", "json")))}
    assert listed[b] is True and listed[a] is False
    table = ok(cli("list")).splitlines()
    assert table[0].split()[-1] == "marks"
    assert [line for line in table if "BLOCKED" in line] == [
        line for line in table if line.startswith(b)
    ]
    assert ok(cli("get", "--id", b, "--field", "blocked")) == "true"
    assert ok(cli("get", "--id", a, "--field", "blocked")) == "false"
    assert "blocked" in ok(cli("get", "--id", b))  # the event shows in the table too


def test_blocking_twice_is_a_no_op(cli: Callable[..., Result], history: History) -> None:
    a = history.record("staging", verified=True)
    ok(cli("block", "--id", a, "--reason", "first"))
    result = cli("block", "--id", a, "--reason", "second", "--by", "bob")
    assert result.exit_code == 0
    assert result.stderr == f"already blocked: {a} (first)\n"
    record = history.get(a)
    assert record["blocked_reason"] == "first"
    assert [e["status"] for e in record["events"]].count("blocked") == 1


def test_unblock_lifts_the_block_and_keeps_the_history(
    cli: Callable[..., Result], history: History
) -> None:
    a = history.record("staging", verified=True)
    ok(cli("block", "--id", a, "--reason", "suspected leak", "--by", "alice"))
    ok(cli("unblock", "--id", a, "--by", "bob", "--reason", "false alarm"))
    record = history.get(a)
    assert record["blocked"] is False
    assert record["blocked_reason"] is None and record["blocked_by"] is None
    events = record["events"]
    assert [e["status"] for e in events] == ["deployed", "verified", "blocked", "unblocked"]
    assert (events[-1]["by"], events[-1]["note"]) == ("bob", "false alarm")
    # Unblocking what is not blocked: success, nothing added.
    result = cli("unblock", "--id", a)
    assert result.exit_code == 0
    assert result.stderr == f"not blocked: {a}\n"
    assert len(history.get(a)["events"]) == 4


def test_rollback_target_skips_blocked_deployments(
    cli: Callable[..., Result], history: History
) -> None:
    a, b, _ = staging_with_three(history)
    field = ("rollback-target", "-e", "staging", "--field", "id")
    assert ok(cli(*field)) == b
    ok(cli("block", "--id", b, "--reason", "bad migration"))
    assert ok(cli(*field)) == a
    ok(cli("block", "--id", a, "--reason", "also bad"))
    result = cli(*field)
    assert result.exit_code == 1
    assert "no verified deployment in staging" in result.stderr
    ok(cli("unblock", "--id", b))
    assert ok(cli(*field)) == b


def test_rollback_target_refuses_a_blocked_id_unless_forced(
    cli: Callable[..., Result], history: History
) -> None:
    _, b, _ = staging_with_three(history)
    ok(cli("block", "--id", b, "--reason", "bad migration"))
    result = cli("rollback-target", "-e", "staging", "--id", b)
    assert result.exit_code == 1
    assert result.stderr == f"Error: deployment {b} is blocked (bad migration)\n"
    result = cli("rollback-target", "-e", "staging", b, "--force", "--field", "id")
    assert result.exit_code == 0
    assert result.stdout.strip() == b
    assert result.stderr == f"Warning: forced: deployment {b} is blocked (bad migration)\n"


def test_block_refusals_write_nothing(
    cli: Callable[..., Result], history: History, db_path: Path
) -> None:
    # Invalid input on a fresh path: exit 2 and no database is created.
    for args in (
        ("block", "--id", "not an id", "--reason", "x"),
        ("block", "not an id", "--reason", "x"),
        ("block", "--reason", "x"),
        ("block", "--id", "main_abcdef1_20260101000000", "--reason", "   "),
        ("block", "--id", "main_abcdef1_20260101000000", "--reason", "a\nb"),
        ("block", "--id", "main_abcdef1_20260101000000"),
        ("unblock", "--id", "main_abcdef1_20260101000000", "--by", ""),
    ):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert not db_path.exists()

    a = history.record("staging")
    before = db_path.read_bytes()
    result = cli("block", "--id", "main_abcdef1_20260101000000", "--reason", "x")
    assert result.exit_code == 1
    assert "no deployment with id main_abcdef1_20260101000000" in result.stderr
    assert cli("unblock", "--id", "main_abcdef1_20260101000000").exit_code == 1
    assert row_count(db_path, "events") == 1
    assert not history.get(a)["blocked"]
    assert db_path.read_bytes() == before


def test_a_retried_record_still_matches_after_a_block(
    cli: Callable[..., Result], history: History
) -> None:
    """Block events come after the first event, so `record` idempotency is unchanged."""
    deployment_id, sha = history.next_id()
    args = ("record", "-e", "staging", "-b", "main", "-c", sha, "--id", deployment_id)
    ok(cli(*args))
    ok(cli("block", "--id", deployment_id, "--reason", "flaky"))
    result = cli(*args)
    assert result.exit_code == 0
    assert result.stderr == f"already recorded: {deployment_id}\n"


def test_data_layer_block_and_unblock(db_path: Path) -> None:
    db = dt.connect(str(db_path), write=True)
    try:
        request = dt.RecordRequest(
            environment="staging", branch="main", commit_sha="d" * 40
        ).checked()
        record, _, _ = dt.record_deployment(db, request, gates=dt.parse_gates(None))
        blocked, changed = dt.block_deployment(db, record["id"], reason="bad", by="ci")
        assert changed and blocked["blocked"] and blocked["blocked_by"] == "ci"
        assert dt.get_deployment(db, record["id"]) == blocked
        assert dt.block_deployment(db, record["id"], reason="again")[1] is False
        unblocked, changed = dt.unblock_deployment(db, record["id"])
        assert changed and not unblocked["blocked"]
        assert dt.get_deployment(db, record["id"]) == unblocked
        assert dt.unblock_deployment(db, record["id"])[1] is False
        with pytest.raises(dt.NotFound):
            dt.block_deployment(db, "main_abcdef1_20260101000000", reason="x")
        # The reason is checked where it is given (the CLI's --reason), like all text.
        with pytest.raises(dt.InvalidInput, match="reason must not be empty"):
            dt.check_text("reason", " ")
    finally:
        db.close()


def test_the_rollback_and_promotion_queries_walk_an_index(history: History, db_path: Path) -> None:
    """rollback-target, promote and the gate never scan the deployments table."""
    staging = history.record("staging", verified=True)
    history.record("staging", verified=True)
    history.record("staging")
    production = history.promote(staging)
    db = dt.connect(str(db_path), write=False)
    try:
        gates = dt.parse_gates(None)
        running = dt.get_deployment(db, production)
        actions = {
            "rollback-target": lambda: dt.rollback_target(db, "staging"),
            "rollback-target ID": lambda: dt.rollback_target(db, "staging", staging),
            "promote": lambda: dt.promotion_candidate(db, "staging", "qa"),
            "promote --commit": lambda: dt.promotion_candidate(
                db, "staging", "qa", commit_sha=running["commit_sha"]
            ),
            "gate": lambda: dt.gate_objection(db, {**running, "image_tag": "x"}, gates),
        }
        for name, action in actions.items():
            statements = captured_sql(db, action)
            assert statements, name
            for sql in statements:
                steps = query_plan(db, sql)
                assert all(step.startswith("SEARCH deployments USING ") for step in steps), (
                    name,
                    sql,
                    steps,
                )
    finally:
        db.close()


def test_a_version_1_database_is_upgraded_with_nothing_blocked(
    cli: Callable[..., Result], db_path: Path
) -> None:
    db = sqlite3.connect(db_path, isolation_level=None)
    dt.MIGRATIONS[0](db)
    db.execute(f"PRAGMA application_id = {dt.APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    db.execute(
        "INSERT INTO deployments (id, environment, branch, commit_sha, image_tag, status,"
        " deployed_at) VALUES ('old_abcdef1_20250101000000', 'staging', 'old', 'abcdef1',"
        " 'old_abcdef1_20250101000000', 'verified', '2025-01-01T00:00:00Z')"
    )
    db.close()
    ok(cli("block", "--id", "old_abcdef1_20250101000000", "--reason", "pre-upgrade build"))
    records = json.loads(ok(cli("list", "--format", "json")))
    assert records[0]["blocked"] is True and records[0]["promoted_from"] is None
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(dt.MIGRATIONS)
    db.close()
