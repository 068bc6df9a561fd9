"""Hostile input: every bad value is refused with one line, the right code, and no write."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import NamedTuple, Union

import pytest
from click.testing import CliRunner
from helpers import (
    assert_one_line_error,
    checkpoint,
    dump,
    file_hash,
    output_text,
    parse_github_output,
    run_tracker,
)

import deployment_tracker as dt

SHA = "0123456789abcdef0123456789abcdef01234567"
STAGING_ID = "main_0123456_20240101000000"
LIVE_ID = "release_0123456_20240101000100"
INJECTION = "x'); DROP TABLE deployments; --"
# Git accepts this as a branch name, so it must be stored, verbatim, and do nothing.
INJECTION_BRANCH = "x');DROP/TABLE/deployments;--"
MEGABYTE = 1_000_000
NO_GITHUB_OUTPUT = ("list",)


class Case(NamedTuple):
    name: str
    args: tuple[Union[str, bytes], ...]
    exit_code: int
    message: str


def record(*extra: Union[str, bytes]) -> tuple[Union[str, bytes], ...]:
    return ("record", "-e", "staging", "-b", "feature", "-c", SHA, *extra)


CASES = [
    # SQL injection in every validated field (free text is stored verbatim: see below).
    Case("sql environment", ("record", "-e", INJECTION, "-b", "m", "-c", SHA), 2, "environment"),
    Case("sql branch", ("record", "-e", "staging", "-b", INJECTION, "-c", SHA), 2, "branch"),
    Case("sql commit", ("record", "-e", "qa", "-b", "m", "-c", "0123456' OR '1'='1"), 2, "commit"),
    Case("sql image tag", record("--image-tag", INJECTION), 2, "image tag"),
    Case("sql run id", record("--run-id", "1 OR 1=1"), 2, "run id must be a number"),
    Case("sql run url", record("--run-url", f"https://ci/{INJECTION}"), 2, "run URL"),
    Case("sql id", record("--id", f"{STAGING_ID}' --"), 2, "deployment id must look like"),
    Case("sql rollback-of", record("--rollback-of", INJECTION), 2, "deployment id must look"),
    Case("sql committed-at", record("--committed-at", INJECTION), 2, "not an ISO 8601 time"),
    Case("sql get", ("get", "--id", "' OR 1=1 --"), 2, "must be a Docker tag"),
    Case("sql get argument", ("get", "' OR 1=1 --"), 2, "must be a Docker tag"),
    Case("sql verify", ("verify", "--id", INJECTION, "--status", "verified"), 2, "Docker tag"),
    Case("sql block", ("block", INJECTION, "--reason", "x"), 2, "must be a Docker tag"),
    Case("sql list env", ("list", "-e", "staging' OR '1'='1"), 2, "environment must be"),
    Case("sql list branch", ("list", "-b", "main' OR 1=1"), 2, "not a valid git branch name"),
    Case("sql latest", ("latest", "-e", INJECTION), 2, "environment must be"),
    Case("sql rollback", ("rollback-target", "-e", "staging", "--id", INJECTION), 2, "deployment"),
    Case("sql new-id", ("new-id", "-b", INJECTION, "-c", SHA), 2, "not a valid git branch name"),
    # Empty and whitespace-only.
    Case("empty environment", ("record", "-e", "", "-b", "m", "-c", SHA), 2, "environment"),
    Case("empty branch", ("record", "-e", "staging", "-b", "", "-c", SHA), 2, "must not be empty"),
    Case("empty actor", record("--actor", ""), 2, "actor must not be empty"),
    Case("empty by", ("verify", "--id", LIVE_ID, "--status", "failed", "--by", ""), 2, "by"),
    Case("blank note", record("--note", "   "), 2, "note must not be empty"),
    Case("blank branch", ("record", "-e", "staging", "-b", "   ", "-c", SHA), 2, "empty"),
    Case("blank actor", record("--actor", "\u3000 "), 2, "actor must not be empty"),
    # Control characters and newlines (a newline would forge $GITHUB_OUTPUT lines).
    Case("newline branch", ("record", "-e", "qa", "-b", "m\nx=1", "-c", SHA), 2, "control"),
    Case(
        "newline actor", record("--actor", "bot\nimage_tag=evil"), 2, "control or bidi characters"
    ),
    Case("escape note", record("--note", "ok \x1b[31mred"), 2, "control or bidi characters"),
    Case("carriage return url", record("--run-url", "https://ci/1\r\nX: y"), 2, "run_url"),
    Case("bell record note", record("--note", "\x07"), 2, "control"),
    Case("C1 control actor", record("--actor", "bot\x9b31m"), 2, "control or bidi characters"),
    Case("C1 control by", ("verify", LIVE_ID, "--status", "failed", "--by", "\x9b"), 2, "control"),
    # Bidi marks reorder what is shown: `fix/\u202etrats` shows as `fix/start`.
    Case("bidi branch", ("record", "-e", "qa", "-b", "fix/\u202etrats", "-c", SHA), 2, "bidi"),
    Case("bidi actor", record("--actor", "\u2066bot"), 2, "control or bidi characters"),
    Case("bidi record note", record("--note", "ok\u200f"), 2, "control or bidi characters"),
    Case("bidi block reason", ("block", LIVE_ID, "--reason", "\u202ex"), 2, "bidi"),
    # NUL bytes (only reachable in-process: argv can't carry them).
    Case("nul branch", ("record", "-e", "staging", "-b", "ma\x00in", "-c", SHA), 2, "NUL"),
    Case("nul note", record("--note", "a\x00b"), 2, "note must not contain NUL"),
    # Megabyte values.
    Case("1 MB note", record("--note", "x" * MEGABYTE), 2, "note is too long"),
    Case("1 MB branch", ("record", "-e", "qa", "-b", "b" * MEGABYTE, "-c", SHA), 2, "too long"),
    Case("1 MB actor", record("--actor", "a" * MEGABYTE), 2, "actor is too long"),
    Case("1 MB url", record("--run-url", "https://ci/" + "u" * MEGABYTE), 2, "too long"),
    Case("1 MB id", ("get", "--id", "i" * MEGABYTE), 2, "must be a Docker tag"),
    Case("1 MB environment", ("latest", "-e", "e" * MEGABYTE), 2, "environment must be"),
    # Shas.
    Case("uppercase sha", ("record", "-e", "qa", "-b", "m", "-c", SHA.upper()), 2, "lowercase hex"),
    Case("short sha", ("record", "-e", "qa", "-b", "m", "-c", "abc12"), 2, "7 to 40"),
    Case("non-hex sha", ("record", "-e", "qa", "-b", "m", "-c", "g" * 40), 2, "hex"),
    Case("new-id uppercase sha", ("new-id", "-b", "main", "-c", "ABCDEF1"), 2, "lowercase hex"),
    # Unknown environments and statuses.
    Case(
        "uppercase environment",
        ("record", "-e", "Production", "-b", "m", "-c", SHA),
        2,
        "lowercase",
    ),
    Case("record status", record("--status", "verified"), 2, "Invalid value for '--status'"),
    Case("verify status", ("verify", "--id", STAGING_ID, "--status", "deployed"), 2, "--status"),
    Case("list status", ("list", "--status", "bogus"), 2, "Invalid value for '--status'"),
    Case("latest status", ("latest", "-e", "staging", "--status", "ok"), 2, "--status"),
    Case("unknown option", record("--force-push"), 2, "No such option"),
    # Ids that don't parse, and ids (or starts of ids) that name nothing.
    Case("id names nothing", ("get", "nope"), 1, "no deployment has an id starting"),
    Case("id uppercase sha", ("get", "main_ABCDEF1_20240101000000"), 1, "no deployment has an"),
    Case("id month 13", record("--id", "feature_0123456_20241301000000"), 2, "impossible time"),
    Case(
        "id short time",
        ("verify", "--id", "m_0123456_2024", "--status", "failed"),
        1,
        "no deployment with id m_0123456_2024",
    ),
    Case("id leading dot", ("get", "--id", ".m_0123456_20240101000000"), 2, "Docker tag"),
    Case("record id prefix", record("--id", "main"), 2, "deployment id must look like"),
    Case("rollback-of prefix", record("--rollback-of", "main"), 2, "deployment id must look"),
    Case("ambiguous sha", ("get", SHA[:7]), 1, "is ambiguous: it matches"),
    Case(
        "id other sha", record("--id", "feature_abcdef0_20240101000000"), 2, "names commit abcdef0"
    ),
    # Duplicate ids with different fields.
    Case(
        "duplicate branch",
        ("record", "-e", "staging", "-b", "other", "-c", SHA, "--id", STAGING_ID),
        1,
        "already recorded with a different branch",
    ),
    Case(
        "duplicate environment",
        ("record", "-e", "qa", "-b", "main", "-c", SHA, "--id", STAGING_ID),
        1,
        "different environment",
    ),
    Case(
        "duplicate status",
        (
            "record",
            "-e",
            "staging",
            "-b",
            "main",
            "-c",
            SHA,
            "--id",
            STAGING_ID,
            "--status",
            "failed",
        ),
        1,
        "different status",
    ),
    # Future and malformed times.
    Case("future id", record("--id", "feature_0123456_29990101000000"), 2, "in the future"),
    Case(
        "future commit time", record("--committed-at", "2999-01-01T00:00:00Z"), 2, "in the future"
    ),
    Case("words as time", record("--committed-at", "yesterday"), 2, "not an ISO 8601 time"),
    Case("february 30", record("--committed-at", "2024-02-30T10:00:00Z"), 2, "ISO 8601"),
    # Rollbacks that point to the wrong place.
    Case(
        "rollback other env",
        ("record", "-e", "live", "--rollback-of", STAGING_ID),
        1,
        "is in staging, not live",
    ),
    Case(
        "rollback missing",
        ("record", "-e", "staging", "--rollback-of", "gone_0123456_20200101000000"),
        1,
        "does not exist",
    ),
    Case(
        "rollback-target other env",
        ("rollback-target", "-e", "live", "--id", STAGING_ID),
        1,
        "is in staging",
    ),
    Case("rollback to running", ("record", "-e", "live", "--rollback-of", LIVE_ID), 1, "running"),
    # A contradicting verification.
    Case(
        "verified becomes failed",
        ("verify", "--id", STAGING_ID, "--status", "failed"),
        1,
        "cannot become failed",
    ),
]

# Real processes: bytes that are not UTF-8 can only arrive through argv.
UNDECODABLE = [
    Case("bytes branch", ("record", "-e", "staging", "-b", b"ma\xffin", "-c", SHA), 2, "UTF-8"),
    Case("bytes note", record("--note", b"\xff\xfe notes"), 2, "note is not valid UTF-8"),
    Case("bytes actor", record("--actor", b"\xc3\x28"), 2, "actor is not valid UTF-8"),
    Case(
        "bytes environment", ("record", "-e", b"stag\xe9", "-b", "m", "-c", SHA), 2, "environment"
    ),
    Case("bytes id", ("get", "--id", b"main_0123456_2024\xff"), 2, "deployment id"),
    Case("bytes status", ("list", "--status", b"\xffverified"), 2, "--status"),
]


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "deployments.db"
    db = dt.connect(str(path), write=True)
    gates = dt.parse_gates(None)
    staging = dt.RecordRequest(
        environment="staging", branch="main", commit_sha=SHA, deployment_id=STAGING_ID
    ).checked()
    dt.record_deployment(db, staging, gates=gates)
    dt.verify_deployment(db, STAGING_ID, "verified", by="qa")
    live = dt.RecordRequest(
        environment="live", branch="release", commit_sha=SHA, deployment_id=LIVE_ID
    ).checked()
    dt.record_deployment(db, live, gates=gates)
    db.close()
    checkpoint(path)
    return path


def with_github_output(args: tuple[Union[str, bytes], ...]) -> tuple[Union[str, bytes], ...]:
    """Ask every command that can for $GITHUB_OUTPUT too: a refusal must not write it."""
    return args if args[0] in NO_GITHUB_OUTPUT else (*args, "--github-output")


class Written(NamedTuple):
    digest: str
    rows: list[object]
    output: bytes


def written(database: Path, github_output: Path) -> Written:
    checkpoint(database)
    return Written(file_hash(database), dump(database), github_output.read_bytes())


def test_at_least_thirty_hostile_inputs_cover_every_command() -> None:
    assert len(CASES) + len(UNDECODABLE) >= 30
    commands = {case.args[0] for case in CASES}
    assert commands >= {
        *("record", "verify", "list", "latest", "get", "rollback-target", "new-id", "block")
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_is_refused_and_writes_nothing(
    case: Case, database: Path, tmp_path: Path, runner: CliRunner
) -> None:
    github_output = tmp_path / "github_output"
    github_output.write_bytes(b"")
    before = written(database, github_output)

    args = [str(arg) for arg in with_github_output(case.args)]
    result = runner.invoke(
        dt.cli, ["--db", str(database), *args], env={"GITHUB_OUTPUT": str(github_output)}
    )

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == case.exit_code, result.stderr
    assert_one_line_error(result.stderr, case.message)
    assert result.stdout == ""
    assert written(database, github_output) == before


@pytest.mark.parametrize("case", UNDECODABLE, ids=[case.name for case in UNDECODABLE])
def test_undecodable_arguments_are_refused_and_write_nothing(
    case: Case, database: Path, tmp_path: Path
) -> None:
    github_output = tmp_path / "github_output"
    github_output.write_bytes(b"")
    before = written(database, github_output)

    result = run_tracker(
        *with_github_output(case.args), db=database, env={"GITHUB_OUTPUT": str(github_output)}
    )

    assert result.returncode == case.exit_code, result.stderr
    assert_one_line_error(result.stderr, case.message)
    assert written(database, github_output) == before


def test_undecodable_database_path_is_reported_not_crashed(tmp_path: Path) -> None:
    missing = bytes(tmp_path) + b"/d\xffb.db"
    result = run_tracker("--db", missing, "list")
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "no database at")


# --------------------------------------------------------------------------
# What must be accepted: free text is data, stored and shown verbatim.
# --------------------------------------------------------------------------


def test_sql_in_free_text_is_stored_verbatim_and_runs_nothing(
    database: Path, tmp_path: Path, runner: CliRunner
) -> None:
    path = tmp_path / "copy.db"
    path.write_bytes(database.read_bytes())
    url = "https://ci.example/run?q=1%27%20OR%201=1;--&x='); DROP TABLE events;--"
    url = url.replace(" ", "%20")
    args = [
        "--db",
        str(path),
        "record",
        "-e",
        "staging",
        "-b",
        INJECTION_BRANCH,
        "-c",
        SHA,
        "--actor",
        INJECTION,
        "--note",
        f"{INJECTION}\n'; DELETE FROM events; --",
        "--run-url",
        url,
    ]
    result = runner.invoke(dt.cli, args)
    assert result.exit_code == 0, result.stderr
    shown = json.loads(
        runner.invoke(
            dt.cli, ["--db", str(path), "get", result.stdout.strip(), "-o", "json"]
        ).stdout
    )
    assert shown["branch"] == INJECTION_BRANCH
    assert shown["actor"] == INJECTION
    assert shown["note"] == f"{INJECTION}\n'; DELETE FROM events; --"
    assert shown["run_url"] == url
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM deployments").fetchone()[0] == 3
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 4
    finally:
        db.close()


FORGED_NOTE = (
    "first line\nimage_tag=evil:latest\nid<<EOF\nforged\nEOF\n"
    "status<<ghadelimiter_0000\nverified\nghadelimiter_0000\n\ttabbed\n\nlast line\n"
)


def test_newlines_in_a_note_cannot_forge_github_outputs(tmp_path: Path) -> None:
    path = tmp_path / "deployments.db"
    github_output = tmp_path / "github_output"
    github_output.write_text("earlier=kept\n")
    env = {"GITHUB_OUTPUT": str(github_output)}

    recorded = run_tracker(*record("--note", FORGED_NOTE, "--github-output"), db=path, env=env)
    assert recorded.returncode == 0, recorded.stderr
    deployment_id = recorded.stdout.strip()
    outputs = parse_github_output(github_output.read_text())
    record_json = json.loads(run_tracker("get", deployment_id, "-o", "json", db=path).stdout)
    expected = {name: output_text(value) for name, value in record_json.items() if name != "events"}
    assert outputs == {"earlier": "kept", **expected}
    assert outputs["note"] == FORGED_NOTE
    assert outputs["image_tag"] == deployment_id
    assert outputs["status"] == "deployed"

    github_output.write_text("")
    verified = run_tracker(
        "verify",
        "--id",
        deployment_id,
        "--status",
        "verified",
        "--note",
        FORGED_NOTE,
        "--github-output",
        db=path,
        env=env,
    )
    assert verified.returncode == 0, verified.stderr
    outputs = parse_github_output(github_output.read_text())
    assert outputs["status"] == "verified"
    assert outputs["id"] == deployment_id
    assert set(outputs) == set(expected)


def test_new_id_github_output_with_hostile_branch(tmp_path: Path) -> None:
    github_output = tmp_path / "github_output"
    github_output.write_text("")
    branch = "feat/$(id)<<EOF=x"
    result = run_tracker(
        "new-id",
        "-b",
        branch,
        "-c",
        SHA,
        "--github-output",
        env={"GITHUB_OUTPUT": str(github_output)},
    )
    assert result.returncode == 0, result.stderr
    outputs = parse_github_output(github_output.read_text())
    assert outputs["branch"] == branch
    assert outputs["id"] == result.stdout.strip()
    assert dt.check_image_tag(outputs["image_tag"]) == outputs["id"]


# --------------------------------------------------------------------------
# A verification note is evidence: any text is kept, escaped, never refused.
# --------------------------------------------------------------------------


def copy_of(database: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.db"
    path.write_bytes(database.read_bytes())
    return path


def test_verify_stores_any_note_escaped(database: Path, tmp_path: Path, runner: CliRunner) -> None:
    path = copy_of(database, tmp_path)
    note = "exit 1\x1b[31m FAILED\x07\ttab\nnext \u202eevil\u202c \x9b \\x41 ok"
    result = runner.invoke(
        dt.cli, ["--db", str(path), "verify", LIVE_ID, "--status", "failed", "--note", note]
    )
    assert (result.exit_code, result.stdout, result.stderr) == (0, LIVE_ID + "\n", "")
    shown = json.loads(
        runner.invoke(dt.cli, ["--db", str(path), "get", LIVE_ID, "-o", "json"]).stdout
    )
    assert shown["status"] == "failed"
    assert shown["events"][-1]["note"] == (
        "exit 1\\u001b[31m FAILED\\u0007\ttab\nnext \\u202eevil\\u202c \\u009b \\x41 ok"
    )
    assert dt.storable_note(note) == shown["events"][-1]["note"]


def test_verify_stores_a_blank_or_too_long_note(database: Path, tmp_path: Path) -> None:
    assert dt.storable_note("   ") == "(empty)"
    kept = dt.storable_note("x" * 5000)
    assert len(kept) == dt.MAX_LENGTHS["note"] and kept == "x" * 3999 + "\u2026"
    path = copy_of(database, tmp_path)
    result = run_tracker("verify", LIVE_ID, "--status", "verified", "--note", "y" * 5000, db=path)
    assert result.returncode == 0, result.stderr
    events = json.loads(run_tracker("get", LIVE_ID, "-o", "json", db=path).stdout)["events"]
    assert events[-1]["note"] == "y" * 3999 + "\u2026"


def test_verify_stores_undecodable_bytes_escaped(database: Path, tmp_path: Path) -> None:
    """Bytes that are not UTF-8 reach a real process only; they are kept as \\xNN."""
    path = copy_of(database, tmp_path)
    note = b"curl: \xff\xfe binary \xc3\x28 answer"
    result = run_tracker("verify", LIVE_ID, "--status", "failed", "--note", note, db=path)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    events = json.loads(run_tracker("get", LIVE_ID, "-o", "json", db=path).stdout)["events"]
    assert events[-1]["note"] == "curl: \\xff\\xfe binary \\xc3( answer"
