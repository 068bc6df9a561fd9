"""Issue 16, the tracker's side: a run records its deployment before the rollout, with the
release it replaces, and `settle` tells each workflow job what to do from the history alone, so
that an automatic rollback restores exactly what the run replaced and a re-run does no harm."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import Result
from helpers import History, ok, parse_github_output

import deployment_tracker as dt


@pytest.fixture
def baseline(history: History, cli: Callable[..., Result]) -> dict[str, str]:
    """staging: Z then A verified, A running; then this run's X recorded before its rollout."""
    ids = {
        "Z": history.record("staging", verified=True),
        "A": history.record("staging", verified=True),
    }
    ids["X"] = history.record("staging")
    return ids


def settle(cli: Callable[..., Result], deployment_id: str, stage: str) -> tuple[str, str]:
    result = cli("settle", "--id", deployment_id, "--stage", stage)
    assert result.exit_code == 0, result.output
    return result.stdout.strip(), result.stderr.strip()


def test_a_deployment_records_what_it_replaces(
    cli: Callable[..., Result], history: History, baseline: dict[str, str]
) -> None:
    assert ok(cli("get", baseline["X"], "--field", "replaces")) == baseline["A"]
    assert ok(cli("get", baseline["A"], "--field", "replaces")) == baseline["Z"]
    assert ok(cli("get", baseline["Z"], "--field", "replaces")) == ""


def test_the_rollback_restores_exactly_what_the_run_replaced(
    cli: Callable[..., Result], baseline: dict[str, str]
) -> None:
    assert settle(cli, baseline["X"], "deploy")[0] == "deploy"
    assert settle(cli, baseline["X"], "verify")[0] == "verify"
    ok(cli("verify", "--id", baseline["X"], "--status", "failed"))
    action, reason = settle(cli, baseline["X"], "rollback")
    assert action == "rollback"
    assert reason == f"rollback: restore {baseline['A']}, which {baseline['X']} replaced"


def test_every_job_re_run_after_the_rollback_finds_nothing_to_do(
    cli: Callable[..., Result], baseline: dict[str, str], tmp_path: Path
) -> None:
    ok(cli("verify", "--id", baseline["X"], "--status", "failed"))
    output = tmp_path / "github_output"
    output.touch()
    result = cli(
        "settle",
        "--id",
        baseline["X"],
        "--stage",
        "rollback",
        "--github-output",
        env={"GITHUB_OUTPUT": str(output)},
    )
    values = parse_github_output(output.read_text())
    assert values["action"] == "rollback" and values["id"] == baseline["A"], result.output
    rollback = ok(cli("record", "-e", "staging", "--rollback-of", values["id"]))
    # What failed stays failed; nothing verified before the run is marked rolled back.
    assert ok(cli("get", baseline["X"], "--field", "status")) == "failed"
    for good in ("Z", "A"):
        assert ok(cli("get", baseline[good], "--field", "status")) == "verified"
    for stage in dt.SETTLE_STAGES:
        output.write_text("")
        result = cli(
            "settle",
            "--id",
            baseline["X"],
            "--stage",
            stage,
            "--github-output",
            env={"GITHUB_OUTPUT": str(output)},
        )
        assert result.exit_code == 0
        assert result.stdout == "none\n"
        assert (
            result.stderr == f"none: {baseline['X']} no longer runs in staging (now: {rollback})\n"
        )
        assert parse_github_output(output.read_text())["action"] == "none"


def test_a_verified_deployment_is_never_rolled_back(
    cli: Callable[..., Result], baseline: dict[str, str]
) -> None:
    ok(cli("verify", "--id", baseline["X"], "--status", "verified"))
    assert settle(cli, baseline["X"], "rollback") == (
        "none",
        f"none: {baseline['X']} is verified: nothing to roll back",
    )
    assert settle(cli, baseline["X"], "verify") == (
        "none",
        f"none: {baseline['X']} is already verified",
    )


def test_the_first_deployment_has_nothing_to_restore(
    cli: Callable[..., Result], history: History
) -> None:
    first = history.record("qa")
    ok(cli("verify", "--id", first, "--status", "failed"))
    assert settle(cli, first, "rollback") == (
        "none",
        f"none: nothing ran in qa before {first}: nothing to restore",
    )


@pytest.mark.parametrize("how", ["never verified", "blocked"])
def test_a_replaced_release_that_is_not_good_is_left_to_a_person(
    cli: Callable[..., Result], history: History, how: str
) -> None:
    history.record("staging", verified=True)
    replaced = history.record("staging", verified=how == "blocked")
    if how == "blocked":
        ok(cli("block", "--id", replaced, "--reason", "leaks memory"))
    failed = history.record("staging")
    ok(cli("verify", "--id", failed, "--status", "failed"))
    result = cli("settle", "--id", failed, "--stage", "rollback")
    assert result.exit_code == 1
    assert f"{failed} replaced {replaced}, which " in result.stderr
    assert "roll staging back by hand" in result.stderr
    assert result.stdout == ""


def test_a_prune_keeps_what_a_rollback_would_restore(
    cli: Callable[..., Result], history: History
) -> None:
    history.record("staging", verified=True)
    replaced = history.record("staging", verified=True)
    running = history.record("staging")
    ok(cli("prune", "--keep", "1"))
    assert sorted(ok(cli("list", "--field", "id")).splitlines()) == sorted([replaced, running])
    ok(cli("verify", "--id", running, "--status", "failed"))
    assert settle(cli, running, "rollback")[0] == "rollback"


# -- a history written by another version --------------------------------------------------


def older_database(path: Path, version: int) -> str:
    """A database as tracker schema `version` left it, with one verified deployment."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for step in dt.MIGRATIONS[:version]:
            step(db)
        db.execute(f"PRAGMA application_id = {dt.APPLICATION_ID}")
        db.execute(f"PRAGMA user_version = {version}")
        db.execute(
            "INSERT INTO deployments (id, environment, branch, commit_sha, image_tag, status,"
            " deployed_at, verified_at) VALUES ('main_abcdef1_20250101000000', 'staging', 'main',"
            " 'abcdef1', 'main_abcdef1_20250101000000', 'verified', '2025-01-01T00:00:00Z',"
            " '2025-01-01T00:01:00Z')"
        )
    return "main_abcdef1_20250101000000"


@pytest.mark.parametrize("version", range(1, len(dt.MIGRATIONS)))
def test_every_read_of_an_older_schema_works_and_leaves_the_file_as_it_was(
    cli: Callable[..., Result], db_path: Path, version: int
) -> None:
    old = older_database(db_path, version)
    before = db_path.read_bytes()
    for args in (
        ("get", old, "--field", "id,status,replaces,image_digest"),
        ("list", "-o", "json"),
        ("latest", "-e", "staging", "--field", "id"),
        ("status", "-o", "json"),
        ("settle", "--id", old, "--stage", "rollback"),
    ):
        result = cli(*args)
        assert result.exit_code == 0, (version, args, result.output)
        assert "Traceback" not in result.output
    assert cli("get", old, "--field", "id,status,replaces").stdout == f"{old}\tverified\t\n"
    assert db_path.read_bytes() == before
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == version
    # A write upgrades the file itself.
    ok(cli("verify", "--id", old, "--status", "verified"))
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(dt.MIGRATIONS)


def test_a_newer_schema_is_refused_naming_what_to_pin(
    cli: Callable[..., Result], db_path: Path, history: History
) -> None:
    history.record("staging")
    newer = len(dt.MIGRATIONS) + 1
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute(f"PRAGMA user_version = {newer}")
    before = db_path.read_bytes()
    for args in (("list",), ("record", "-e", "staging", "-b", "main", "-c", "a" * 40)):
        result = cli(*args)
        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: {db_path} has schema version {newer}, newer than this tool knows"
            f" ({len(dt.MIGRATIONS)}): a newer deployment-tracker wrote it; pin a release with"
            f" schema {newer} or later (README: Releases)\n"
        )
    assert db_path.read_bytes() == before
