"""Issue #11: the shared history is writable by anyone who can push its branch.

A crafted database is refused whole; stored values reach every output escaped; bidi controls
are refused in input; a verification note is stored whatever it holds; --github-output that
can't be written fails before anything is written. Every test here fails on the tracker
before the redesign (d6fa876).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import ok, parse_github_output, record, run_tracker, sha

import deployment_tracker as dt

# ESC, BEL, C1 CSI, and the bidi and invisible marks: none may reach a terminal raw.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
BIDI = [
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
    "\u200e",
    "\u200f",
]


@pytest.fixture(autouse=True)
def no_caller_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEPLOYMENT_TRACKER_DB", "DEPLOYMENT_TRACKER_ENVIRONMENT", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)


def stamp(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.fixture
def legit(cli: Callable[..., Result], db_path: Path) -> dict[str, str]:
    """A real database: staging main (verified), staging feature/login (running)."""
    ids = {
        "main": record(cli, "staging", "main", sha("a", 1)),
        "login": record(cli, "staging", "feature/login", sha("b", 1)),
    }
    ok(cli("verify", "--id", ids["main"], "--status", "verified"), strip=False)
    return ids


def craft(db_path: Path, *statements: str) -> None:
    """Change the file behind the tracker's back, as a push to the history branch could."""
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        for statement in statements:
            db.execute(statement)
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


# -- 4. crafted databases ------------------------------------------------------------

CRAFTS: dict[str, tuple[str, ...]] = {
    "trigger rewriting verified images": (
        "CREATE TRIGGER evil AFTER UPDATE ON deployments WHEN new.status = 'verified'"
        " BEGIN UPDATE deployments SET image_tag = 'attacker_0000000_20260101000000'"
        " WHERE id = new.id; END",
    ),
    "recursive trigger": (
        "CREATE TRIGGER loop AFTER INSERT ON events"
        " BEGIN INSERT INTO events (deployment_id, status, at) VALUES"
        " (new.deployment_id, new.status, new.at); END",
    ),
    "extra view": ("CREATE VIEW everything AS SELECT * FROM deployments",),
    "extra table": ("CREATE TABLE notes (text TEXT)",),
    "changed index": (
        "DROP INDEX deployments_by_branch",
        "CREATE INDEX deployments_by_branch ON deployments (branch)",
    ),
    "extra index": ("CREATE INDEX by_actor ON deployments (actor)",),
}


def every_command(ids: dict[str, str]) -> list[list[str]]:
    """Reading and writing commands, spelled so that the old tracker knew them too."""
    return [
        ["list"],
        ["list", "-e", "staging", "--format", "json"],
        ["latest", "-e", "staging"],
        ["get", "--id", ids["main"]],
        ["rollback-target", "-e", "staging"],
        ["promote", "--from", "staging", "--to", "production"],
        ["stats"],
        ["timeline"],
        ["prune", "--keep", "0", "--dry-run"],
        ["record", "-e", "staging", "-b", "main", "-c", sha("c", 1)],
        ["verify", "--id", ids["login"], "--status", "verified"],
        ["block", "--id", ids["main"], "--reason", "bad"],
        ["unblock", "--id", ids["main"]],
        ["prune", "--keep", "0"],
    ]


@pytest.mark.parametrize("craft_name", CRAFTS)
def test_a_crafted_database_is_refused_by_every_command_untouched(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str], craft_name: str
) -> None:
    craft(db_path, *CRAFTS[craft_name])
    before = stamp(db_path)
    for command in every_command(legit):
        result = cli(*command)
        assert result.exit_code == 1, (command, result.output)
        assert result.stdout == "", command
        assert len(result.stderr.splitlines()) == 1, (command, result.stderr)
        assert "does not have exactly the schema" in result.stderr, (command, result.stderr)
        assert stamp(db_path) == before, command


def test_a_crafted_database_is_refused_in_a_real_process_without_hanging(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str]
) -> None:
    craft(db_path, "PRAGMA recursive_triggers = ON", *CRAFTS["recursive trigger"])
    before = stamp(db_path)
    started = time.monotonic()
    completed = run_tracker(
        "--db",
        str(db_path),
        "verify",
        "--id",
        legit["login"],
        "--status",
        "verified",
        timeout=30,
        text=False,
    )
    assert time.monotonic() - started < 30
    assert completed.returncode == 1
    assert b"does not have exactly the schema" in completed.stderr
    assert stamp(db_path) == before


def test_a_query_past_its_deadline_is_interrupted(
    cli: Callable[..., Result], db_path: Path
) -> None:
    for index in range(120):
        record(cli, "staging", f"b{index}", sha("1", index))
    heavy = "SELECT count(*) FROM deployments AS a, deployments AS b, deployments AS c"
    with closing(dt.connect(str(db_path), write=False, deadline_seconds=1.0)) as db:
        assert db.execute("SELECT count(*) FROM deployments").fetchone()[0] == 120
        time.sleep(1.1)
        with pytest.raises(sqlite3.OperationalError, match="interrupted"):
            db.execute(heavy).fetchone()
    with closing(dt.connect(str(db_path), write=False, deadline_seconds=60)) as db:
        assert db.execute(heavy).fetchone()[0] == 120**3


def test_a_database_larger_than_the_limit_is_refused_before_opening(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str], tmp_path: Path
) -> None:
    size = db_path.stat().st_size
    for write in (False, True):
        with pytest.raises(dt.DatabaseProblem, match="more than the"):
            dt.connect(str(db_path), write=write, max_bytes=size - 1)
    with closing(dt.connect(str(db_path), write=False, max_bytes=size)) as db:
        assert db.execute("SELECT count(*) FROM deployments").fetchone()[0] == 2
    # Not even looked into: a file of garbage is refused for its size, not its contents.
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\xff" * 4096)
    with pytest.raises(dt.DatabaseProblem, match="more than the 100 "):
        dt.connect(str(garbage), write=False, max_bytes=100)


@pytest.mark.skipif(shutil.which("truncate") is None, reason="needs truncate(1)")
def test_a_huge_sparse_file_is_refused_by_the_cli(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str]
) -> None:
    huge_size = dt.MAX_DATABASE_BYTES + 4096
    subprocess.run(["truncate", "-s", str(huge_size), str(db_path)], check=True)
    before = db_path.stat().st_mtime_ns
    for command in (["list"], ["record", "-e", "staging", "-b", "main", "-c", sha("c", 2)]):
        completed = run_tracker("--db", str(db_path), *command, timeout=30, text=False)
        assert completed.returncode == 1, completed.stderr
        assert b"refusing to open it" in completed.stderr
        assert len(completed.stderr.splitlines()) == 1
    assert db_path.stat().st_size == huge_size
    assert db_path.stat().st_mtime_ns == before


# -- 5. stored values reach output escaped ---------------------------------------------

HOSTILE = {
    "branch": "feature/\x1b]8;;http://evil\x07click\x1b]8;;\x07",
    "actor": "\x9b31mroot",
    "note": "looks \u202eokay\u202c fine\x1b[2J",
    "verified_by": "\u2066admin\u2069\u200f",
    "commit_sha": "abc```\n# Approved\n[click](http://evil)",
    "run_url": "http://x/\x1b[1;31mRED",
    "blocked_reason": "\x1b]0;title\x07reason",
}


@pytest.fixture
def hostile(cli: Callable[..., Result], db_path: Path, legit: dict[str, str]) -> str:
    """The verified main deployment, its text fields rewritten to hostile values."""
    assignments = ", ".join(f"{field} = :{field}" for field in HOSTILE)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute(
            f"UPDATE deployments SET {assignments} WHERE id = :id",
            {**HOSTILE, "id": legit["main"]},
        )
        db.execute(
            "UPDATE events SET by = :by, note = :note WHERE deployment_id = :id",
            {"by": HOSTILE["actor"], "note": HOSTILE["note"], "id": legit["main"]},
        )
    return legit["main"]


def shown(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.stdout


def assert_no_raw_controls(text: str) -> None:
    found = sorted({f"U+{ord(character):04X}" for character in RAW.findall(text)})
    assert not found, f"raw characters reached the output: {found}"


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--format", "tsv"],
        ["list", "--format", "csv"],
        ["list", "--format", "github"],
        ["list", "--wide"],
        ["list", "--field", "id,branch,actor,note,verified_by,commit_sha,run_url"],
    ],
)
def test_list_shows_stored_values_escaped(
    cli: Callable[..., Result], hostile: str, args: list[str]
) -> None:
    text = shown(cli(*args))
    assert_no_raw_controls(text)
    assert hostile in text
    if "--wide" in args or "--field" in args or "tsv" in args or "csv" in args:
        assert "\\x1b]8;;http://evil\\x07" in text  # visible, not acted on
        assert "\\u202e" in text


@pytest.mark.parametrize(
    "args",
    [[], ["--format", "tsv"], ["--format", "csv"], ["--field", "branch,note,blocked_reason"]],
)
def test_get_shows_stored_values_escaped(
    cli: Callable[..., Result], db_path: Path, hostile: str, args: list[str]
) -> None:
    ok(cli("block", "--id", hostile, "--reason", "check"), strip=False)  # a blocked-event row too
    text = shown(cli("get", "--id", hostile, *args))
    assert_no_raw_controls(text)
    assert "\\x1b]8;;http://evil\\x07" in text


@pytest.mark.parametrize(
    "command", [["list"], ["get", "--id", "MAIN"], ["latest", "-e", "staging"]]
)
def test_json_escapes_what_a_terminal_would_act_on_and_keeps_the_values(
    cli: Callable[..., Result], hostile: str, command: list[str]
) -> None:
    args = [hostile if word == "MAIN" else word for word in command]
    text = shown(cli(*args, "--format", "json"))
    assert_no_raw_controls(text)
    parsed = json.loads(text)
    one = (
        next(row for row in parsed if row["id"] == hostile) if isinstance(parsed, list) else parsed
    )
    for field, value in HOSTILE.items():
        if field != "blocked_reason":
            assert one[field] == value, field


MARKDOWN_PAYLOAD = "```\n# Approved\n[click](http://evil)"


def test_timeline_markdown_cannot_be_broken_out_of(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str], hostile: str
) -> None:
    craft(
        db_path,
        f"UPDATE deployments SET branch = '{MARKDOWN_PAYLOAD}' WHERE id = '{hostile}'",
        f"UPDATE deployments SET environment = 'prod|x{MARKDOWN_PAYLOAD}'"
        f" WHERE id = '{legit['login']}'",
    )
    text = shown(cli("timeline", "--format", "markdown"))
    assert_no_raw_controls(text)
    assert not any(
        "Approved" in line and line.lstrip().startswith("#") for line in text.splitlines()
    )
    assert "[click](" not in text
    assert "](http://evil)" not in text
    assert text.count("```") == 2  # the Mermaid block's own fences
    assert re.search(r"^```mermaid$", text, flags=re.MULTILINE)
    assert "prod|x" not in text  # a | would end a table cell
    assert text.count(" Approved") == 3  # both values are there, encoded: stats, lane, node
    mermaid = shown(cli("timeline"))
    assert_no_raw_controls(mermaid)
    assert "```" not in mermaid and "[click](" not in mermaid
    assert mermaid.count(" Approved") == 2


def test_timeline_html_escapes_stored_values(
    cli: Callable[..., Result], db_path: Path, hostile: str
) -> None:
    craft(
        db_path,
        f"UPDATE deployments SET environment = 'staging\" class=\"evil' WHERE id != '{hostile}'",
        "UPDATE deployments SET branch = '<script>alert(1)</script>\" class=\"evil'"
        f" WHERE id != '{hostile}'",
    )
    text = shown(cli("timeline", "--format", "html"))
    assert_no_raw_controls(text)
    assert 'class="evil' not in text
    assert "<script" not in text
    assert "staging&quot; class=&quot;evil" in text  # shown, as text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot; class=&quot;evil" in text


def test_a_stored_time_that_is_not_a_time_does_not_crash_anything(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str]
) -> None:
    craft(
        db_path,
        f"UPDATE deployments SET deployed_at = 'yesterday\x1b[2J' WHERE id = '{legit['main']}'",
        f"UPDATE deployments SET verified_at = '2026-13-45' WHERE id = '{legit['main']}'",
    )
    for args in (
        ["list"],
        ["list", "--wide"],
        ["list", "--format", "json"],
        ["get", "--id", legit["main"]],
        ["latest", "-e", "staging"],
        ["stats"],
        ["timeline"],
        ["timeline", "--format", "markdown"],
        ["timeline", "--format", "html"],
    ):
        text = shown(cli(*args))
        assert_no_raw_controls(text)
    assert legit["main"] in shown(cli("list"))


# -- 6. bidi controls are refused in input -------------------------------------------------


@pytest.mark.parametrize("mark", BIDI, ids=lambda mark: f"U+{ord(mark):04X}")
def test_bidi_in_a_branch_is_refused_and_nothing_is_written(
    cli: Callable[..., Result], db_path: Path, mark: str
) -> None:
    result = cli("record", "-e", "staging", "-b", f"hotfix/{mark}dexif-ton", "-c", sha("a", 2))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert mark not in result.stderr  # the refusal shows it escaped
    assert not db_path.exists()


@pytest.mark.parametrize(
    "option",
    ["--actor", "--note", "--override-gate", "--run-url"],
)
@pytest.mark.parametrize("mark", ["\u202e", "\u2067", "\u200f"], ids=["RLO", "RLI", "RLM"])
def test_bidi_in_record_text_is_refused(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str], option: str, mark: str
) -> None:
    value = f"http://example.com/{mark}x" if option == "--run-url" else f"abc{mark}def"
    before = stamp(db_path)
    result = cli("record", "-e", "staging", "-b", "main", "-c", sha("d", 2), option, value)
    assert result.exit_code == 2, result.output
    assert mark not in result.output
    assert stamp(db_path) == before


@pytest.mark.parametrize(
    "command",
    [
        ["verify", "--id", "LOGIN", "--status", "verified", "--by", "ci{mark}"],
        ["block", "--id", "LOGIN", "--reason", "bad {mark}build"],
        ["block", "--id", "LOGIN", "--reason", "bad", "--by", "{mark}me"],
        ["unblock", "--id", "MAIN", "--reason", "{mark}ok"],
        ["prune", "--keep", "0", "--by", "me{mark}"],
    ],
)
def test_bidi_in_other_commands_is_refused(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str], command: list[str]
) -> None:
    ok(cli("block", "--id", legit["main"], "--reason", "so that unblock has work"), strip=False)
    before = stamp(db_path)
    for mark in ("\u202e", "\u2066", "\u200e"):
        words = [
            legit["login"] if word == "LOGIN" else legit["main"] if word == "MAIN" else word
            for word in command
        ]
        result = cli(*(word.replace("{mark}", mark) for word in words))
        assert result.exit_code == 2, (command, result.output)
        assert stamp(db_path) == before


# -- 2. a verification note is stored, whatever it holds -------------------------------------


def stored_note(db_path: Path, deployment_id: str) -> tuple[str, str]:
    with closing(sqlite3.connect(db_path)) as db:
        status = db.execute(
            "SELECT status FROM deployments WHERE id = ?", (deployment_id,)
        ).fetchone()[0]
        note = db.execute(
            "SELECT note FROM events WHERE deployment_id = ? ORDER BY seq DESC LIMIT 1",
            (deployment_id,),
        ).fetchone()[0]
    return status, note


def test_verify_note_with_escapes_latin1_and_bidi_is_stored_escaped(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str]
) -> None:
    completed = run_tracker(
        "--db",
        str(db_path),
        "verify",
        "--id",
        legit["login"],
        "--status",
        "failed",
        b"--note",
        b"caf\xe9 \x1b[31mred\xe2\x80\xae",  # Latin-1, an escape sequence, then RLO in UTF-8
        text=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.decode().strip() == legit["login"]
    status, note = stored_note(db_path, legit["login"])
    assert status == "failed"
    assert_no_raw_controls(note)
    assert "\ufffd" not in note
    assert re.fullmatch(r"caf\\xe9 \\(x1b|u001b)\[31mred\\u202e", note), note
    # And it shows escaped, not raw, when read back.
    text = shown(cli("get", "--id", legit["login"]))
    assert_no_raw_controls(text)
    assert "caf\\xe9" in text


def test_verify_note_in_process_keeps_the_result(
    cli: Callable[..., Result], db_path: Path, legit: dict[str, str]
) -> None:
    note = "HTTP 500 \x1b]8;;http://evil\x07here\x1b]8;;\x07 \u202eokay"
    result = cli("verify", "--id", legit["login"], "--status", "failed", "--note", note)
    assert result.exit_code == 0, result.output
    status, stored = stored_note(db_path, legit["login"])
    assert status == "failed"
    assert_no_raw_controls(stored)
    assert "HTTP 500" in stored and "http://evil" in stored


# -- 9. --github-output that can't be written fails before anything is written --------------


def test_record_with_an_unwritable_github_output_writes_nothing(
    cli: Callable[..., Result], db_path: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = ["record", "-e", "staging", "-b", "main", "-c", sha("a", 3)]
    deployment_id = "main_aaaaaaa_20260101000000"
    result = cli(
        *args, "--id", deployment_id, "--github-output", env={"GITHUB_OUTPUT": str(folder)}
    )
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "GITHUB_OUTPUT" in result.stderr
    assert not db_path.exists()
    # On an existing database: no row.
    other = record(cli, "staging", "feature/login", sha("b", 3))
    before = stamp(db_path)
    result = cli(
        *args, "--id", deployment_id, "--github-output", env={"GITHUB_OUTPUT": str(folder)}
    )
    assert result.exit_code == 2
    assert stamp(db_path) == before
    # The retry, once the file can be written, records it once and reports it each time.
    output = tmp_path / "github_output"
    for attempt in range(2):
        result = cli(
            *args, "--id", deployment_id, "--github-output", env={"GITHUB_OUTPUT": str(output)}
        )
        assert result.exit_code == 0, result.output
        assert ("already recorded" in result.stderr) == (attempt == 1)
    reported = re.findall(r"^id<<(\S+)\n(.*)\n\1$", output.read_text(), flags=re.MULTILINE)
    assert [value for _, value in reported] == [deployment_id, deployment_id]
    with closing(sqlite3.connect(db_path)) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM deployments ORDER BY seq")]
    assert ids == [other, deployment_id]


@pytest.mark.parametrize(
    "command",
    [
        ["verify", "--id", "LOGIN", "--status", "verified"],
        ["block", "--id", "LOGIN", "--reason", "bad"],
        ["latest", "-e", "staging"],
        ["promote"],
    ],
)
def test_other_commands_with_an_unwritable_github_output_change_nothing(
    cli: Callable[..., Result],
    db_path: Path,
    legit: dict[str, str],
    tmp_path: Path,
    command: list[str],
) -> None:
    before = stamp(db_path)
    words = [legit["login"] if word == "LOGIN" else word for word in command]
    result = cli(*words, "--github-output", env={"GITHUB_OUTPUT": str(tmp_path)})
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert stamp(db_path) == before


def test_an_unwritable_github_output_file_is_refused(db_path: Path, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)  # the unprivileged process may create the database here...
    locked = tmp_path / "locked"
    locked.write_text("")
    locked.chmod(0o444)  # ...but not write this file: file permissions apply even from root
    completed = run_tracker(
        "--db", str(db_path), "record", "-e", "staging", "-b", "main", "-c", sha("a", 4),
        "--github-output", env={"GITHUB_OUTPUT": str(locked)}, unprivileged=True,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr
    assert "cannot write the GITHUB_OUTPUT file" in completed.stderr
    assert not db_path.exists()


def test_a_current_database_is_checked_without_rebuilding_the_schema(
    cli: Callable[..., Result], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exact-schema check compares with the copy kept in the module; rebuilding the schema
    from the migrations (a scratch database) is only for a mismatch. A new migration without a
    new copy would make every command 0.7 ms slower: this catches it."""
    record(cli, "staging", "main", sha("a", 9))
    opened: list[str] = []
    real_connect = sqlite3.connect

    def counting_connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(str(database))
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", counting_connect)
    dt.connect(str(db_path), write=False).close()
    dt.connect(str(db_path), write=True).close()
    assert ":memory:" not in opened and len(opened) == 2


# -- stored values are checked before they decide or are handed on (issue 17) ---------------

TAMPERED = {
    # A newline would start another output for a step that writes the tag on with echo.
    "image_tag": "good\nimage=evil.example.net/app:1",
    "branch": "main\nimage=evil.example.net/app:1",
    "commit_sha": "deadbeef; curl evil.example.net",
    "deployed_at": "yesterday",
    "run_url": "javascript:alert(1)",
    "rollback_of": "main_aaaaaaa_20260101000000\nimage=evil",
}


@pytest.mark.parametrize("field", sorted(TAMPERED))
@pytest.mark.parametrize("command", ["rollback-target", "promote"])
def test_a_tampered_value_never_decides_or_reaches_github_output(
    cli: Callable[..., Result], db_path: Path, tmp_path: Path, field: str, command: str
) -> None:
    older = record(cli, "staging", "main", sha("a", 1))
    newer = record(cli, "staging", "main", sha("b", 1))
    for deployment_id in (older, newer):
        ok(cli("verify", "--id", deployment_id, "--status", "verified"))
    # rollback-target would pick the older one, promote the newer one.
    chosen = older if command == "rollback-target" else newer
    args = ["-e", "staging"] if command == "rollback-target" else []
    output = tmp_path / "github_output"
    output.touch()
    clean = cli(command, *args, "--github-output", env={"GITHUB_OUTPUT": str(output)})
    assert clean.exit_code == 0, clean.output
    assert parse_github_output(output.read_text())["id"] == chosen
    output.write_text("")
    craft_values(db_path, chosen, {field: TAMPERED[field]})
    for extra in (["--github-output"], ["--field", "image_tag"], []):
        result = cli(command, *args, *extra, env={"GITHUB_OUTPUT": str(output)})
        assert result.exit_code == 1, (extra, result.output)
        assert result.stdout == ""
        assert result.stderr.startswith("Error: the history was altered: deployment")
        assert f"has a {field} the tracker never writes" in result.stderr
        assert result.stderr.count("\n") == 1
        assert "evil" not in result.stderr.replace("\\n", "")[: result.stderr.find("(")]
    assert output.read_text() == ""


def craft_values(db_path: Path, deployment_id: str, values: dict[str, str]) -> None:
    assignments = ", ".join(f"{field} = :{field}" for field in values)
    craft_with = {**values, "id": deployment_id}
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute("PRAGMA foreign_keys = OFF")
        db.execute(f"UPDATE deployments SET {assignments} WHERE id = :id", craft_with)
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


def test_csv_cells_a_spreadsheet_would_run_start_with_a_quote(
    cli: Callable[..., Result], db_path: Path
) -> None:
    deployment_id = record(
        cli, "staging", "main", sha("a", 1), "--actor", "@SUM(A1)", "--note", "=1+1"
    )
    craft_values(db_path, deployment_id, {"verified_by": "+cmd|' /C calc'!A0"})
    rows = list(csv.DictReader(io.StringIO(shown(cli("list", "-o", "csv")))))
    assert rows[0]["actor"] == "'@SUM(A1)"
    assert rows[0]["note"] == "'=1+1"
    assert rows[0]["verified_by"] == "'+cmd|' /C calc'!A0"
    assert rows[0]["id"] == deployment_id
    # TSV stays exact (for scripts), and so does JSON.
    tsv = shown(cli("list", "-o", "tsv")).splitlines()
    assert tsv[1].split("\t")[dt.FIELDS.index("note")] == "=1+1"
    assert json.loads(shown(cli("get", deployment_id, "-o", "json")))["actor"] == "@SUM(A1)"


@pytest.mark.parametrize("mark", ["\u200b", "\u2060", "\ufeff", "\U000e0041", "\u00ad"])
def test_invisible_format_characters_are_refused_in_input_and_escaped_in_output(
    cli: Callable[..., Result], db_path: Path, mark: str
) -> None:
    refused = cli("record", "-e", "staging", "-b", f"main{mark}", "-c", sha("a", 1))
    assert refused.exit_code == 2
    assert "branch must not contain control or bidi characters" in refused.stderr
    assert not db_path.exists()
    deployment_id = record(cli, "staging", "main", sha("a", 1))
    craft_values(db_path, deployment_id, {"actor": f"ad{mark}min", "note": f"fine{mark}"})
    for args in (["list", "--wide"], ["get", deployment_id], ["list", "-o", "csv"]):
        text = shown(cli(*args))
        assert mark not in text, args
        assert ascii(mark)[1:-1] in text, args
