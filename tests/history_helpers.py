"""Helpers shared by the history and workflow tests: real git repositories on disk."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRACKER = ROOT / "deployment_tracker.py"
HISTORY_BRANCH = "deployment-history"

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout.strip()


def bare_remote(path: Path) -> Path:
    git("init", "--quiet", "--bare", str(path))
    return path


def clone(remote: Path, path: Path) -> Path:
    git("clone", "--quiet", str(remote), str(path))
    return path


def tracker(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process, as CI does."""
    return subprocess.run(
        [sys.executable, str(TRACKER), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def history_commits(remote: Path, branch: str = HISTORY_BRANCH) -> list[str]:
    out = git("--git-dir", str(remote), "rev-list", branch, check=False)
    return out.split() if out else []


def history_db(remote: Path, into: Path, branch: str = HISTORY_BRANCH) -> Path:
    """Read the database from the history branch, as the README tells a person to."""
    data = subprocess.run(
        ["git", "--git-dir", str(remote), "show", f"{branch}:deployments.db"],
        capture_output=True,
        check=True,
    ).stdout
    into.write_bytes(data)
    return into


def history_records(remote: Path, scratch: Path) -> list[dict[str, Any]]:
    db = history_db(remote, scratch / "history-copy.db")
    result = tracker("--db", str(db), "list", "--all", "--format", "json", cwd=scratch)
    assert result.returncode == 0, result.stderr
    records: list[dict[str, Any]] = json.loads(result.stdout)
    return records


def integrity(db: Path) -> str:
    connection = sqlite3.connect(db)
    try:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        connection.close()
