"""Exit codes, idempotent re-recording, transitions and output formats through the CLI."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import assert_one_line_error, parse_github_output, row_count, run_tracker

import deployment_tracker as dt

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "89abcdef0123456789abcdef0123456789abcdef"
DEPLOYMENT = "main_0123456_20260101100000"


def record(cli: Callable[..., Result], *extra: str, deployment_id: str = DEPLOYMENT) -> Result:
    return cli("record", "-e", "staging", "-b", "main", "-c", SHA, "--id", deployment_id, *extra)


# -- exit code 0 -------------------------------------------------------------


def test_success_is_zero(cli: Callable[..., Result]) -> None:
    result = record(cli)
    assert (result.exit_code, result.stdout, result.stderr) == (0, DEPLOYMENT + "\n", "")
    assert cli("list").exit_code == 0
    assert cli("--version").stdout.startswith("deployment-tracker, version ")
    assert cli("--help").exit_code == 0
    assert "Exit codes:" in cli("--help").stdout


# -- exit code 1 -------------------------------------------------------------


def test_missing_database_for_reading_is_one_and_creates_nothing(
    cli: Callable[..., Result], db_path: Path
) -> None:
    for args in (
        ["list"],
        ["latest", "-e", "staging"],
        ["get", "--id", DEPLOYMENT],
        ["rollback-target", "-e", "staging"],
    ):
        result = cli(*args)
        assert result.exit_code == 1, args
        assert result.stderr.startswith("Error: no database at ")
        assert result.stderr.count("\n") == 1
    assert not db_path.exists()


def test_not_found_is_one(cli: Callable[..., Result]) -> None:
    record(cli)
    for args, message in (
        (["get", "--id", "main_0123456_20250101000000"], "no deployment with id"),
        (["latest", "-e", "staging"], "no verified deployment in staging"),
        (["latest", "-e", "qa", "--status", "any"], "no deployment in qa"),
        (
            ["verify", "--id", "main_0123456_20250101000000", "--status", "verified"],
            "no deployment with id",
        ),
        (["rollback-target", "-e", "staging"], "no verified deployment in staging"),
        (["rollback-target", "-e", "eu-prod"], "no deployments in eu-prod"),
        # An id may be given by a unique start: nothing starts with x.
        (["get", "x"], "no deployment has an id starting with x"),
        (["get", "--id", "x"], "no deployment with id x"),
    ):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr


def test_refused_transitions_are_one(cli: Callable[..., Result], cli_json: Any) -> None:
    record(cli)
    assert cli("verify", "--id", DEPLOYMENT, "--status", "failed").exit_code == 0
    result = cli("verify", "--id", DEPLOYMENT, "--status", "verified")
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: deployment {DEPLOYMENT} is failed; it cannot become verified\n"
    )
    # Repeating the same transition is a harmless no-op.
    result = cli("verify", "--id", DEPLOYMENT, "--status", "failed", "--by", "someone-else")
    assert result.exit_code == 0
    assert "already failed" in result.stderr
    events = cli_json("get", "--id", DEPLOYMENT)["events"]
    assert [e["status"] for e in events] == ["deployed", "failed"]


def test_corrupt_newer_and_foreign_databases_are_one(tmp_path: Path, runner: CliRunner) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("this is not a database\n" * 100)
    newer = tmp_path / "newer.db"
    assert (
        runner.invoke(
            dt.cli, ["--db", str(newer), "record", "-e", "qa", "-b", "m", "-c", SHA]
        ).exit_code
        == 0
    )
    with closing(sqlite3.connect(newer)) as db:
        db.execute(f"PRAGMA user_version = {len(dt.MIGRATIONS) + 1}")
    foreign = tmp_path / "foreign.db"
    with closing(sqlite3.connect(foreign)) as db:
        db.execute("CREATE TABLE something (x)")
        db.commit()
    for path, message in (
        (not_a_db, "is not a readable deployment database"),
        (newer, "newer than this tool knows"),
        (foreign, "not a deployment database"),
        (tmp_path, "is a directory"),
    ):
        before = path.read_bytes() if path.is_file() else None
        for args in (["list"], ["record", "-e", "qa", "-b", "m", "-c", SHA]):
            result = runner.invoke(dt.cli, ["--db", str(path), *args])
            assert result.exit_code == 1, (path, args, result.output)
            assert message in result.stderr
            assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
        if before is not None:
            assert path.read_bytes() == before


# -- exit code 2 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["record", "-b", "main", "-c", SHA], "Missing option '--environment'"),
        (["record", "-e", "staging", "-c", SHA], "--branch and --commit are required"),
        (["record", "-e", "Staging!", "-b", "main", "-c", SHA], "environment must be"),
        (["record", "-e", "staging", "-b", "main", "-c", SHA.upper()], "lowercase hex"),
        (["record", "-e", "staging", "-b", "a b", "-c", SHA], "not a valid git branch"),
        (
            ["record", "-e", "staging", "-b", "main", "-c", SHA, "--id", "nope"],
            "deployment id must look like",
        ),
        (
            [
                "record",
                "-e",
                "staging",
                "-b",
                "main",
                "-c",
                SHA,
                "--id",
                "main_fedcba9_20260101100000",
            ],
            "names commit fedcba9",
        ),
        (
            ["record", "-e", "staging", "-b", "main", "-c", SHA, "--status", "verified"],
            "Invalid value for '--status'",
        ),
        (
            ["record", "-e", "staging", "-b", "main", "-c", SHA, "--image-tag", ".bad"],
            "not a valid Docker tag",
        ),
        (
            ["record", "-e", "staging", "-b", "main", "-c", SHA, "--run-id", "12a"],
            "run id must be a number",
        ),
        (
            ["record", "-e", "staging", "-b", "main", "-c", SHA, "--run-url", "javascript:x"],
            "http(s) URL",
        ),
        (
            ["record", "-e", "staging", "-b", "main", "-c", SHA, "--committed-at", "yesterday"],
            "not an ISO 8601 time",
        ),
        (
            ["record", "-e", "staging", "-b", "main", "-c", SHA, "--actor", "   "],
            "actor must not be empty",
        ),
        (["verify", "--id", DEPLOYMENT, "--status", "rolled_back"], "Invalid value"),
        (["list", "--limit", "0"], "Invalid value for '--limit'"),
        (["list", "--format", "yaml"], "Invalid value for '-o' / '--output' / '--format'"),
        (["list", "-o", "yaml"], "'yaml' is not one of table, json, csv, tsv"),
        (["list", "--field", "nope"], "unknown field 'nope'"),
        (["list", "--field", "id", "--json", "id"], "--field and --json don't go together"),
        (["get", "a b"], "must be a Docker tag"),
        (["get", "--id", "a b"], "must be a Docker tag"),
        (["get", DEPLOYMENT, "--id", "main_0123456_20250101000000"], "two different deployments"),
        (["get"], "Missing argument 'ID'"),
        (["nonsense"], "No such command 'nonsense'"),
        (["latest", "-e", "staging", "--github-output"], "needs the GITHUB_OUTPUT"),
    ],
)
def test_invalid_input_is_two_and_writes_nothing(
    cli: Callable[..., Result], db_path: Path, args: list[str], message: str
) -> None:
    record(cli)
    before = db_path.read_bytes()
    result = cli(*args, env={"GITHUB_OUTPUT": ""})
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""
    assert db_path.read_bytes() == before
    assert row_count(db_path) == 1


def test_errors_from_a_real_process_are_one_line_without_traceback(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)  # a truncated, corrupt file
    for args, code in (
        (["list"], 1),
        (["record", "-e", "staging", "-b", "main", "-c", SHA], 1),
        (["record", "-e", "staging", "-b", "main", "-c", "xyz"], 2),
    ):
        result = run_tracker(*args, db=db)
        assert result.returncode == code, result.stderr
        assert_one_line_error(result.stderr)
        assert result.stdout == ""


def test_errors_and_warnings_are_annotations_inside_github_actions(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    actions = {"GITHUB_ACTIONS": "true"}
    recorded = run_tracker(
        "record", "-e", "production", "-b", "main", "-c", SHA, db=db, env=actions
    )
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stderr.startswith("::warning title=deployment-tracker::recorded past the")
    assert recorded.stderr.count("\n") == 1
    failed = run_tracker("get", "nothing-like-it", db=db, env=actions)
    assert failed.returncode == 1
    assert failed.stderr == (
        "::error title=deployment-tracker::no deployment has an id starting with nothing-like-it\n"
    )


# -- idempotency -------------------------------------------------------------


def test_re_recording_is_idempotent(cli: Callable[..., Result], db_path: Path) -> None:
    full = ("--actor", "alice", "--run-id", "7", "--note", "first try")
    assert record(cli, *full).exit_code == 0
    cli("verify", "--id", DEPLOYMENT, "--status", "verified")
    before = db_path.read_bytes()
    # A retried step, even after the deployment moved on, succeeds and changes nothing.
    result = record(cli, *full)
    assert result.exit_code == 0
    assert result.stdout == DEPLOYMENT + "\n"
    assert result.stderr == f"already recorded: {DEPLOYMENT}\n"
    assert row_count(db_path) == 1
    assert db_path.read_bytes() == before
    # The same id with different fields is refused and changes nothing.
    for changed in (
        ("--actor", "mallory", "--run-id", "7", "--note", "first try"),
        ("--actor", "alice", "--run-id", "8", "--note", "first try"),
        ("--actor", "alice", "--run-id", "7", "--note", "first try", "--status", "failed"),
    ):
        result = record(cli, *changed)
        assert result.exit_code == 1
        assert "already recorded with a different" in result.stderr
    result = cli("record", "-e", "production", "-b", "main", "-c", SHA, "--id", DEPLOYMENT, *full)
    assert result.exit_code == 1
    assert "different environment" in result.stderr
    assert row_count(db_path) == 1


# -- output formats ------------------------------------------------------------


def test_output_formats(cli: Callable[..., Result], cli_json: Any, tmp_path: Path) -> None:
    record(cli, "--note", "line one\nline two")
    as_json = cli_json("list")
    assert isinstance(as_json, list) and as_json[0]["id"] == DEPLOYMENT
    rows = list(csv.DictReader(io.StringIO(cli("list", "--format", "csv").stdout)))
    assert rows[0]["id"] == DEPLOYMENT and rows[0]["note"] == "line one\nline two"
    markdown = cli("list", "--format", "github").stdout.splitlines()
    assert markdown[0].startswith("| id") and markdown[1].startswith("|--")
    assert cli("list", "-o", "rst").stdout.startswith("=====")  # any tabulate format
    # The default table: what ran, where, when, and did it pass.
    header, rule, row = cli("list").stdout.splitlines()
    assert header.split() == [
        "id",
        "environment",
        "commit",
        "status",
        "age",
        "verified_by",
        "marks",
    ]
    assert set(rule) == {"-", " "}
    assert row.split()[:4] == [DEPLOYMENT, "staging", SHA[:7], "deployed"]
    (bare,) = cli("list", "--no-headers").stdout.splitlines()  # no header, no rules
    assert bare.split() == row.split()
    wide = cli("list", "--wide").stdout.splitlines()[0].split()
    assert wide == list(dt.FIELDS)
    assert cli("list", "--field", "image_tag").stdout == DEPLOYMENT + "\n"
    assert cli("list", "--field", "id,status").stdout == f"{DEPLOYMENT}\tdeployed\n"
    assert json.loads(cli("list", "--json", "id,status").stdout) == [
        {"id": DEPLOYMENT, "status": "deployed"}
    ]
    # TSV is exact: every field, tabs between cells, \t \n \\ escaped, empty cells kept.
    tsv_header, tsv_row = cli("list", "-o", "tsv").stdout.split("\n")[:2]
    assert tsv_header.split("\t") == list(dt.FIELDS)
    cells = dict(zip(dt.FIELDS, tsv_row.split("\t")))
    assert len(tsv_row.split("\t")) == len(dt.FIELDS)
    assert cells["note"] == "line one\\nline two"
    assert (cells["rollback_of"], cells["blocked"], cells["gate_bypassed"]) == (
        "",
        "false",
        "false",
    )
    assert cli("get", "--id", DEPLOYMENT, "--field", "branch").stdout == "main\n"
    assert cli("latest", "-e", "staging", "--status", "any", "--field", "commit_sha").stdout == (
        SHA + "\n"
    )
    assert json.loads(cli("list", "--all", "--format", "json", "-e", "qa").stdout) == []


def test_github_output_cannot_be_injected(cli: Callable[..., Result], tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    output.write_text("earlier=1\n")
    hostile = "x\nimage_tag=evil\nEOF\nstatus<<EOF\nverified"
    result = cli(
        "record",
        "-e",
        "staging",
        "-b",
        "main",
        "-c",
        SHA,
        "--id",
        DEPLOYMENT,
        "--note",
        hostile,
        "--github-output",
        env={"GITHUB_OUTPUT": str(output)},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == DEPLOYMENT + "\n"  # the log gets the id; the fields go to the file
    parsed = parse_github_output(output.read_text())
    assert parsed["earlier"] == "1"
    assert parsed["note"] == hostile
    assert parsed["image_tag"] == DEPLOYMENT
    assert parsed["status"] == "deployed"
    assert parsed["rollback_of"] == ""


def test_github_output_on_reading_commands(cli: Callable[..., Result], tmp_path: Path) -> None:
    record(cli, "--actor", "alice")
    output = tmp_path / "github_output"
    env = {"GITHUB_OUTPUT": str(output)}
    for args in (["latest", "-e", "staging", "--status", "any"], ["get", "--id", DEPLOYMENT]):
        output.write_text("")
        result = cli(*args, "--github-output", env=env)
        assert (result.exit_code, result.stdout) == (0, DEPLOYMENT + "\n")
        parsed = parse_github_output(output.read_text())
        assert parsed["actor"] == "alice" and parsed["commit_sha"] == SHA
        assert set(dt.FIELDS) <= set(parsed)
    # Asking for a format still prints it (get keeps its events).
    result = cli("get", "--id", DEPLOYMENT, "--github-output", "--format", "json", env=env)
    assert json.loads(result.stdout)["events"][0]["by"] == "alice"


def test_console_script_reads_the_database_from_the_environment(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    env = {dt.DB_ENV_VAR: str(db)}
    recorded = run_tracker(
        "record", "-e", "staging", "-b", "main", "-c", SHA, "--id", DEPLOYMENT, env=env
    )
    assert (recorded.returncode, recorded.stdout) == (0, DEPLOYMENT + "\n"), recorded.stderr
    assert db.exists()
    shown = run_tracker("latest", "-e", "staging", "--status", "any", "--field", "id", env=env)
    assert (shown.returncode, shown.stdout) == (0, DEPLOYMENT + "\n"), shown.stderr


def test_reading_never_creates_a_database_in_a_new_folder(
    tmp_path: Path, runner: CliRunner
) -> None:
    missing = tmp_path / "nowhere" / "d.db"
    assert runner.invoke(dt.cli, ["--db", str(missing), "list"]).exit_code == 1
    assert not missing.parent.exists()
    assert (
        runner.invoke(
            dt.cli, ["--db", str(missing), "record", "-e", "qa", "-b", "m", "-c", SHA]
        ).exit_code
        == 0
    )
    assert missing.exists()
