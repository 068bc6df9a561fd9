"""Issue #13: the habits of gh, helm and kubectl.

Ids as arguments (or any unique start of one, or a commit's short sha), -o/--json/--field
output, exact TSV, a table that fits a terminal, the cut-list notice on a terminal only,
shell completion from the database, and the environment from the environment.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import Result
from helpers import TRACKER_SCRIPT, ok, process_env, record, run_tracker, sha

import deployment_tracker as dt


@pytest.fixture(autouse=True)
def no_caller_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own tracker and Actions settings don't reach these tests."""
    for name in ("DEPLOYMENT_TRACKER_DB", "DEPLOYMENT_TRACKER_ENVIRONMENT", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)


# -- a small history ----------------------------------------------------------------


@pytest.fixture
def history(cli: Callable[..., Result]) -> dict[str, str]:
    """staging: main (verified), feature/login (verified), fix/typo (deployed, running)."""
    ids = {
        "main": record(cli, "staging", "main", sha("a", 1)),
        "login": record(cli, "staging", "feature/login", sha("b", 1)),
    }
    ok(cli("verify", ids["main"], "--status", "verified"), strip=False)
    ok(cli("verify", ids["login"], "--status", "verified"), strip=False)
    ids["typo"] = record(cli, "staging", "fix/typo", sha("c", 1))
    return ids


def only_id(result: Result) -> str:
    return ok(result)


# Each command that names a deployment, with what it needs besides the id.
ID_COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    # name: (words before the id, words after it, which deployment)
    "get": (("get",), (), "login"),
    "verify": (("verify",), ("--status", "verified"), "typo"),
    "block": (("block",), ("--reason", "bad build"), "login"),
    "unblock": (("unblock",), (), "login"),
    "rollback-target": (("rollback-target", "-e", "staging"), (), "main"),
    "promote": (("promote",), (), "main"),
}


@pytest.mark.parametrize("command", ID_COMMANDS)
def test_id_as_argument_and_as_option(
    cli: Callable[..., Result], history: dict[str, str], command: str
) -> None:
    before, after, which = ID_COMMANDS[command]
    deployment_id = history[which]
    by_argument = only_id(cli(*before, deployment_id, *after, "--field", "id"))
    by_option = only_id(cli(*before, "--id", deployment_id, *after, "--field", "id"))
    both_same = only_id(cli(*before, deployment_id, "--id", deployment_id, *after, "--field", "id"))
    assert by_argument == by_option == both_same == deployment_id


@pytest.mark.parametrize("command", ID_COMMANDS)
def test_two_different_ids_are_a_usage_error(
    cli: Callable[..., Result], history: dict[str, str], db_path: Path, command: str
) -> None:
    before, after, which = ID_COMMANDS[command]
    other = next(value for key, value in history.items() if key != which)
    snapshot = db_path.read_bytes()
    result = cli(*before, history[which], "--id", other, *after)
    assert result.exit_code == 2, result.output
    assert "two different deployments" in result.stderr
    assert result.stdout == ""
    assert db_path.read_bytes() == snapshot


@pytest.mark.parametrize("command", ["get", "verify", "block", "unblock"])
def test_a_required_id_missing_is_a_usage_error(
    cli: Callable[..., Result], history: dict[str, str], command: str
) -> None:
    before, after, _ = ID_COMMANDS[command]
    result = cli(*before, *after)
    assert result.exit_code == 2
    assert "Missing argument 'ID'" in result.stderr


def test_any_unique_start_of_an_id_names_it(
    cli: Callable[..., Result], history: dict[str, str]
) -> None:
    login = history["login"]
    for length in (2, 3, 8, len("feature-login_bbbbbbb"), len(login) - 1):
        assert only_id(cli("get", login[:length], "--field", "id")) == login
    assert only_id(cli("verify", "fix", "--status", "failed")) == history["typo"]
    assert ok(cli("get", history["typo"], "--field", "status"), strip=False) == "failed\n"


def test_a_commits_short_sha_names_its_deployment_in_an_environment(
    cli: Callable[..., Result],
) -> None:
    commit = sha("d", 7)
    in_staging = record(cli, "staging", "main", commit)
    ok(cli("verify", in_staging, "--status", "verified"), strip=False)
    in_production = record(cli, "production", "release", commit, "--gates", "none")
    short = commit[:7]
    assert only_id(cli("get", short, "-e", "production", "--field", "id")) == in_production
    assert only_id(cli("get", short, "-e", "staging", "--field", "id")) == in_staging
    assert only_id(cli("get", commit[:10], "-e", "staging", "--field", "id")) == in_staging
    # Without an environment the short sha names two deployments.
    result = cli("get", short)
    assert result.exit_code == 1
    assert "ambiguous" in result.stderr
    assert in_staging in result.stderr and in_production in result.stderr


def test_an_ambiguous_start_lists_the_candidates(
    cli: Callable[..., Result], history: dict[str, str], db_path: Path
) -> None:
    second_main = record(cli, "staging", "main", sha("e", 2))
    snapshot = db_path.read_bytes()
    for command in (["get", "main"], ["block", "main", "--reason", "r"]):
        result = cli(*command)
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1
        assert "main is ambiguous" in result.stderr
        assert history["main"] in result.stderr and second_main in result.stderr
        assert history["login"] not in result.stderr
    assert db_path.read_bytes() == snapshot


def test_nothing_matching_is_not_found(cli: Callable[..., Result], history: dict[str, str]) -> None:
    result = cli("get", "zzz")
    assert result.exit_code == 1
    assert "zzz" in result.stderr


def test_a_full_id_is_never_taken_as_the_start_of_another(
    cli: Callable[..., Result],
) -> None:
    # A branch named like an id makes an id that starts with a full, unrecorded id.
    full_but_absent = "hotfix_1234567_20260101000000"
    longer = record(cli, "staging", full_but_absent, sha("f", 1))
    assert longer.startswith(full_but_absent + "_")
    result = cli("get", full_but_absent)
    assert result.exit_code == 1, result.output
    assert longer not in result.stdout
    # ...while a start that is not a full id still finds it.
    assert only_id(cli("get", full_but_absent[:-1], "--field", "id")) == longer


# -- output: -o, --json, --field, --no-headers -------------------------------------


def test_output_format_has_three_spellings(
    cli: Callable[..., Result], history: dict[str, str]
) -> None:
    for command in (["list"], ["get", history["main"]], ["latest", "-e", "staging"]):
        parsed = [
            json.loads(ok(cli(*command, flag, "json"), strip=False))
            for flag in ("-o", "--output", "--format")
        ]
        assert parsed[0] == parsed[1] == parsed[2]
    listed = json.loads(ok(cli("list", "-o", "json"), strip=False))
    assert [row["id"] for row in listed] == [history["typo"], history["login"], history["main"]]
    assert set(listed[0]) == set(dt.FIELDS)
    shown = json.loads(ok(cli("get", history["main"], "-o", "json"), strip=False))
    assert [event["status"] for event in shown["events"]] == ["deployed", "verified"]


def test_json_with_fields_like_gh(cli: Callable[..., Result], history: dict[str, str]) -> None:
    listed = json.loads(ok(cli("list", "--json", "id,status"), strip=False))
    assert listed == [
        {"id": history["typo"], "status": "deployed"},
        {"id": history["login"], "status": "verified"},
        {"id": history["main"], "status": "verified"},
    ]
    assert all(list(row) == ["id", "status"] for row in listed)
    one = json.loads(ok(cli("get", history["login"], "--json", "status,id"), strip=False))
    assert one == {"status": "verified", "id": history["login"]}
    assert list(one) == ["status", "id"]
    latest = json.loads(ok(cli("latest", "-e", "staging", "--json", "branch"), strip=False))
    assert latest == {"branch": "feature/login"}


def test_field_gives_bare_tab_separated_values(
    cli: Callable[..., Result], history: dict[str, str]
) -> None:
    assert ok(cli("list", "--field", "id,status"), strip=False) == (
        f"{history['typo']}\tdeployed\n{history['login']}\tverified\n{history['main']}\tverified\n"
    )
    assert ok(
        cli("get", history["login"], "--field", "branch,commit_sha,verified_by"), strip=False
    ) == (f"feature/login\t{sha('b', 1)}\t\n")
    assert (
        ok(cli("latest", "-e", "staging", "--field", "id"), strip=False) == history["login"] + "\n"
    )


@pytest.mark.parametrize("option", ["--field", "--json"])
@pytest.mark.parametrize(
    "command",
    [
        ["list"],
        ["get", "main"],
        ["latest", "-e", "staging"],
        ["new-id", "-b", "x", "-c", "abcdef1"],
    ],
)
def test_an_unknown_field_is_a_usage_error(
    cli: Callable[..., Result], history: dict[str, str], option: str, command: list[str]
) -> None:
    for fields in ("nope", "id,nope", ""):
        result = cli(*command, option, fields)
        assert result.exit_code == 2, (fields, result.output)
        assert result.stdout == ""


def test_field_and_json_together_are_a_usage_error(
    cli: Callable[..., Result], history: dict[str, str]
) -> None:
    assert cli("list", "--field", "id", "--json", "id").exit_code == 2


def test_no_headers_for_table_tsv_and_csv(
    cli: Callable[..., Result], history: dict[str, str]
) -> None:
    newest_first = [history["typo"], history["login"], history["main"]]
    table = ok(cli("list", "--no-headers"), strip=False).splitlines()
    rows = [line for line in table if not set(line) <= {"-", " "}]
    assert [row.split()[0] for row in rows] == newest_first
    assert not any("environment" in line for line in table)
    with_headers = ok(cli("list"), strip=False).splitlines()
    assert with_headers[0].split()[:2] == ["id", "environment"]
    for fmt in ("tsv", "csv"):
        text = ok(cli("list", "-o", fmt, "--no-headers"), strip=False)
        delimiter = "\t" if fmt == "tsv" else ","
        parsed = list(csv.reader(io.StringIO(text), delimiter=delimiter))
        assert [row[0] for row in parsed] == newest_first
        headed = list(
            csv.reader(io.StringIO(ok(cli("list", "-o", fmt), strip=False)), delimiter=delimiter)
        )
        assert headed[0] == list(dt.FIELDS)
        assert headed[1:] == parsed


# -- list tells a terminal when it cut the list ---------------------------------------


def run_with_stderr_on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run the console script with stderr on a pseudo-terminal; stdout stays a pipe."""
    import pty  # noqa: F401 (POSIX only; the skip below says so)

    leader, follower = os.openpty()
    try:
        completed = subprocess.run(
            [str(TRACKER_SCRIPT), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: no process holds the terminal any more
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    return completed.returncode, completed.stdout, seen


@pytest.fixture
def many(cli: Callable[..., Result], db_path: Path) -> Path:
    for index in range(27):
        record(cli, "staging", f"b{index}", sha("1", index))
    return db_path


CUT_NOTICE = "20 of 27 shown; --all or --limit N for more"


@pytest.mark.skipif(os.name != "posix", reason="needs a pseudo-terminal")
def test_list_tells_a_terminal_when_it_cut_the_list(many: Path) -> None:
    env = process_env(DEPLOYMENT_TRACKER_DB=str(many))
    code, out, err = run_with_stderr_on_a_terminal("list", "-o", "tsv", "--no-headers", env=env)
    assert code == 0
    assert len(out.decode().splitlines()) == 20
    assert err.decode().replace("\r\n", "\n") == CUT_NOTICE + "\n"
    code, _, err = run_with_stderr_on_a_terminal("list", "-n", "5", env=env)
    assert (code, err.decode().strip()) == (0, "5 of 27 shown; --all or --limit N for more")
    # Nothing was cut: nothing to tell.
    for args in (["list", "--all"], ["list", "-n", "27"], ["list", "-n", "30"]):
        code, out, err = run_with_stderr_on_a_terminal(*args, "--field", "id", env=env)
        assert (code, err) == (0, b""), args
        assert len(out.decode().splitlines()) == 27
    code, _, err = run_with_stderr_on_a_terminal("list", "--branch", "b3", env=env)
    assert (code, err) == (0, b"")


def test_list_tells_nothing_when_stderr_is_not_a_terminal(
    many: Path, cli: Callable[..., Result]
) -> None:
    result = cli("list")
    assert result.exit_code == 0 and result.stderr == ""
    assert len(ok(cli("list", "--field", "id"), strip=False).splitlines()) == 20
    completed = run_tracker("--db", str(many), "list", text=False)
    assert completed.returncode == 0
    assert completed.stderr == b""


# -- TSV exact ------------------------------------------------------------------------


def test_tsv_cells_are_exact_and_escaped(cli: Callable[..., Result], db_path: Path) -> None:
    tricky = record(cli, "staging", "main", sha("a", 3), "--note", "a\tb\nc\\d")
    plain = record(cli, "production", "feature/login", sha("b", 3), "--gates", "none")
    text = ok(cli("list", "-o", "tsv"), strip=False)
    rows = text.split("\n")
    assert rows[-1] == ""
    rows = rows[:-1]
    assert len(rows) == 3  # the header and one line per deployment, whatever the values hold
    assert all(row.count("\t") == len(dt.FIELDS) - 1 for row in rows)
    assert rows[0].split("\t") == list(dt.FIELDS)
    cells = [dict(zip(dt.FIELDS, row.split("\t"))) for row in rows[1:]]
    assert [cell["id"] for cell in cells] == [plain, tricky]
    assert cells[1]["note"] == "a\\tb\\nc\\\\d"
    assert cells[0]["note"] == "" and cells[0]["verified_at"] == ""  # empty cells are kept
    assert cells[0]["branch"] == "feature/login"
    assert cells[0]["environment"] == "production" and cells[1]["environment"] == "staging"
    # What `cut -f2` would take is exactly the value.
    if shutil.which("cut"):
        cut = subprocess.run(["cut", "-f2"], input=text, capture_output=True, text=True, check=True)
        assert cut.stdout == "environment\nproduction\nstaging\n"
        cut = subprocess.run(
            ["cut", "-f14"], input=text, capture_output=True, text=True, check=True
        )
        assert cut.stdout.splitlines() == ["note", "", "a\\tb\\nc\\\\d"]
    # A carriage return (which `record` refuses, but a pushed file may hold) too.
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute("UPDATE deployments SET actor = 'x\ry' WHERE id = ?", (plain,))
    row = ok(cli("list", "-o", "tsv", "--no-headers"), strip=False).split("\n")[0]
    assert row.count("\t") == len(dt.FIELDS) - 1
    assert row.split("\t")[dt.FIELDS.index("actor")] == "x\\ry"
    # --field is the same escaping, on fewer columns.
    assert ok(cli("get", tricky, "--field", "note,environment,verified_by"), strip=False) == (
        "a\\tb\\nc\\\\d\tstaging\t\n"
    )


# -- the default table ----------------------------------------------------------------


def typical_history(db_path: Path) -> dict[str, str]:
    """main and feature/login, deployed hours and days ago, checked by people."""
    now = dt.utc_now()
    ids = {}
    with closing(dt.connect(str(db_path), write=True)) as db:
        for key, environment, branch, digit, hours_ago, status in (
            ("old", "staging", "main", "a", 50, "verified"),
            ("login", "staging", "feature/login", "b", 5, "failed"),
            ("main", "staging", "main", "c", 3, "verified"),
            ("prod", "production", "main", "c", 2, "verified"),
        ):
            moment = now - timedelta(hours=hours_ago)
            request = dt.RecordRequest(
                environment=environment, branch=branch, commit_sha=sha(digit, 9), actor="octocat"
            ).checked()
            record_, _, _ = dt.record_deployment(db, request, gates={}, now=moment)
            dt.verify_deployment(db, record_["id"], status, by="octocat", now=moment)
            ids[key] = record_["id"]
    return ids


def table_rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines()[2:]}


def test_default_table_fits_100_columns(cli: Callable[..., Result], db_path: Path) -> None:
    ids = typical_history(db_path)
    ok(cli("block", ids["old"], "--reason", "leaks memory"), strip=False)
    text = ok(cli("list"), strip=False)
    lines = text.splitlines()
    assert lines[0].split() == list(dt.TABLE_COLUMNS)
    assert list(dt.TABLE_COLUMNS) == [
        "id",
        "environment",
        "commit",
        "status",
        "age",
        "verified_by",
        "marks",
    ]
    assert max(len(line) for line in lines) <= 100, text
    rows = table_rows(text)
    assert rows[ids["main"]] == [
        ids["main"],
        "staging",
        "ccccccc",
        "verified",
        "3h",
        "ago",
        "octocat",
    ]
    assert rows[ids["login"]][3:7] == ["failed", "5h", "ago", "octocat"]
    assert rows[ids["prod"]][1:6] == ["production", "ccccccc", "verified", "2h", "ago"]
    assert rows[ids["old"]][4:] == ["2d", "ago", "octocat", "BLOCKED"]
    assert "image" not in lines[0].split()


def test_age_column_of_a_fresh_record(cli: Callable[..., Result]) -> None:
    deployment_id = record(cli, "staging", "main", sha("a", 4))
    row = table_rows(ok(cli("list"), strip=False))[deployment_id]
    assert re.fullmatch(r"\d{1,2}s", row[4]) and row[5] == "ago", row
    assert row[1:4] == ["staging", "aaaaaaa", "deployed"]


def test_marks_and_the_image_column(cli: Callable[..., Result]) -> None:
    first = record(cli, "staging", "main", sha("a", 5))
    ok(cli("verify", first, "--status", "verified"), strip=False)
    second = record(cli, "staging", "feature/login", sha("b", 5))
    plain = ok(cli("list"), strip=False).splitlines()
    assert "image" not in plain[0].split()  # every image is its id
    # Other branch names: a second record of main's commit in the same second would get its id.
    rollback = record(cli, "staging", "rollback/main", sha("a", 5), "--rollback-of", first)
    promoted = only_id(cli("promote", first, "--field", "id"))
    assert promoted == first
    in_production = ok(
        cli("record", "-e", "production", "-b", "release/main", "--promoted-from", first),
        strip=False,
    ).strip()
    bypass = record(cli, "production", "hotfix/now", sha("d", 5))
    ok(cli("block", second, "--reason", "bad"), strip=False)
    text = ok(cli("list"), strip=False)
    header = text.splitlines()[0].split()
    assert header == [
        "id",
        "environment",
        "commit",
        "image",
        "status",
        "age",
        "verified_by",
        "marks",
    ]
    rows = table_rows(text)
    assert rows[rollback][3] == first and rows[rollback][-1] == "rollback"
    assert rows[in_production][3] == first and rows[in_production][-1] == "promoted"
    assert rows[second][-1] == "BLOCKED"
    assert rows[bypass][-1] == "gate-bypassed"
    assert rows[first][-1] == "ago"  # no marks
    assert rows[first][3:5] == ["(its", "id)"]  # said, not blank: blank read as "no image"


def test_wide_shows_every_field(cli: Callable[..., Result], history: dict[str, str]) -> None:
    text = ok(cli("list", "--wide"), strip=False)
    assert text.splitlines()[0].split() == list(dt.FIELDS)
    assert sha("a", 1) in text  # the full commit, not the short one
    assert ok(cli("list"), strip=False).count(sha("a", 1)) == 0


# -- shell completion --------------------------------------------------------------------


def complete(
    shell: str, words: str, db: Path | str | None, cword: int | str | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = process_env(_DEPLOYMENT_TRACKER_COMPLETE=f"{shell}_complete", COMP_WORDS=words)
    if db is not None:
        env["DEPLOYMENT_TRACKER_DB"] = str(db)
    if shell == "fish":
        env["COMP_CWORD"] = str(cword if cword is not None else "")
    else:
        env["COMP_CWORD"] = str(cword if cword is not None else len(words.split(" ")) - 1)
    return run_tracker(env=env, text=False)


def candidates(shell: str, completed: subprocess.CompletedProcess[bytes]) -> list[str]:
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == b""
    text = completed.stdout.decode()
    if text in ("", "\n"):  # click prints an empty line when nothing completes
        return []
    if shell == "zsh":
        parts = text.split("\n")
        triples = [parts[index : index + 3] for index in range(0, len(parts) - 1, 3)]
        assert all(kind == "plain" for kind, _, _ in triples), text
        return [value for _, value, _ in triples]
    values = []
    for line in text.splitlines():
        kind, _, value = line.partition(",")
        assert kind == "plain", text
        values.append(value.split("\t")[0])
    return values


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_offers_no_stored_value_the_shell_would_run(
    shell: str, cli: Callable[..., Result], history: dict[str, str], db_path: Path
) -> None:
    """The shell puts a candidate on the command line as it is: `$(...)` would run."""
    record(cli, "staging", "x$(touch${IFS}pwned)", sha("d", 1))
    record(cli, "staging", "y;reboot", sha("d", 2))
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute("UPDATE deployments SET branch = 'z\nrm -rf ~' WHERE branch = 'main'")
    name = "deployment-tracker"
    got = candidates(shell, complete(shell, f"{name} list --branch ", db_path))
    assert got == ["feature/login", "fix/typo"]
    got = candidates(shell, complete(shell, f"{name} get ", db_path))
    assert got and all(re.fullmatch(r"[A-Za-z0-9_.-]+", value) for value in got)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_of_ids_environments_branches_statuses(
    shell: str, cli: Callable[..., Result], history: dict[str, str], db_path: Path
) -> None:
    record(cli, "production", "release", sha("a", 1), "--gates", "none")
    newest_first = ids_newest_first(db_path)
    name = "deployment-tracker"
    got = candidates(shell, complete(shell, f"{name} get ", db_path))
    assert got == newest_first
    assert candidates(shell, complete(shell, f"{name} get feat", db_path)) == [history["login"]]
    assert candidates(shell, complete(shell, f"{name} verify ", db_path)) == newest_first
    assert candidates(shell, complete(shell, f"{name} block --id ma", db_path)) == sorted(
        i for i in newest_first if i.startswith("ma")
    )
    assert candidates(shell, complete(shell, f"{name} list -e ", db_path)) == [
        "production",
        "staging",
    ]
    assert candidates(shell, complete(shell, f"{name} latest -e st", db_path)) == ["staging"]
    assert candidates(shell, complete(shell, f"{name} list --branch ", db_path)) == [
        "feature/login",
        "fix/typo",
        "main",
        "release",
    ]
    assert candidates(shell, complete(shell, f"{name} list --branch f", db_path)) == [
        "feature/login",
        "fix/typo",
    ]
    assert sorted(candidates(shell, complete(shell, f"{name} list --status ", db_path))) == sorted(
        dt.STATUSES
    )
    # The database named on the command line is the one read.
    other = db_path.with_name("other.db")
    got = candidates(shell, complete(shell, f"{name} --db {db_path} get ", other))
    assert got == newest_first


def ids_newest_first(db_path: Path) -> list[str]:
    with closing(sqlite3.connect(db_path)) as db:
        return [row[0] for row in db.execute("SELECT id FROM deployments ORDER BY seq DESC")]


def test_fish_completion(
    cli: Callable[..., Result], history: dict[str, str], db_path: Path
) -> None:
    got = candidates("fish", complete("fish", "deployment-tracker get ", db_path, ""))
    assert got == ids_newest_first(db_path)
    got = candidates("fish", complete("fish", "deployment-tracker list -e s", db_path, "s"))
    assert got == ["staging"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_without_a_readable_database_completes_nothing(
    shell: str, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.db"
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    unreadable = tmp_path / "folder.db"
    unreadable.mkdir()
    for db in (missing, garbage, unreadable):
        for words in ("deployment-tracker get ", "deployment-tracker list -e "):
            cword = "" if shell == "fish" else None
            assert candidates(shell, complete(shell, words, db, cword)) == [], (db, words)
    assert not missing.exists()
    assert garbage.read_bytes() == b"this is not a database at all" * 100


def test_completion_script_is_printed() -> None:
    for shell in ("bash", "zsh", "fish"):
        completed = run_tracker(
            env=process_env(_DEPLOYMENT_TRACKER_COMPLETE=f"{shell}_source"), text=False
        )
        assert completed.returncode == 0
        script = completed.stdout.decode()
        assert f"_DEPLOYMENT_TRACKER_COMPLETE={shell}_complete" in script
        assert "deployment-tracker" in script
    bash = run_tracker(
        env=process_env(_DEPLOYMENT_TRACKER_COMPLETE="bash_source"), text=False
    ).stdout.decode()
    assert "complete -o nosort -F _deployment_tracker_completion deployment-tracker" in bash


# -- the environment from the environment ------------------------------------------------


def test_environment_variable_is_the_default_environment(
    cli: Callable[..., Result], db_path: Path
) -> None:
    staging = {"DEPLOYMENT_TRACKER_ENVIRONMENT": "staging"}
    in_staging = ok(cli("record", "-b", "main", "-c", sha("a", 6), env=staging))
    in_production = ok(
        cli(
            "record",
            "-e",
            "production",
            "-b",
            "main",
            "-c",
            sha("b", 6),
            "--gates",
            "none",
            env=staging,
        ),
        strip=False,
    ).strip()
    assert ok(cli("get", in_staging, "--field", "environment"), strip=False) == "staging\n"
    assert ok(cli("get", in_production, "--field", "environment"), strip=False) == "production\n"
    assert ok(cli("list", "--field", "id", env=staging), strip=False) == in_staging + "\n"
    assert (
        ok(cli("list", "-e", "production", "--field", "id", env=staging), strip=False)
        == in_production + "\n"
    )
    ok(cli("verify", in_staging, "--status", "verified"), strip=False)
    assert ok(cli("latest", "--field", "id", env=staging), strip=False) == in_staging + "\n"
    assert (
        ok(
            cli(
                "latest",
                "--status",
                "any",
                "--field",
                "id",
                env={"DEPLOYMENT_TRACKER_ENVIRONMENT": "production"},
            ),
            strip=False,
        )
        == in_production + "\n"
    )
    # With no variable, latest and record still need one.
    assert cli("latest").exit_code == 2
    assert cli("record", "-b", "main", "-c", sha("c", 6)).exit_code == 2
    # A bad value in the variable is refused like a bad option.
    assert cli("list", env={"DEPLOYMENT_TRACKER_ENVIRONMENT": "Not Valid"}).exit_code == 2
    # The variable is documented where the option is.
    assert "DEPLOYMENT_TRACKER_ENVIRONMENT" in ok(cli("list", "--help"), strip=False)


def test_environment_variable_in_a_real_process(cli: Callable[..., Result], db_path: Path) -> None:
    deployment_id = record(cli, "production", "main", sha("a", 8), "--gates", "none")
    env = process_env(
        DEPLOYMENT_TRACKER_DB=str(db_path), DEPLOYMENT_TRACKER_ENVIRONMENT="production"
    )
    completed = run_tracker("latest", "--status", "any", "--field", "id", env=env, text=False)
    assert (completed.returncode, completed.stdout.decode()) == (0, deployment_id + "\n")


def test_override_gate_help_does_not_suggest_the_variable_overrides(
    cli: Callable[..., Result],
) -> None:
    text = " ".join(ok(cli("record", "--help"), strip=False).split())
    start = text.index("--override-gate")
    entry = text[start : text.index("--gates", start)]
    assert dt.GATES_ENV_VAR not in entry
    assert "env" not in entry.lower()
    assert "REASON" in entry
