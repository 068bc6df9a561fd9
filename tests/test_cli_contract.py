"""Exit codes, idempotent re-recording, transitions and output formats through the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import deployment_tracker as dt

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "89abcdef0123456789abcdef0123456789abcdef"
DEPLOYMENT = "main_0123456_20260101100000"
REPO = Path(__file__).resolve().parent.parent


def record(cli: Callable[..., Result], *extra: str, deployment_id: str = DEPLOYMENT) -> Result:
    return cli("record", "-e", "staging", "-b", "main", "-c", SHA, "--id", deployment_id, *extra)


def row_count(db_path: Path) -> int:
    with closing(sqlite3.connect(db_path)) as db:
        return int(db.execute("SELECT count(*) FROM deployments").fetchone()[0])


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
        (["list", "--format", "yaml"], "Invalid value for '--format'"),
        (["get", "--id", "x"], "deployment id must look like"),
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
        result = subprocess.run(
            [sys.executable, str(REPO / "deployment_tracker.py"), "--db", str(db), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith("Error: ")
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


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
    table = cli("list").stdout
    assert DEPLOYMENT in table and "image_tag" in table
    assert cli("list", "--field", "image_tag").stdout == DEPLOYMENT + "\n"
    assert cli("get", "--id", DEPLOYMENT, "--field", "branch").stdout == "main\n"
    assert cli("latest", "-e", "staging", "--status", "any", "--field", "commit_sha").stdout == (
        SHA + "\n"
    )
    assert json.loads(cli("list", "--all", "--format", "json", "-e", "qa").stdout) == []
    assert set(dt.TABLE_FORMATS) <= set(__import__("tabulate").tabulate_formats)


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


def parse_github_output(text: str) -> dict[str, str]:
    """Read a GITHUB_OUTPUT file the way the Actions runner does."""
    values: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            collected = []
            for value_line in lines:
                if value_line == delimiter:
                    break
                collected.append(value_line)
            values[name] = "\n".join(collected)
        else:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def test_module_and_console_script_run(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    env = {**os.environ, "DEPLOYMENT_TRACKER_DB": str(db)}
    by_module = subprocess.run(
        [
            sys.executable,
            str(REPO / "deployment_tracker.py"),
            "record",
            "-e",
            "staging",
            "-b",
            "main",
            "-c",
            SHA,
            "--id",
            DEPLOYMENT,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert by_module.returncode == 0, by_module.stderr
    script = Path(sys.executable).parent / "deployment-tracker"
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    by_script = subprocess.run(
        [str(script), "latest", "-e", "staging", "--status", "any", "--field", "id"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (by_script.returncode, by_script.stdout) == (0, DEPLOYMENT + "\n")


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
