"""`.github/scripts/deployment_history.py`: the deployment history on a git branch.

Real processes only: the script run by this Python, the installed `deployment-tracker`, real
git against bare repositories on disk, and real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from history_helpers import (
    BIN,
    HISTORY_BRANCH,
    HISTORY_SCRIPT,
    TRACKER,
    Loopback,
    answer,
    bare_remote,
    clone,
    fake_git,
    git,
    history_commits,
    history_db,
    history_records,
    history_tip,
    integrity,
    protect,
    put_history_file,
    tracker,
    with_history,
)

import deployment_tracker as dt

SHA_A = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
SHA_B = "b1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
ID_A = "main_a1b2c3d_20260101100000"
ID_B = "feature-x_b1b2c3d_20260101110000"
ERROR = "deployment-history: error: "


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return bare_remote(tmp_path / "remote.git")


@pytest.fixture
def work(tmp_path: Path, remote: Path) -> Path:
    return clone(remote, tmp_path / "work")


@pytest.fixture
def loopback() -> Iterator[list[Loopback]]:
    servers: list[Loopback] = []
    yield servers
    for server in servers:
        server.close()


def record(
    work: Path, *extra: str, env: dict[str, str] | None = None, sha: str = SHA_A, **options: str
) -> subprocess.CompletedProcess[str]:
    """`deployment_history.py [OPTIONS] -- record --environment staging ... EXTRA`."""
    flags = [item for name, value in options.items() for item in (f"--{name}", value)]
    args = ["record", "--environment", "staging", "--branch", "main", "--commit", sha, *extra]
    return with_history(*flags, "--", *args, cwd=work, env=env)


def record_a(work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return record(work, "--id", ID_A, *extra)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR), result.stderr
    return lines[0]


# --------------------------------------------------------------------------
# What the workflow relies on
# --------------------------------------------------------------------------


def test_first_write_creates_an_orphan_branch_and_leaves_the_work_tree_alone(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    (work / "app.txt").write_text("v1\n")
    git("add", "app.txt", cwd=work)
    git("commit", "--quiet", "-m", "app", cwd=work)
    head_before = git("rev-parse", "HEAD", cwd=work)

    result = record_a(work)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ID_A
    commits = history_commits(remote)
    assert len(commits) == 1
    assert git("--git-dir", str(remote), "rev-list", "--parents", "-1", commits[0]) == commits[0]
    files = git("--git-dir", str(remote), "ls-tree", "--name-only", HISTORY_BRANCH).split()
    assert sorted(files) == ["README.md", "deployments.db"]
    assert git("rev-parse", "HEAD", cwd=work) == head_before
    assert git("status", "--porcelain", cwd=work) == ""
    assert git("branch", "--list", HISTORY_BRANCH, cwd=work) == ""
    assert git("for-each-ref", "refs/deployment-history", cwd=work) == ""
    assert git("--git-dir", str(remote), "for-each-ref", "--format=%(refname)") == (
        f"refs/heads/{HISTORY_BRANCH}"
    )
    records = history_records(remote, tmp_path)
    assert [(r["id"], r["status"]) for r in records] == [(ID_A, "deployed")]


def test_the_committed_database_is_self_contained(work: Path, remote: Path, tmp_path: Path) -> None:
    assert record_a(work).returncode == 0
    db = history_db(remote, tmp_path / "copy.db")
    header = db.read_bytes()[:100]
    assert header.startswith(b"SQLite format 3\x00")
    # Bytes 18 and 19 are 1 in rollback-journal mode (2 would mean WAL, needing a -wal file).
    assert header[18:20] == b"\x01\x01"
    assert integrity(db) == "ok"


def test_writes_build_a_linear_history_and_reads_push_nothing(work: Path, remote: Path) -> None:
    assert record_a(work).returncode == 0
    verify = ["verify", "--id", ID_A, "--status", "verified", "--by", "smoke"]
    verified = with_history("--", *verify, cwd=work)
    assert verified.returncode == 0, verified.stderr
    assert len(history_commits(remote)) == 2
    for args in (
        ["list"],
        ["latest", "--environment", "staging"],
        ["get", "--id", ID_A],
        ["new-id", "--branch", "main", "--commit", SHA_A],
    ):
        result = with_history("--", *args, cwd=work)
        assert result.returncode == 0, (args, result.stderr)
    latest = with_history("--", "latest", "-e", "staging", "--field", "status", cwd=work)
    assert latest.stdout.strip() == "verified"
    assert len(history_commits(remote)) == 2


def test_a_repeated_identical_record_is_a_success_without_a_commit(
    work: Path, remote: Path
) -> None:
    assert record_a(work).returncode == 0
    again = record_a(work)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == ID_A
    assert "already recorded" in again.stderr
    assert len(history_commits(remote)) == 1


def test_reading_before_any_history_exists_fails_clearly(work: Path, remote: Path) -> None:
    result = with_history("--", "rollback-target", "--environment", "staging", cwd=work)
    assert result.returncode == 1
    assert one_error_line(result) == (
        f"{ERROR}no deployment history yet: origin has no branch {HISTORY_BRANCH}"
    )
    assert history_commits(remote) == []


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["verify", "--id", ID_B, "--status", "verified"], 1),
        (["record", "--environment", "Bad Env", "--branch", "main", "--commit", SHA_A], 2),
        (["record", "--bogus"], 2),
        (["no-such-command"], 2),
    ],
)
def test_a_failing_command_is_passed_on_and_not_retried(
    work: Path, remote: Path, args: list[str], code: int
) -> None:
    assert record_a(work).returncode == 0
    tip = history_tip(remote)
    result = with_history("--attempts", "5", "--backoff", "2", "--", *args, cwd=work)
    assert result.returncode == code
    assert result.stderr.startswith("Error: "), result.stderr  # the tracker's own line
    assert len(result.stderr.strip().splitlines()) == 1  # no second attempt
    assert history_tip(remote) == tip


@pytest.mark.parametrize(
    ("options", "command", "message"),
    [
        (["--remote=--upload-pack=touch /tmp/pwned"], ["list"], "invalid history remote"),
        (["--branch", "a..b"], ["list"], "invalid history branch"),
        (["--branch=-x"], ["list"], "invalid history branch"),
        (["--attempts", "0"], ["list"], "--attempts"),
        (["--backoff", "soon"], ["list"], "--backoff"),
        (["--bogus"], ["list"], "--bogus"),
        ([], ["--db", "other.db", "list"], "expected -- and a tracker subcommand"),
        ([], ["with-history", "--", "list"], "expected -- and a tracker subcommand"),
        ([], [], "expected -- and a tracker subcommand"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    work: Path, remote: Path, options: list[str], command: list[str], message: str
) -> None:
    result = with_history(*options, "--", *command, cwd=work)
    assert result.returncode == 2
    assert message in one_error_line(result)
    assert result.stdout == ""
    assert history_commits(remote) == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEPLOYMENT_HISTORY_MAX_BYTES": "lots"}, "DEPLOYMENT_HISTORY_MAX_BYTES must be a number"),
        ({"DEPLOYMENT_TRACKER_COMMAND": "'unclosed"}, "invalid tracker command"),
        ({"DEPLOYMENT_HISTORY_WRITE_DEADLINE": "soon"}, "DEPLOYMENT_HISTORY_WRITE_DEADLINE must"),
    ],
)
def test_bad_settings_in_the_environment_are_usage_errors(
    work: Path, remote: Path, env: dict[str, str], message: str
) -> None:
    result = with_history("--", "list", cwd=work, env=env)
    assert result.returncode == 2
    assert message in one_error_line(result)
    assert history_commits(remote) == []


def test_exhausted_retries_give_one_line_and_exit_1(work: Path) -> None:
    result = record(work, remote=str(work.parent / "missing.git"), attempts="3", backoff="0")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(ERROR)
    assert "after 3 attempts" in errors[0]
    assert "attempt 3/3" in result.stderr
    assert result.stdout == ""


def test_without_a_count_a_write_is_redone_until_its_deadline(work: Path) -> None:
    """Issue 20: no fixed attempt budget, a deadline (here 2 s against a missing remote)."""
    env = {"DEPLOYMENT_HISTORY_WRITE_DEADLINE": "2"}
    started = time.monotonic()

    result = record(work, remote=str(work.parent / "missing.git"), backoff="0.1", env=env)

    assert result.returncode == 1
    assert time.monotonic() - started < 30
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    made = re.search(r"after (\d+) attempts in \d+s", error)
    assert made and int(made.group(1)) >= 4, result.stderr
    assert re.search(r"; attempt 2 in 0\.\ds \(\ds left\)", result.stderr)


def test_outside_a_git_repository_fails_clearly(tmp_path: Path, remote: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = with_history("--remote", str(remote), "--", "list", cwd=plain)
    assert result.returncode == 1
    assert "not a usable git repository" in one_error_line(result)


def test_remote_and_branch_come_from_the_environment(tmp_path: Path, remote: Path) -> None:
    plain_repo = tmp_path / "elsewhere"
    git("init", "--quiet", str(plain_repo))
    env = {"DEPLOYMENT_HISTORY_REMOTE": str(remote), "DEPLOYMENT_HISTORY_BRANCH": "deploys/log"}
    result = record(plain_repo, env=env)
    assert result.returncode == 0, result.stderr
    assert len(history_commits(remote, "deploys/log")) == 1
    assert history_commits(remote) == []


def test_a_shallow_checkout_fetches_only_the_tip(tmp_path: Path, remote: Path) -> None:
    first = clone(remote, tmp_path / "first")
    for index in range(3):
        result = record(first, sha=f"{index}" * 40)
        assert result.returncode == 0, result.stderr
    (first / "app.txt").write_text("app\n")
    git("add", "app.txt", cwd=first)
    git("commit", "--quiet", "-m", "app", cwd=first)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=first)
    shallow = tmp_path / "shallow"
    git("clone", "--quiet", "--depth=1", "--branch", "main", remote.as_uri(), str(shallow))
    result = with_history("--", "list", "--field", "commit_sha", cwd=shallow)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3
    result = record_a(shallow)
    assert result.returncode == 0, result.stderr
    assert len(history_commits(remote)) == 4
    assert git("rev-list", "--count", "--all", cwd=shallow) in {"1", "2", "3"}


def test_the_tracker_command_is_configurable_and_must_exist(work: Path, remote: Path) -> None:
    two_words = f"{shlex.quote(sys.executable)} {shlex.quote(str(TRACKER))}"
    env = {"DEPLOYMENT_TRACKER_COMMAND": two_words, "PATH": "/usr/bin:/bin"}
    result = record(work, "--id", ID_A, env=env)
    assert result.returncode == 0, result.stderr
    result = with_history("--tracker", str(TRACKER), "--", "list", "--field", "id", cwd=work)
    assert result.stdout.strip() == ID_A
    missing = with_history("--", "list", cwd=work, env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode == 1
    assert "deployment-tracker is not on PATH" in one_error_line(missing)


def test_a_push_the_server_refuses_is_not_a_race_and_says_what_the_server_said(
    tmp_path: Path, remote: Path, work: Path
) -> None:
    """Issue 16: a protected branch (GH013) was retried as a lost race and its message lost."""
    assert record_a(work).returncode == 0
    protect(remote)
    before = history_commits(remote)
    for actions, prefix in ((None, "deployment-history: error: "), ("true", "::error title=")):
        env = {"GITHUB_ACTIONS": actions} if actions else None
        result = record(work, "--id", ID_B, env=env, sha=SHA_B, attempts="5", backoff="0.01")
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(prefix), line
        assert "the server refused the push to" in line
        assert "GH013: Repository rule violations found for refs/heads/deployment-history" in line
        assert "attempt 2/5" not in result.stderr
    assert history_commits(remote) == before


@pytest.mark.parametrize("session", [False, True], ids=["one-call", "in-a-session"])
def test_a_lost_race_is_redone_on_the_fresh_copy_and_only_its_output_is_kept(
    tmp_path: Path, remote: Path, work: Path, session: bool
) -> None:
    assert record_a(work).returncode == 0
    rival = clone(remote, tmp_path / "rival")
    rival_id = "main_a1b2c3d_20260101120000"
    rival_args = ["record", "-e", "qa", "-b", "main", "-c", SHA_A, "--id", rival_id]
    rival_write = shlex.join([sys.executable, str(HISTORY_SCRIPT), "--", *rival_args])
    # Another runner lands its record between our fetch and our first push.
    before_push = (
        f'if [ "$3" = push ] && mkdir {shlex.quote(str(tmp_path / "raced"))} 2>/dev/null; then'
        f" (cd {shlex.quote(str(rival))} && PATH={shlex.quote(str(BIN))}:/usr/bin:/bin"
        f" GITHUB_OUTPUT= DEPLOYMENT_HISTORY_SESSION= {rival_write} >/dev/null); fi"
    )
    env = fake_git(tmp_path / "racing-git", before_push)
    if session:  # warmed by a read first: the kept copy is the one the rival makes stale
        env["DEPLOYMENT_HISTORY_SESSION"] = str(tmp_path / "session")
        assert with_history("--", "list", cwd=work, env=env).returncode == 0
    github_output = tmp_path / "github_output"
    github_output.write_text("")
    env["GITHUB_OUTPUT"] = str(github_output)
    result = record(
        work, "--id", ID_B, "--github-output", env=env, sha=SHA_B, attempts="5", backoff="0.01"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ID_B
    assert "rejected (the history moved on); attempt 2/5" in result.stderr
    output = github_output.read_text()
    assert len([line for line in output.splitlines() if line.startswith("id<<")]) == 1
    assert ID_B in output
    assert {r["id"] for r in history_records(remote, tmp_path)} == {ID_A, ID_B, rival_id}
    assert len(history_commits(remote)) == 3


def git_calls(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_a_session_fetches_the_history_once_for_a_job_s_calls(
    tmp_path: Path, remote: Path, work: Path
) -> None:
    """Issue 20: with $DEPLOYMENT_HISTORY_SESSION, a job's later calls cost one ls-remote each:
    no fetch, no extraction, no check of the whole file, while the remote's tip is the one kept
    (the job's own pushes included)."""
    assert record_a(work).returncode == 0
    env = fake_git(tmp_path / "logging-git", 'echo "$3" >> "$LOG"')
    env["DEPLOYMENT_HISTORY_SESSION"] = str(tmp_path / "session")
    log = tmp_path / "logging-git" / "git.log"
    reads = [
        ["get", ID_A],
        ["list"],
        ["status", "-e", "staging"],
        ["settle", "--id", ID_A, "--stage", "verify"],
    ]

    results = [with_history("--", *args, cwd=work, env=env) for args in reads]

    assert all(result.returncode == 0 for result in results), [r.stderr for r in results]
    assert git_calls(log).count("fetch") == 1
    assert git_calls(log).count("ls-remote") == len(reads)  # one round trip a call
    log.unlink()
    written = record(work, "--id", ID_B, env=env, sha=SHA_B)
    after_write = with_history("--", "get", ID_B, cwd=work, env=env)

    assert written.returncode == 0 and after_write.returncode == 0, after_write.stderr
    assert ID_B in after_write.stdout
    assert git_calls(log).count("fetch") == 0 and git_calls(log).count("push") == 1
    assert git_calls(log).count("ls-remote") == 2
    assert sorted(path.suffix for path in (tmp_path / "session").iterdir()) == [".db", ".tip"]


def test_a_session_never_answers_from_a_history_another_run_moved_on(
    tmp_path: Path, remote: Path, work: Path
) -> None:
    assert record_a(work).returncode == 0
    env = {"DEPLOYMENT_HISTORY_SESSION": str(tmp_path / "session")}
    assert with_history("--", "list", cwd=work, env=env).returncode == 0
    other = clone(remote, tmp_path / "other")
    assert record(other, "--id", ID_B, sha=SHA_B).returncode == 0  # another run, meanwhile

    result = with_history("--", "get", ID_B, cwd=work, env=env)

    assert result.returncode == 0, result.stderr
    assert ID_B in result.stdout


WRITER = """
import subprocess, sys
script, clone, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = sys.argv[5:] or ["--attempts", "60", "--backoff", "0.2"]
for index in range(count):
    sha = f"{writer:02d}{index:02d}" + "c" * 36
    environment = ("staging", "qa")[writer % 2]
    result = subprocess.run(
        [sys.executable, script, *options, "--",
         "record", "--environment", environment, "--branch", f"writer-{writer}",
         "--commit", sha, "--actor", f"writer-{writer}"],
        cwd=clone, capture_output=True, text=True,
    )
    if result.returncode != 0:
        sys.exit(f"writer {writer} record {index}: {result.stderr}")
"""


@pytest.mark.parametrize(
    ("writers", "per_writer", "options"),
    [
        (6, 5, []),
        # Issue 20: 16 at once, with no attempt budget, only the default write deadline.
        (16, 2, ["--backoff", "0.2"]),
    ],
)
def test_racing_writers_all_land_exactly_once(
    tmp_path: Path, remote: Path, writers: int, per_writer: int, options: list[str]
) -> None:
    """N separate clones, N processes, all at once, into one bare remote."""
    clones = [clone(remote, tmp_path / f"clone-{n}") for n in range(writers)]
    started = time.monotonic()
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # the venv's deployment-tracker
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(HISTORY_SCRIPT),
                str(path),
                str(n),
                str(per_writer),
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for n, path in enumerate(clones)
    ]
    failures = []
    for process in processes:
        _, err = process.communicate(timeout=600)
        if process.returncode != 0:
            failures.append(err)
    elapsed = time.monotonic() - started
    assert not failures, failures
    records: list[dict[str, Any]] = history_records(remote, tmp_path)
    assert len(records) == writers * per_writer
    assert {record["actor"] for record in records} == {f"writer-{n}" for n in range(writers)}
    assert len({record["id"] for record in records}) == writers * per_writer
    assert integrity(history_db(remote, tmp_path / "final.db")) == "ok"
    # One commit per record, one line of history: nothing was lost or forced over.
    assert len(history_commits(remote)) == writers * per_writer
    assert git("--git-dir", str(remote), "rev-list", "--merges", HISTORY_BRANCH) == ""
    print(f"{writers} writers x {per_writer} records landed in {elapsed:.1f}s")


def test_readme_recipe_reads_the_history_locally(work: Path, remote: Path, tmp_path: Path) -> None:
    assert record_a(work).returncode == 0
    reader = clone(remote, tmp_path / "reader")
    git("fetch", "--quiet", "origin", HISTORY_BRANCH, cwd=reader)
    readme = git("cat-file", "blob", f"origin/{HISTORY_BRANCH}:README.md", cwd=reader)
    recipe = [line.strip() for line in readme.splitlines() if line.startswith("    ")]
    assert recipe[1] == f"git cat-file blob origin/{HISTORY_BRANCH}:deployments.db > deployments.db"
    data = subprocess.run(
        ["git", "cat-file", "blob", f"origin/{HISTORY_BRANCH}:deployments.db"],
        cwd=reader,
        capture_output=True,
        check=True,
    ).stdout
    (reader / "deployments.db").write_bytes(data)
    result = tracker("--db", "deployments.db", "list", "--all", "--format", "json", cwd=reader)
    assert result.returncode == 0, result.stderr
    assert [record["id"] for record in json.loads(result.stdout)] == [ID_A]


# --------------------------------------------------------------------------
# Hardening (issue #11): each of these fails on `deployment-tracker with-history`
# --------------------------------------------------------------------------


LONG_BRANCH = "release/" + "b" * 40


def seeded_database(path: Path) -> bytes:
    """13 records made by the tracker whose file holds a CR LF byte pair (the 13th event's
    cell starts with rowid 13 and a header of 10 bytes), with LF-only notes for eol=lf to find."""
    for index in range(1, 14):
        sha = f"{index:07x}" + "c" * 33
        result = tracker(
            *("--db", str(path), "record", "-e", "staging", "-b", LONG_BRANCH, "-c", sha),
            *("--actor", "actor-" * 12, "--note", "note line\n" * 8),
            cwd=path.parent,
        )
        assert result.returncode == 0, result.stderr
    data = path.read_bytes()
    assert b"\r\n" in data
    return data


def test_a_prune_shrinks_the_stored_file(work: Path, remote: Path, tmp_path: Path) -> None:
    """Issue 20: what a prune frees leaves the file (vacuumed), not only the table."""
    seed = tmp_path / "big.db"
    db = dt.connect(str(seed), write=True)
    for index in range(400):
        request = dt.RecordRequest(
            environment="staging",
            branch="main",
            commit_sha=f"{index:07x}" + "d" * 33,
            note="a long note " * 20,
        )
        dt.record_deployment(db, request.checked(), gates={})
    db.close()
    put_history_file(remote, seed.read_bytes())
    before = len(history_db(remote, tmp_path / "before.db").read_bytes())

    result = with_history("--", "prune", "--keep", "10", "--by", "ops", cwd=work)

    assert result.returncode == 0, result.stderr
    after = history_db(remote, tmp_path / "after.db")
    assert len(after.read_bytes()) * 4 < before
    assert integrity(after) == "ok"
    assert len(history_records(remote, tmp_path)) == 10


def test_a_read_never_pushes_whatever_the_tracker_did_to_its_copy(work: Path, remote: Path) -> None:
    """A read is given a throwaway copy: a tracker changing it (here, a stand-in that writes a
    row on `list`) changes nothing on the branch."""
    assert record_a(work).returncode == 0
    tip = history_commits(remote)
    writer = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[sys.argv.index('--db') + 1]);"
        " db.execute(\"UPDATE deployments SET note = 'changed by a read'\"); db.commit()"
    )
    command = shlex.join([sys.executable, "-c", writer])

    result = with_history("--tracker", command, "--", "list", cwd=work)

    assert result.returncode == 0, result.stderr
    assert history_commits(remote) == tip
    (record_,) = history_records(remote, work.parent)
    assert record_["note"] != "changed by a read"


# --------------------------------------------------------------------------
# import: start or replace the history from a database file (issue 20)
# --------------------------------------------------------------------------


def local_database(path: Path, count: int) -> Path:
    """A team's own .github/deployments.db, written by the tracker."""
    db = dt.connect(str(path), write=True)
    for index in range(count):
        sha = f"{index:07x}" + "e" * 33
        request = dt.RecordRequest(environment="staging", branch="main", commit_sha=sha)
        dt.record_deployment(db, request.checked(), gates={})
    db.close()
    return path


def test_import_starts_the_history_from_a_local_database(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    local = local_database(work / "deployments.db", 5)
    listed = tracker("--db", str(local), "list", "--all", "--format", "json", cwd=work)
    expected = json.loads(listed.stdout)

    result = with_history("--", "import", "deployments.db", cwd=work)

    assert result.returncode == 0, result.stderr
    assert "history: imported 5 deployments as " in result.stderr
    assert history_records(remote, tmp_path) == expected
    assert len(history_commits(remote)) == 1
    # The history goes on from there as any other.
    assert record(work, "--id", ID_A).returncode == 0
    assert len(history_records(remote, tmp_path)) == 6


def test_import_replaces_an_existing_history_only_when_asked(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    assert record_a(work).returncode == 0
    tip = history_tip(remote)
    local_database(tmp_path / "team.db", 3)

    refused = with_history("--", "import", str(tmp_path / "team.db"), cwd=work)

    assert refused.returncode == 1
    assert "already has a history on deployment-history" in one_error_line(refused)
    assert "--replace" in refused.stderr
    assert history_tip(remote) == tip

    replaced = with_history("--", "import", "--replace", str(tmp_path / "team.db"), cwd=work)

    assert replaced.returncode == 0, replaced.stderr
    assert len(history_records(remote, tmp_path)) == 3
    # Not forced: the replaced history stays in the branch's log.
    assert history_commits(remote)[1] == tip


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        (["CREATE TABLE loot (x)"], "history database"),
        ([f"PRAGMA user_version = {len(dt.MIGRATIONS) + 1}"], "the tracker refuses"),
    ],
    ids=["foreign-schema", "from-a-newer-tracker"],
)
def test_import_refuses_a_file_the_tracker_would_refuse(
    work: Path, remote: Path, tmp_path: Path, statements: list[str], message: str
) -> None:
    crafted = local_database(tmp_path / "crafted.db", 2)
    sqlite_bytes(crafted, *statements)

    result = with_history("--", "import", str(crafted), cwd=work)

    assert result.returncode == 1
    assert message in one_error_line(result)
    assert history_commits(remote) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "usage: deployment-history -- import FILE [--replace]"),
        (["a.db", "b.db"], "usage: deployment-history -- import FILE"),
        (["missing.db"], "no such database file: 'missing.db'"),
    ],
)
def test_import_usage_errors(work: Path, remote: Path, args: list[str], message: str) -> None:
    result = with_history("--", "import", *args, cwd=work)

    assert result.returncode == 2
    assert message in one_error_line(result)
    assert history_commits(remote) == []


@pytest.mark.parametrize(
    ("attributes", "config"),
    [
        ("*.db filter=lfs diff=lfs merge=lfs -text\n", ["filter.lfs.clean", "sed s/./X/g"]),
        ("* text eol=lf\n", ["core.autocrlf", "input"]),
    ],
    ids=["lfs-style-clean-filter", "eol-lf"],
)
def test_gitattributes_never_rewrite_the_database(
    work: Path, remote: Path, tmp_path: Path, attributes: str, config: list[str]
) -> None:
    """A checkout whose attributes would rewrite .db files (a clean filter that replaces the
    content, or CR LF normalised to LF): the branch still gets the exact bytes."""
    put_history_file(remote, seeded_database(tmp_path / "seed.db"))
    (work / ".gitattributes").write_text(attributes)
    git("config", *config, cwd=work)
    for index in range(3):
        result = record(work, "--note", "after\n" * 20, sha=f"{index + 1}" * 40)
        assert result.returncode == 0, result.stderr
    db = history_db(remote, tmp_path / "exact.db")
    assert db.read_bytes().startswith(b"SQLite format 3\x00")
    assert b"\r\n" in db.read_bytes()
    assert integrity(db) == "ok"
    assert len(history_records(remote, tmp_path)) == 16
    assert len(history_commits(remote)) == 4


def test_bytes_git_stored_differently_are_never_pushed(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    """A git that ignores --no-filters (here: a wrapper dropping it) stores rewritten bytes:
    the read-back check refuses to push them."""
    assert record_a(work).returncode == 0
    tip = history_tip(remote)
    (work / ".gitattributes").write_text("*.db filter=scramble\n")
    git("config", "filter.scramble.clean", "sed s/./X/g", cwd=work)
    env = fake_git(tmp_path / "lossy-git", drop="--no-filters")
    result = record(work, "--id", ID_B, sha=SHA_B, env=env)
    assert result.returncode == 1
    assert "different bytes" in result.stderr
    assert history_tip(remote) == tip


# Passwords as written in the URL, and as git must send them: the halves around the special
# character must never show anywhere but in the header.
PASSWORDS = {
    "slash": ("k9Qz/Wv4X", "k9Qz/Wv4X"),
    "at": ("k9Qz@Wv4X", "k9Qz@Wv4X"),
    "colon": ("k9Qz:Wv4X", "k9Qz:Wv4X"),
    "percent-encoded-slash": ("k9Qz%2FWv4X", "k9Qz/Wv4X"),
    "query-fragment-percent": ("k9Qz#?%Wv4X", "k9Qz#?%Wv4X"),
}


def assert_no_secret(text: str) -> None:
    assert "k9Qz" not in text and "Wv4X" not in text, text


@pytest.mark.parametrize("password", [raw for raw, _ in PASSWORDS.values()], ids=list(PASSWORDS))
@pytest.mark.parametrize("given", ["option", "environment"])
def test_credentials_in_the_remote_url_are_never_shown(
    work: Path, password: str, given: str
) -> None:
    url = f"http://user:{password}@127.0.0.1:1/x.git"
    if given == "option":
        result = record(work, remote=url, attempts="2", backoff="0")
    else:
        env = {"DEPLOYMENT_HISTORY_REMOTE": url}
        result = record(work, env=env, attempts="2", backoff="0")
    assert result.returncode == 1
    assert_no_secret(result.stdout + result.stderr)
    last = result.stderr.splitlines()[-1]
    assert last.startswith(ERROR) and "http://***@127.0.0.1:1/x.git" in last, last


@pytest.mark.parametrize(("password", "sent"), PASSWORDS.values(), ids=list(PASSWORDS))
def test_credentials_travel_as_a_header_never_on_gits_command_line(
    work: Path, tmp_path: Path, loopback: list[Loopback], password: str, sent: str
) -> None:
    server = Loopback(answer(404, b"no"))
    loopback.append(server)
    port = server.url.rsplit(":", 1)[1]
    env = fake_git(tmp_path / "logging-git", 'printf "%s\\n" "$*" >> "$LOG"')
    env["DEPLOYMENT_HISTORY_REMOTE"] = f"http://deployer:{password}@127.0.0.1:{port}/history.git"
    result = record(work, attempts="1", env=env)
    assert result.returncode == 1
    assert_no_secret(result.stdout + result.stderr)
    argv_log = (tmp_path / "logging-git" / "git.log").read_text()
    assert f"ls-remote --exit-code --heads -- http://127.0.0.1:{port}/history.git" in argv_log
    assert_no_secret(argv_log)
    assert "deployer" not in argv_log
    expected = "Basic " + base64.b64encode(f"deployer:{sent}".encode()).decode()
    assert server.requests, "git never reached the server"
    assert {r.headers.get("authorization") for r in server.requests} == {expected}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://u:k9Qz@s/Wv4X@h/x.git", "read two ways; percent-encode"),
        ("https://u:k9Qz/Wv4X@/x.git", "read without a host after them"),
        ("ssh://u:k9Qz/Wv4X@h/x.git", "works only over http(s)"),
        ("http://u:k9Qz/Wv4X@h/x\x1b]0;x.git", "invalid history remote"),
    ],
    ids=["ambiguous", "no-host", "password-over-ssh", "control-character"],
)
def test_remote_credentials_that_cannot_be_placed_are_refused_unshown(
    work: Path, remote: Path, tmp_path: Path, url: str, message: str
) -> None:
    env = fake_git(tmp_path / "logging-git", 'printf "%s\\n" "$*" >> "$LOG"')
    env["DEPLOYMENT_HISTORY_REMOTE"] = url
    result = with_history("--", "list", cwd=work, env=env)
    assert result.returncode == 2
    assert message in one_error_line(result)
    assert_no_secret(result.stdout + result.stderr)
    log = tmp_path / "logging-git" / "git.log"
    assert not log.exists() or "ls-remote" not in log.read_text()


def test_the_token_travels_as_a_header_in_the_environment(
    work: Path, tmp_path: Path, loopback: list[Loopback]
) -> None:
    server = Loopback(answer(404, b"no"))
    loopback.append(server)
    env = fake_git(tmp_path / "logging-git", 'printf "%s\\n" "$*" >> "$LOG"')
    env.update(
        DEPLOYMENT_HISTORY_TOKEN="s3cret",
        GITHUB_SERVER_URL=server.url,
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="http.useragent",
        GIT_CONFIG_VALUE_0="kept-caller-config/1",
    )
    result = record(work, remote=f"{server.url}/history.git", attempts="1", env=env)
    assert result.returncode == 1
    assert "s3cret" not in result.stdout + result.stderr
    assert "s3cret" not in (tmp_path / "logging-git" / "git.log").read_text()
    expected = "basic " + base64.b64encode(b"x-access-token:s3cret").decode()
    (request, *_) = server.requests
    assert request.headers["authorization"] == expected
    assert request.headers["user-agent"] == "kept-caller-config/1"


def test_a_history_blob_over_the_size_limit_is_refused(work: Path, remote: Path) -> None:
    assert record_a(work).returncode == 0
    tip = history_tip(remote)
    env = {"DEPLOYMENT_HISTORY_MAX_BYTES": "4096"}
    result = record(work, "--id", ID_B, sha=SHA_B, env=env)
    assert result.returncode == 1
    assert "over the limit of 4096 (DEPLOYMENT_HISTORY_MAX_BYTES)" in one_error_line(result)
    assert result.stdout == ""
    assert history_tip(remote) == tip
    assert with_history("--", "list", cwd=work).returncode == 0  # the default limit is larger


def sqlite_bytes(path: Path, *statements: str) -> bytes:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return path.read_bytes()


def test_a_foreign_database_on_the_branch_is_refused_and_nothing_pushed(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    crafted = sqlite_bytes(tmp_path / "foreign.db", "CREATE TABLE loot (x)")
    tip = put_history_file(remote, crafted)
    result = record_a(work)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert history_tip(remote) == tip


def test_a_tracker_database_with_an_extra_trigger_is_refused_and_nothing_pushed(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    assert record_a(work).returncode == 0
    db = history_db(remote, tmp_path / "with-trigger.db")
    trigger = (
        "CREATE TRIGGER tamper AFTER INSERT ON deployments"
        " BEGIN UPDATE deployments SET note = 'tampered'; END"
    )
    tip = put_history_file(remote, sqlite_bytes(db, trigger))
    result = record(work, "--id", ID_B, sha=SHA_B)
    assert result.returncode == 1
    assert "unexpected trigger 'tamper'" in one_error_line(result)
    assert history_tip(remote) == tip


# --------------------------------------------------------------------------
# Crafted databases (issue 17): checked before anything uses them
# --------------------------------------------------------------------------

INDEX = "deployments_by_environment_status"  # what rollback-target's query walks


def stale_index_database(path: Path) -> tuple[str, str]:
    """A tracker database, schema text exact, whose INDEX still lists the latest verified
    deployment as verified after its row became failed: (the right target, the wrong one)."""
    good, bad, running = "main_a1b2c3d_20260101100000", ID_B, "main_c1b2c3d_20260101120000"
    for deployment_id, sha in ((good, SHA_A), (bad, SHA_B), (running, "c" + SHA_A[1:])):
        branch = deployment_id.rsplit("_", 2)[0]
        args = ["record", "-e", "staging", "-b", branch, "-c", sha, "--id", deployment_id]
        assert tracker("--db", str(path), *args, cwd=path.parent).returncode == 0
        if deployment_id != running:
            verify = ["verify", deployment_id, "--status", "verified"]
            assert tracker("--db", str(path), *verify, cwd=path.parent).returncode == 0
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = DELETE")
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (INDEX,)).fetchone()
    # For one update, the index is partial with a false condition: SQLite leaves its entry alone.
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET sql = ? WHERE name = ?", (f"{sql} WHERE 0", INDEX))
    db.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE deployments SET status = 'failed' WHERE id = ?", (bad,))
    db.execute("PRAGMA writable_schema = ON")
    db.execute("UPDATE sqlite_master SET sql = ? WHERE name = ?", (sql, INDEX))
    db.close()
    return good, bad


def test_an_index_that_disagrees_with_its_table_is_refused(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    crafted = tmp_path / "crafted" / "deployments.db"
    crafted.parent.mkdir()
    good, bad = stale_index_database(crafted)
    # The tracker alone is fooled: its schema check passes and the stale index answers.
    target = ["rollback-target", "-e", "staging", "--field", "id"]
    fooled = tracker("--db", str(crafted), *target, cwd=tmp_path)
    assert (fooled.returncode, fooled.stdout.strip()) == (0, bad), fooled.stderr
    assert integrity(crafted) != "ok"
    tip = put_history_file(remote, crafted.read_bytes())
    for args in (
        target,
        ["record", "-e", "qa", "-b", "x", "-c", SHA_A],
    ):
        result = with_history("--", *args, cwd=work)
        assert (result.returncode, result.stdout) == (1, ""), (args, result.stdout)
        line = one_error_line(result)
        assert "failed its integrity check" in line and INDEX in line, line
    assert history_tip(remote) == tip
    # The right answer, once the indexes are rebuilt from the table.
    repaired = sqlite3.connect(crafted, isolation_level=None)
    repaired.execute("REINDEX")
    repaired.close()
    right = tracker("--db", str(crafted), *target, cwd=tmp_path)
    assert (right.returncode, right.stdout.strip()) == (0, good), right.stderr


# Each would run its SQL if anything used the file before its schema was checked: the CHECK
# overflows (quick_check evaluated it), the view never ends, the trigger rewrites every row.
CRAFTED_OBJECTS = {
    "table": (
        "loot",
        [
            "CREATE TABLE loot (a INTEGER, CHECK (abs(a) > 0))",
            "PRAGMA ignore_check_constraints = ON",
            "INSERT INTO loot VALUES (-9223372036854775808)",
        ],
    ),
    "view": (
        "spin",
        [
            "CREATE VIEW spin AS WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r)"
            " SELECT count(*) FROM r"
        ],
    ),
    "trigger": (
        "rewrite",
        [
            "CREATE TRIGGER rewrite AFTER UPDATE ON deployments"
            " BEGIN UPDATE deployments SET image_tag = 'evil'; END"
        ],
    ),
}


@pytest.mark.parametrize("kind", list(CRAFTED_OBJECTS))
def test_an_unexpected_object_is_refused_by_name_before_any_sql_runs(
    work: Path, remote: Path, tmp_path: Path, kind: str
) -> None:
    assert record_a(work).returncode == 0
    name, statements = CRAFTED_OBJECTS[kind]
    db = history_db(remote, tmp_path / "crafted.db")
    tip = put_history_file(remote, sqlite_bytes(db, *statements))
    for args in (["list"], ["verify", "--id", ID_A, "--status", "verified"]):
        result = with_history("--", *args, cwd=work)
        assert (result.returncode, result.stdout) == (1, ""), result.stderr
        line = one_error_line(result)
        assert f"holds an unexpected {kind} '{name}'" in line, line
        assert "overflow" not in line  # the crafted CHECK never ran
    assert history_tip(remote) == tip


def test_work_on_a_crafted_file_stops_at_the_deadline(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    """A table under one of the tracker's names whose CHECK costs milliseconds a row: checking
    its 200,000 rows would take minutes (the tracker would refuse it, but only afterwards)."""
    assert record_a(work).returncode == 0
    db = history_db(remote, tmp_path / "slow.db")
    slow = (
        "CREATE TABLE prunes (seq INTEGER PRIMARY KEY, x INTEGER,"
        " CHECK (length(hex(zeroblob(1000000 + x))) > 0))"
    )
    fill = (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 200000)"
        " INSERT INTO prunes (x) SELECT n FROM r"
    )
    crafted = sqlite_bytes(
        db, "DROP TABLE prunes", slow, "PRAGMA ignore_check_constraints = ON", fill
    )
    tip = put_history_file(remote, crafted)
    env = {"DEPLOYMENT_HISTORY_SQL_DEADLINE": "0.5"}
    result = with_history("--", "list", cwd=work, env=env, timeout=60)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert "took over 0.5 s to be checked (DEPLOYMENT_HISTORY_SQL_DEADLINE)" in one_error_line(
        result
    )
    assert history_tip(remote) == tip
