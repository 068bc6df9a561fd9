"""`deployment-tracker --history REMOTE COMMAND`: the shared history from a clone of the app
repository (issue 19), and the console scripts a real `pip install` gives.

Real processes only: the installed `deployment-tracker`, real git against bare repositories on
disk, the workflow's history script for the other writers, and HTTP only on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from history_helpers import (
    BIN,
    HISTORY_BRANCH,
    HISTORY_SCRIPT,
    ROOT,
    Loopback,
    answer,
    bare_remote,
    clone,
    fake_git,
    git,
    history_commits,
    history_records,
    history_tip,
    protect,
    tracker,
    with_history,
)

SHA_A = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
SHA_B = "b1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
SHA_C = "c1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
ID_A = "main_a1b2c3d_20260101100000"
ID_B = "main_b1b2c3d_20260101110000"
ID_C = "main_c1b2c3d_20260101120000"
README_ID = "main_3f2c9e1_20260415123456"
HISTORY_ENV = "DEPLOYMENT_TRACKER_HISTORY"
FRESHNESS = re.compile(
    r"history: (?P<remote>\S+) deployment-history at (?P<tip>[0-9a-f]{7}),"
    r" last written (?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) \((?P<ago>[^)]*)\)"
)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return bare_remote(tmp_path / "remote.git")


@pytest.fixture
def ci(tmp_path: Path, remote: Path) -> Path:
    """A runner's clone: it writes the history with the workflow's script."""
    return clone(remote, tmp_path / "ci")


def write(ci: Path, *args: str, env: dict[str, str] | None = None) -> None:
    result = with_history("--", *args, cwd=ci, env=env)
    assert result.returncode == 0, result.stderr


def deploy(ci: Path, deployment: str, sha: str, *, verified: bool = True) -> None:
    write(ci, "record", "-e", "staging", "-b", "main", "-c", sha, "--id", deployment)
    if verified:
        write(ci, "verify", deployment, "--status", "verified", "--by", "smoke-test")


def app_clone(remote: Path, tmp_path: Path, name: str = "app") -> Path:
    """A developer's clone of the app repository: after the history exists, so that its
    origin/deployment-history is whatever the branch was then."""
    return clone(remote, tmp_path / name)


def on_history(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return tracker("--history", "origin", *args, cwd=cwd, env=env)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["name", "path", "url"])
def test_a_read_from_a_clone_of_the_app_repository_shows_the_shared_history(
    tmp_path: Path, remote: Path, ci: Path, form: str
) -> None:
    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    given = {"name": "origin", "path": str(remote), "url": remote.as_uri()}[form]
    result = tracker("--history", given, "get", ID_A[:8], "--field", "id,status", cwd=app)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ID_A}\tverified\n"
    # Nothing of the tracker's lands in the app repository: no file, no change to the tree.
    assert not (app / ".github").exists()
    assert git("status", "--porcelain", "--ignored", cwd=app) == ""
    assert git("for-each-ref", "refs/deployment-history", cwd=app) == ""


def test_the_environment_names_the_history_remote(tmp_path: Path, remote: Path, ci: Path) -> None:
    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    result = tracker("list", "--field", "id", cwd=app, env={HISTORY_ENV: "origin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ID_A}\n"
    assert FRESHNESS.fullmatch(one_line(result))


def test_a_read_says_which_commit_it_read_and_when_that_was_written(
    tmp_path: Path, remote: Path, ci: Path
) -> None:
    written = int(time.time()) - 300
    write(
        ci,
        *("record", "-e", "staging", "-b", "main", "-c", SHA_A, "--id", ID_A),
        env={"GIT_COMMITTER_DATE": f"{written} +0000"},
    )
    app = app_clone(remote, tmp_path)
    result = on_history("status", "--field", "id", cwd=app)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ID_A}\n"  # stdout is the command's alone
    line = FRESHNESS.fullmatch(one_line(result))
    assert line, result.stderr
    assert line["remote"] == "origin"
    assert line["tip"] == history_tip(remote)[:7]
    assert line["at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(written))
    assert line["ago"] == "5 min ago"


def test_a_read_never_uses_a_stale_local_ref(tmp_path: Path, remote: Path, ci: Path) -> None:
    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    stale = git("rev-parse", f"origin/{HISTORY_BRANCH}", cwd=app)
    deploy(ci, ID_B, SHA_B)  # someone else writes after the developer cloned
    result = on_history("list", "--field", "id", cwd=app)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{ID_B}\n{ID_A}\n"
    line = FRESHNESS.fullmatch(one_line(result))
    assert line and line["tip"] == history_tip(remote)[:7] != stale[:7]


def test_a_missing_branch_is_one_clear_line(tmp_path: Path, remote: Path) -> None:
    app = app_clone(remote, tmp_path)
    result = on_history("list", cwd=app)
    assert result.returncode == 1
    assert result.stdout == ""
    assert one_line(result) == (
        "deployment-history: error: no deployment history yet:"
        " origin has no branch deployment-history"
    )
    assert history_commits(remote) == []


def test_outside_a_git_repository_is_one_line(tmp_path: Path, remote: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    result = tracker("--history", str(remote), "list", cwd=plain)
    assert result.returncode == 1
    assert "the current directory is not a usable git repository" in one_line(result)


def test_credentials_in_the_history_remote_are_never_printed(tmp_path: Path, remote: Path) -> None:
    app = app_clone(remote, tmp_path)
    server = Loopback(answer(404, b"no such repository"))
    try:
        url = server.url.replace("http://", "http://deployer:s3cr%40t-Pa55@") + "/app.git"
        env = {HISTORY_ENV: url, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        result = tracker("list", cwd=app, env=env)
    finally:
        server.close()
    assert result.returncode == 1
    line = one_line(result)  # a read is one attempt: no retries to wait for
    assert "could not read the deployment history on http://***@127.0.0.1" in line
    assert "s3cr" not in result.stderr + result.stdout
    assert "Pa55" not in result.stderr + result.stdout
    assert server.requests, "git never asked the server"


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------


def _seed(ci: Path, command: str) -> None:
    """A, B and C deployed to staging and verified (C only deployed, for `verify`); A blocked
    for `unblock`."""
    for deployment, sha in ((ID_A, SHA_A), (ID_B, SHA_B), (ID_C, SHA_C)):
        deploy(ci, deployment, sha, verified=not (command == "verify" and deployment == ID_C))
    if command == "unblock":
        write(ci, "block", ID_A, "--reason", "to lift", "--by", "ci")


WRITES = {
    "block": ["block", ID_B, "--reason", "breaks checkout", "--by", "octocat"],
    "unblock": ["unblock", ID_A, "--by", "octocat"],
    "verify": ["verify", ID_C, "--status", "failed", "--by", "octocat"],
    "prune": ["prune", "--keep", "1", "--by", "octocat"],
}


def _landed(command: str, records: dict[str, dict[str, Any]]) -> bool:
    if command == "block":
        return bool(records[ID_B]["blocked"])
    if command == "unblock":
        return not records[ID_A]["blocked"]
    if command == "verify":
        return bool(records[ID_C]["status"] == "failed")
    return set(records) == {ID_B, ID_C}  # prune: A, the oldest, goes


@pytest.mark.parametrize("command", sorted(WRITES))
def test_each_write_lands_on_the_remote_exactly_once(
    tmp_path: Path, remote: Path, ci: Path, command: str
) -> None:
    _seed(ci, command)
    app = app_clone(remote, tmp_path)
    before = history_commits(remote)
    result = on_history(*WRITES[command], cwd=app)
    assert result.returncode == 0, result.stderr
    after = history_commits(remote)
    assert len(after) == len(before) + 1
    assert after[1:] == before  # one commit on top of the tip, nothing forced
    pushed = f"history: pushed {after[0][:7]} to origin deployment-history"
    assert result.stderr.splitlines()[-1] == pushed  # after the command's own messages
    message = git("--git-dir", str(remote), "log", "-1", "--format=%s", HISTORY_BRANCH)
    assert message == "deployment-tracker " + shlex.join(WRITES[command])
    records = {r["id"]: r for r in history_records(remote, tmp_path)}
    assert _landed(command, records), records
    # The same command again changes nothing, so it pushes nothing.
    if command in ("block", "verify"):
        again = on_history(*WRITES[command], cwd=app)
        assert again.returncode == 0, again.stderr
        assert history_commits(remote) == after


def test_a_read_pushes_nothing(tmp_path: Path, remote: Path, ci: Path) -> None:
    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    before = history_commits(remote)
    for args in (["status"], ["list", "--since", "7d"], ["rollback-target", "-e", "staging"]):
        result = on_history(*args, cwd=app)
        assert result.returncode in (0, 1), result.stderr
        assert "pushed" not in result.stderr
    assert history_commits(remote) == before


def test_a_write_racing_another_still_lands(tmp_path: Path, remote: Path, ci: Path) -> None:
    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    rival_record = ["record", "-e", "qa", "-b", "main", "-c", SHA_C, "--id", ID_C]
    rival = shlex.join([sys.executable, str(HISTORY_SCRIPT), "--", *rival_record])
    # The rival's write lands between our fetch and our first push.
    before_push = (
        f'if [ "$3" = push ] && mkdir {shlex.quote(str(tmp_path / "raced"))} 2>/dev/null; then'
        f" (cd {shlex.quote(str(ci))} && PATH={shlex.quote(str(BIN))}:/usr/bin:/bin"
        f" {rival} >/dev/null 2>&1); fi"
    )
    env = fake_git(tmp_path / "racing-git", before_push)
    before = history_commits(remote)
    result = on_history("block", ID_A, "--reason", "breaks checkout", cwd=app, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "raced").is_dir()
    assert "rejected (the history moved on); attempt 2 in " in result.stderr
    assert result.stdout == f"{ID_A}\n"
    after = history_commits(remote)
    assert len(after) == len(before) + 2 and after[2:] == before
    records = {r["id"]: r for r in history_records(remote, tmp_path)}
    assert records[ID_A]["blocked"] and records[ID_C]["environment"] == "qa"


def test_a_write_nobody_could_push_says_so_in_one_line(
    tmp_path: Path, remote: Path, ci: Path
) -> None:
    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    protect(remote)
    before = history_commits(remote)
    result = on_history("block", ID_A, "--reason", "breaks checkout", cwd=app)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("deployment-history: error: the server refused the push to origin")
    assert "GH013" in line
    assert history_commits(remote) == before


# --------------------------------------------------------------------------
# --history and --db
# --------------------------------------------------------------------------


def test_history_with_db_is_a_usage_error(tmp_path: Path, remote: Path, ci: Path) -> None:
    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    db = tmp_path / "local.db"
    given = tracker("--history", "origin", "--db", str(db), "list", cwd=app)
    assert given.returncode == 2
    assert one_line(given).startswith("Error: --history and --db don't go together")
    both_env = {HISTORY_ENV: "origin", "DEPLOYMENT_TRACKER_DB": str(db)}
    from_env = tracker("list", cwd=app, env=both_env)
    assert from_env.returncode == 2
    assert one_line(from_env).startswith(
        "Error: DEPLOYMENT_TRACKER_HISTORY and DEPLOYMENT_TRACKER_DB don't go together"
    )
    assert not db.exists()


def test_the_command_line_beats_the_environment(tmp_path: Path, remote: Path, ci: Path) -> None:
    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    db = tmp_path / "local.db"
    local = tracker("--db", str(db), "list", cwd=app, env={HISTORY_ENV: "origin"})
    assert local.returncode == 1
    assert (
        one_line(local) == f"Error: no database at {db} (record a deployment first, or pass --db)"
    )
    shared = tracker(
        "--history",
        "origin",
        "list",
        "--field",
        "id",
        cwd=app,
        env={"DEPLOYMENT_TRACKER_DB": str(db)},
    )
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout == f"{ID_A}\n"


# --------------------------------------------------------------------------
# The README's examples
# --------------------------------------------------------------------------


def test_the_readme_examples_from_an_app_repository_run(
    tmp_path: Path, remote: Path, ci: Path
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### From your app repository", 1)[1]
    (block,) = re.findall(r"```bash\n(.+?)\n```", section, flags=re.DOTALL)[:1]
    assert "deployment-tracker --history origin status" in block
    commit = "3f2c9e1d4b5a69788796a5b4c3d2e1f0a9b8c7d6"
    write(ci, "record", "-e", "staging", "-b", "main", "-c", commit, "--id", README_ID)
    app = app_clone(remote, tmp_path)
    before = history_commits(remote)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOYMENT_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert README_ID in result.stdout
    assert len(history_commits(remote)) == len(before) + 2  # block, then unblock
    assert len(FRESHNESS.findall(result.stderr)) == 2  # status, list
    (record,) = history_records(remote, tmp_path)
    assert record["blocked"] is False


# --------------------------------------------------------------------------
# A real install
# --------------------------------------------------------------------------


def _clean_checkout(into: Path) -> Path:
    """The project's files as a clean checkout has them (tracked and new, not ignored; as they
    are now), without this worktree's .venv, build or egg-info."""
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)
    return into


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_real_install_gives_both_console_scripts(tmp_path: Path, remote: Path, ci: Path) -> None:
    pinned = Path(os.environ.get("DEPLOYMENT_TRACKER_WHEELS", ROOT / ".venv" / "wheels"))
    if not list(pinned.glob("click-*.whl")):
        pytest.fail(f"the pinned wheels are not in {pinned} (README: Development)")
    checkout = _clean_checkout(tmp_path / "checkout")
    wheels = tmp_path / "wheels"
    # Offline: setuptools comes from the test extras (no build isolation, no index).
    _pip(
        "wheel", "--no-build-isolation", "--no-index", "--no-deps", "-w", str(wheels), str(checkout)
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    links = ["--no-index", "--find-links", str(pinned), "--find-links", str(wheels)]
    _pip("--python", str(python), "install", "--quiet", *links, "deployment-tracker")

    bin_dir = venv / "bin"
    where = subprocess.run(
        [
            str(python),
            "-I",
            "-c",
            "import deployment_tracker, deployment_tracker_workflow.deployment_history as h;"
            " print(deployment_tracker.__file__); print(h.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # not the checkout
    assert (bin_dir / "deployment-tracker").exists() and (bin_dir / "deployment-history").exists()

    deploy(ci, ID_A, SHA_A)
    app = app_clone(remote, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPLOYMENT_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(command),
            cwd=app,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    history = run(str(bin_dir / "deployment-history"), "--", "get", ID_A, "--field", "status")
    assert history.returncode == 0, history.stderr
    assert history.stdout == "verified\n"
    read = run(str(bin_dir / "deployment-tracker"), "--history", "origin", "list", "--field", "id")
    assert read.returncode == 0, read.stderr
    assert read.stdout == f"{ID_A}\n" and FRESHNESS.fullmatch(one_line(read))
    block = run(
        str(bin_dir / "deployment-tracker"),
        "--history",
        "origin",
        "block",
        ID_A,
        "--reason",
        "breaks checkout",
    )
    assert block.returncode == 0, block.stderr
    (record,) = history_records(remote, tmp_path)
    assert record["blocked"] is True


def test_a_rollback_preview_in_a_clone_lists_the_commits_it_undoes(
    tmp_path: Path, remote: Path, ci: Path
) -> None:
    """Issue 19: what a rollback undoes, as the commits between the target and what runs."""
    shas = []
    for subject in ("good release", "add the cart", "fix the typo"):
        (ci / "CHANGES").write_text(subject + "\n")
        git("add", "CHANGES", cwd=ci)
        git("commit", "--quiet", "-m", subject, cwd=ci)
        shas.append(git("rev-parse", "HEAD", cwd=ci))
    git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=ci)
    deploy(ci, f"main_{shas[0][:7]}_20260101100000", shas[0])
    deploy(ci, f"main_{shas[2][:7]}_20260101110000", shas[2], verified=False)
    app = app_clone(remote, tmp_path)

    result = on_history("rollback-target", "-e", "staging", "--preview", cwd=app)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-3:] == [
        "2 commits undone:",
        f"  {shas[2][:7]} fix the typo",
        f"  {shas[1][:7]} add the cart",
    ], result.stdout
    as_json = on_history("rollback-target", "-e", "staging", "--preview", "-o", "json", cwd=app)
    assert json.loads(as_json.stdout)["commits"] == f"{shas[0][:7]}..{shas[2][:7]}"
