"""Helpers shared by the history, notification and workflow tests: real processes only.

Real git repositories on disk, the installed `deployment-tracker` console script, the workflow's
scripts run by the test's Python, and real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The console script next to the test's Python: cached bytecode, as CI runs it.
TRACKER = BIN / "deployment-tracker"
SCRIPTS = ROOT / ".github" / "scripts"
HISTORY_SCRIPT = SCRIPTS / "deployment_history.py"
NOTIFY_SCRIPT = SCRIPTS / "deployment_notify.py"
HISTORY_BRANCH = "deployment-history"
REAL_GIT = shutil.which("git") or "git"

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


# --------------------------------------------------------------------------
# git
# --------------------------------------------------------------------------


def git(*args: str, cwd: Path | None = None, check: bool = True) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    result = subprocess.run(
        [REAL_GIT, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
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


def protect(remote: Path, refusing: str = ".") -> None:
    """A ruleset on the history branch, as GitHub answers one: the server refuses a push whose
    commit message matches the regular expression `refusing` (every push by default)."""
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        "while read -r old new ref; do\n"
        f'  if git log -1 --format=%s "$new" | grep -Eq {shlex.quote(refusing)}; then\n'
        '    echo "error: GH013: Repository rule violations found for $ref." >&2\n'
        '    echo "- Cannot update this protected ref." >&2\n'
        "    exit 1\n"
        "  fi\n"
        "done\n"
    )
    hook.chmod(0o755)


def history_commits(remote: Path, branch: str = HISTORY_BRANCH) -> list[str]:
    out = git("--git-dir", str(remote), "rev-list", branch, check=False)
    return out.split() if out else []


def history_tip(remote: Path, branch: str = HISTORY_BRANCH) -> str:
    return git("--git-dir", str(remote), "rev-parse", "--verify", "--quiet", branch, check=False)


def history_db(remote: Path, into: Path, branch: str = HISTORY_BRANCH) -> Path:
    """The database's exact bytes on the history branch (no filters)."""
    data = subprocess.run(
        [REAL_GIT, "--git-dir", str(remote), "cat-file", "blob", f"{branch}:deployments.db"],
        capture_output=True,
        check=True,
    ).stdout
    into.write_bytes(data)
    return into


def put_history_file(remote: Path, data: bytes, branch: str = HISTORY_BRANCH) -> str:
    """Commit `data` as the history database directly into the bare remote (a crafted tip)."""
    git_dir = ["--git-dir", str(remote)]
    blob = subprocess.run(
        [REAL_GIT, *git_dir, "hash-object", "-w", "--stdin"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout.decode()
    tree = subprocess.run(
        [REAL_GIT, *git_dir, "mktree"],
        input=f"100644 blob {blob.strip()}\tdeployments.db\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parent = history_tip(remote, branch)
    commit = git(*git_dir, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", "x")
    git(*git_dir, "update-ref", f"refs/heads/{branch}", commit)
    return commit


def fake_git(directory: Path, before: str = "", *, drop: str = "") -> dict[str, str]:
    """Environment with a `git` first on PATH that runs shell code `before`, then the real git.

    `$LOG` inside `before` names directory/git.log; `drop` removes one argument from every call.
    """
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "git"
    filtered = f'[ "$a" = {shlex.quote(drop)} ] || ' if drop else ""
    wrapper.write_text(
        "#!/bin/bash\n"
        f"LOG={shlex.quote(str(directory / 'git.log'))}\n"
        f"{before}\n"
        'args=(); for a in "$@"; do ' + filtered + 'args+=("$a"); done\n'
        f'exec {shlex.quote(REAL_GIT)} "${{args[@]}}"\n'
    )
    wrapper.chmod(0o755)
    return {"PATH": f"{directory}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


# --------------------------------------------------------------------------
# The tracker and the workflow's scripts, as child processes
# --------------------------------------------------------------------------


def _run(
    command: list[str], cwd: Path, env: dict[str, str] | None, timeout: float, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "PATH": path, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tracker(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed `deployment-tracker` in a child process, as CI does."""
    return _run([str(TRACKER), *args], cwd, env, timeout)


def with_history(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `deployment_history.py ARGS...` (the tracker found on PATH, the venv's first)."""
    return _run([sys.executable, str(HISTORY_SCRIPT), *args], cwd, env, timeout)


def notify_script(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, str(NOTIFY_SCRIPT), *args], cwd, env, timeout, stdin)


def history_records(
    remote: Path, scratch: Path, branch: str = HISTORY_BRANCH
) -> list[dict[str, Any]]:
    db = history_db(remote, scratch / "history-copy.db", branch)
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


# --------------------------------------------------------------------------
# HTTP servers on 127.0.0.1
# --------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Loopback:
    """A threaded HTTP server on 127.0.0.1 that records every request, then lets `respond`
    answer it (default: 200 with a short body)."""

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None] | None = None) -> None:
        self.requests: list[Request] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or "0")
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                server.requests.append(Request(self.command, self.path, headers, body))
                (respond or answer(200))(self)

            do_GET = do_POST = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def answer(
    status: int, body: bytes = b"ok", headers: dict[str, str] | None = None
) -> Callable[[BaseHTTPRequestHandler], None]:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    return respond
