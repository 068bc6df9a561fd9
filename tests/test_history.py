"""`with-history`: the deployment history on a git branch, against real bare repositories."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from history_helpers import (
    HISTORY_BRANCH,
    TRACKER,
    bare_remote,
    clone,
    git,
    history_commits,
    history_db,
    history_records,
    integrity,
    tracker,
)

import deployment_tracker as dt

SHA_A = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
SHA_B = "b1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
ID_A = "main_a1b2c3d_20260101100000"
ID_B = "feature-x_b1b2c3d_20260101110000"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return bare_remote(tmp_path / "remote.git")


@pytest.fixture
def work(tmp_path: Path, remote: Path) -> Path:
    return clone(remote, tmp_path / "work")


def record_a(work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return tracker(
        "with-history",
        "--",
        "record",
        "--environment",
        "staging",
        "--branch",
        "main",
        "--commit",
        SHA_A,
        "--id",
        ID_A,
        *extra,
        cwd=work,
    )


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
    # Work tree, index and HEAD untouched; no branch of ours appeared locally.
    assert git("rev-parse", "HEAD", cwd=work) == head_before
    assert git("status", "--porcelain", cwd=work) == ""
    assert git("branch", "--list", HISTORY_BRANCH, cwd=work) == ""
    # The remote's main branch is untouched too: only the history branch exists there.
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


def test_writes_build_a_linear_history_and_reads_push_nothing(
    work: Path, remote: Path, tmp_path: Path
) -> None:
    assert record_a(work).returncode == 0
    verified = tracker(
        "with-history",
        "--",
        "verify",
        "--id",
        ID_A,
        "--status",
        "verified",
        "--by",
        "smoke",
        cwd=work,
    )
    assert verified.returncode == 0, verified.stderr
    assert len(history_commits(remote)) == 2

    for args in (
        ["list"],
        ["latest", "--environment", "staging"],
        ["get", "--id", ID_A],
        ["new-id", "--branch", "main", "--commit", SHA_A],
    ):
        result = tracker("with-history", "--", *args, cwd=work)
        assert result.returncode == 0, (args, result.stderr)
    latest = tracker(
        "with-history", "--", "latest", "--environment", "staging", "--field", "status", cwd=work
    )
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
    result = tracker("with-history", "--", "rollback-target", "--environment", "staging", cwd=work)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: no deployment history yet: origin has no branch {HISTORY_BRANCH}"
    )
    assert history_commits(remote) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["verify", "--id", ID_B, "--status", "verified"], 1, "Error: "),
        (
            ["record", "--environment", "Bad Env", "--branch", "main", "--commit", SHA_A],
            2,
            "Error: ",
        ),
        (["record", "--bogus"], 2, "Error: "),
    ],
)
def test_a_failing_command_is_passed_on_and_not_retried(
    work: Path, remote: Path, args: list[str], code: int, message: str
) -> None:
    assert record_a(work).returncode == 0
    result = tracker("with-history", "--attempts", "5", "--backoff", "2", "--", *args, cwd=work)
    assert result.returncode == code
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "history:" not in result.stderr  # no second attempt
    assert len(history_commits(remote)) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--remote", "--upload-pack=touch /tmp/pwned"], "invalid history remote"),
        (["--branch", "a..b"], "invalid history branch"),
        (["--branch", "-x"], "invalid history branch"),
        ([], "with-history runs a tracker command"),
    ],
)
def test_remote_branch_and_command_are_validated(
    work: Path, options: list[str], message: str
) -> None:
    command = ["list"] if options else ["--db", "other.db", "list"]
    result = tracker("with-history", *options, "--", *command, cwd=work)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_exhausted_retries_give_one_line_and_exit_1(work: Path) -> None:
    result = tracker(
        "with-history",
        "--remote",
        str(work.parent / "missing.git"),
        "--attempts",
        "3",
        "--backoff",
        "0",
        "--",
        "record",
        "--environment",
        "staging",
        "--branch",
        "main",
        "--commit",
        SHA_A,
        cwd=work,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "after 3 attempts" in errors[0]
    assert result.stdout == ""


def test_outside_a_git_repository_fails_clearly(tmp_path: Path, remote: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = tracker("with-history", "--remote", str(remote), "--", "list", cwd=plain)
    assert result.returncode == 1
    assert "not a usable git repository" in result.stderr


def test_remote_and_branch_come_from_the_environment(tmp_path: Path, remote: Path) -> None:
    plain_repo = tmp_path / "elsewhere"
    git("init", "--quiet", str(plain_repo))
    env = {"DEPLOYMENT_HISTORY_REMOTE": str(remote), "DEPLOYMENT_HISTORY_BRANCH": "deploys/log"}
    result = tracker(
        "with-history",
        "--",
        "record",
        "--environment",
        "qa",
        "--branch",
        "main",
        "--commit",
        SHA_A,
        cwd=plain_repo,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert len(history_commits(remote, "deploys/log")) == 1


def test_a_shallow_checkout_fetches_only_the_tip(tmp_path: Path, remote: Path) -> None:
    first = clone(remote, tmp_path / "first")
    for index in range(3):
        result = tracker(
            "with-history",
            "--",
            "record",
            "--environment",
            "staging",
            "--branch",
            "main",
            "--commit",
            f"{index}" * 40,
            cwd=first,
        )
        assert result.returncode == 0, result.stderr
    # A CI checkout: shallow, of the project's main branch.
    (first / "app.txt").write_text("app\n")
    git("add", "app.txt", cwd=first)
    git("commit", "--quiet", "-m", "app", cwd=first)
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=first)
    shallow = tmp_path / "shallow"
    git("clone", "--quiet", "--depth=1", "--branch", "main", remote.as_uri(), str(shallow))
    result = tracker("with-history", "--", "list", "--field", "commit_sha", cwd=shallow)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 3
    result = record_a(shallow)
    assert result.returncode == 0, result.stderr
    assert len(history_commits(remote)) == 4
    assert git("rev-list", "--count", "--all", cwd=shallow) in {"1", "2", "3"}


def test_the_token_travels_as_a_header_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, work: Path
) -> None:
    monkeypatch.setenv("DEPLOYMENT_HISTORY_TOKEN", "s3cret")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.example")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.quotepath")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "false")
    env = dt.history_git_environment(str(work))
    assert "DEPLOYMENT_HISTORY_TOKEN" not in env
    assert env["GIT_CONFIG_COUNT"] == "2"
    assert env["GIT_CONFIG_KEY_1"] == "http.https://github.example/.extraheader"
    expected = base64.b64encode(b"x-access-token:s3cret").decode()
    assert env["GIT_CONFIG_VALUE_1"] == f"AUTHORIZATION: basic {expected}"
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_a_lost_race_is_redone_on_the_fresh_copy_and_only_its_output_is_kept(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    remote: Path,
    work: Path,
) -> None:
    assert record_a(work).returncode == 0
    rival = clone(remote, tmp_path / "rival")
    github_output = tmp_path / "github_output"
    github_output.write_text("")
    monkeypatch.setenv("GITHUB_OUTPUT", str(github_output))
    real_push = dt.push_history
    pushes: list[str] = []

    def push_after_a_rival(
        repo: str, remote_name: str, branch: str, commit: str, env: dict[str, str]
    ) -> None:
        if not pushes:
            # Another runner lands its record between our fetch and our push.
            rival_write = tracker(
                "with-history",
                "--",
                "record",
                "--environment",
                "qa",
                "--branch",
                "main",
                "--commit",
                SHA_A,
                "--id",
                "main_a1b2c3d_20260101120000",
                cwd=rival,
                env={"GITHUB_OUTPUT": ""},
            )
            assert rival_write.returncode == 0, rival_write.stderr
        pushes.append(commit)
        real_push(repo, remote_name, branch, commit, env)

    monkeypatch.setattr(dt, "push_history", push_after_a_rival)
    monkeypatch.chdir(work)
    code = dt.run_with_history(
        [
            "record",
            "--environment",
            "staging",
            "--branch",
            "feature/x",
            "--commit",
            SHA_B,
            "--id",
            ID_B,
            "--github-output",
        ],
        repo=".",
        remote="origin",
        branch=HISTORY_BRANCH,
        attempts=5,
        backoff=0.01,
        say=lambda text: print(text, file=sys.stderr),
    )
    assert code == 0
    assert len(pushes) == 2
    captured = capfd.readouterr()
    assert captured.out.strip() == ID_B
    assert "rejected" in captured.err
    output = github_output.read_text()
    assert len([line for line in output.splitlines() if line.startswith("id<<")]) == 1
    assert ID_B in output
    ids = {record["id"] for record in history_records(remote, tmp_path)}
    assert ids == {ID_A, ID_B, "main_a1b2c3d_20260101120000"}
    assert len(history_commits(remote)) == 3


WRITER = """
import subprocess, sys
tracker, clone, writer, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for index in range(count):
    sha = f"{writer:02d}{index:02d}" + "c" * 36
    environment = ("staging", "qa")[writer % 2]
    result = subprocess.run(
        [sys.executable, tracker, "with-history", "--attempts", "60", "--backoff", "0.2", "--",
         "record", "--environment", environment, "--branch", f"writer-{writer}",
         "--commit", sha, "--actor", f"writer-{writer}"],
        cwd=clone, capture_output=True, text=True,
    )
    if result.returncode != 0:
        sys.exit(f"writer {writer} record {index}: {result.stderr}")
"""


def test_six_racing_writers_all_land(tmp_path: Path, remote: Path) -> None:
    """6 separate clones, 6 processes, 5 records each, all at once, into one bare remote."""
    writers, per_writer = 6, 5
    clones = [clone(remote, tmp_path / f"clone-{n}") for n in range(writers)]
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(TRACKER), str(path), str(n), str(per_writer)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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
    print(f"6 writers x 5 records landed in {elapsed:.1f}s")


def test_readme_recipe_reads_the_history_locally(work: Path, remote: Path, tmp_path: Path) -> None:
    assert record_a(work).returncode == 0
    reader = clone(remote, tmp_path / "reader")
    git("fetch", "--quiet", "origin", HISTORY_BRANCH, cwd=reader)
    data = subprocess.run(
        ["git", "show", f"origin/{HISTORY_BRANCH}:deployments.db"],
        cwd=reader,
        capture_output=True,
        check=True,
    ).stdout
    (reader / "deployments.db").write_bytes(data)
    result = tracker("--db", "deployments.db", "list", "--all", "--format", "json", cwd=reader)
    assert result.returncode == 0, result.stderr
    assert [record["id"] for record in json.loads(result.stdout)] == [ID_A]
    assert os.path.exists(reader / "deployments.db")
