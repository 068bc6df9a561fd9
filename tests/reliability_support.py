"""Helpers for the reliability tests, and the worker processes they start.

Run as a script, this file is a worker: `python reliability_support.py MODE ...`.
Workers use the real data layer on a real database file; the tests start many
of them at once, kill them, and check what is left on disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Union

import deployment_tracker as dt

WORKER = str(Path(__file__).resolve())
NOBODY = 65534
CRASH_BASE_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)

# Run as a non-root user from a root process: import everything first (the
# interpreter may live in a folder only root can read), including what the
# tracker imports lazily inside functions, then drop privileges.
NOBODY_BOOTSTRAP = f"""
import ast, difflib, importlib, inspect, os, sys
import click, tabulate
import deployment_tracker
for node in ast.walk(ast.parse(inspect.getsource(deployment_tracker))):
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module]
    else:
        continue
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
sys.argv = ["deployment-tracker", *sys.argv[1:]]
deployment_tracker.main()
"""

Arg = Union[str, bytes]


def is_root() -> bool:
    return os.geteuid() == 0


def run_cli(
    *args: Arg,
    db: Optional[Path] = None,
    as_nobody: bool = False,
    env: Optional[dict[str, str]] = None,
    preexec_fn: Optional[Callable[[], None]] = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the real `deployment-tracker` in a new process.

    With as_nobody, file permissions apply: from root, privileges are dropped
    to user 65534 inside the child before the command runs.
    """
    full: list[Arg] = [*(["--db", str(db)] if db is not None else []), *args]
    if as_nobody and is_root():
        command: list[Arg] = [sys.executable, "-c", NOBODY_BOOTSTRAP, *full]
    else:
        command = [sys.executable, "-m", "deployment_tracker", *full]
    result = subprocess.run(
        command,
        capture_output=True,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec_fn,
        timeout=timeout,
        check=False,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """A failure is exactly one `Error: ...` line, never a traceback."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, stderr)


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A scratch folder user 65534 can use (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="dt-reliability-"))
    try:
        path.chmod(0o755)
        if is_root():
            os.chown(path, NOBODY, NOBODY)
        yield path
    finally:
        for folder, _, _ in os.walk(path):
            os.chmod(folder, 0o755)
        shutil.rmtree(path, ignore_errors=True)


def give_to_nobody(*paths: Path) -> None:
    if is_root():
        for path in paths:
            os.chown(path, NOBODY, NOBODY)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file in a folder with a hash of its bytes."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
        for path in sorted(folder.rglob("*"))
    }


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dump(db_path: Path) -> list[Any]:
    """All rows of both tables, read without the tracker's code."""
    db = sqlite3.connect(db_path)
    try:
        return [
            db.execute("SELECT * FROM deployments ORDER BY seq").fetchall(),
            db.execute("SELECT * FROM events ORDER BY seq").fetchall(),
        ]
    finally:
        db.close()


def integrity(db_path: Path) -> str:
    db = sqlite3.connect(db_path)
    try:
        result: str = db.execute("PRAGMA integrity_check").fetchone()[0]
        problems = db.execute("PRAGMA foreign_key_check").fetchall()
        return result if not problems else f"foreign keys: {problems}"
    finally:
        db.close()


def checkpoint(db_path: Path) -> None:
    """Fold the WAL into the main file so its bytes are the whole database."""
    db = sqlite3.connect(db_path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def check_history_consistent(db_path: Path) -> dict[str, int]:
    """No half-written record: rows, events and statuses agree."""
    db = sqlite3.connect(db_path)
    try:
        deployments = db.execute(
            "SELECT id, status, deployed_at, verified_at, rollback_of FROM deployments"
        ).fetchall()
        history: dict[str, list[tuple[str, str, Optional[str]]]] = {}
        for deployment_id, status, at, note in db.execute(
            "SELECT deployment_id, status, at, note FROM events ORDER BY seq"
        ):
            history.setdefault(deployment_id, []).append((status, at, note))
    finally:
        db.close()
    rollbacks = 0
    for deployment_id, status, deployed_at, verified_at, rollback_of in deployments:
        trail = history.get(deployment_id)
        assert trail, f"{deployment_id} has no events"
        assert trail[0][0] in dt.RECORD_STATUSES, (deployment_id, trail)
        assert trail[0][1] == deployed_at, (deployment_id, trail)
        assert trail[-1][0] == status, (deployment_id, status, trail)
        if status == "verified":
            assert verified_at is not None, deployment_id
        if rollback_of is not None:
            rollbacks += 1
            marks = [
                other
                for other, trail_of_other in history.items()
                for event in trail_of_other
                if event[0] == "rolled_back" and f"rollback {deployment_id} " in (event[2] or "")
            ]
            assert len(marks) == 1, (deployment_id, marks)
    assert set(history) <= {row[0] for row in deployments}, "events without a deployment"
    return {
        "deployments": len(deployments),
        "events": sum(len(trail) for trail in history.values()),
        "rollbacks": rollbacks,
    }


# --------------------------------------------------------------------------
# Deterministic records for the crash test: the test can redo any of them.
# --------------------------------------------------------------------------


def crash_fields(number: int) -> dict[str, str]:
    sha = f"{number:07x}" + "c" * 33
    moment = CRASH_BASE_TIME + timedelta(seconds=number)
    branch = f"crash/n{number}"
    return {
        "environment": "live",
        "branch": branch,
        "commit_sha": sha,
        "deployment_id": dt.make_id(branch, sha, moment),
        "actor": "crash-bot",
        "run_id": str(number),
        "note": f"crash test {number}\nsecond line",
    }


def crash_rollback_id(number: int, target: dict[str, Any]) -> str:
    return dt.make_id(
        f"rollback/n{number}", target["commit_sha"], CRASH_BASE_TIME + timedelta(seconds=number)
    )


def crash_step(db: sqlite3.Connection, number: int, say: Callable[[str], None]) -> None:
    """One unit of crash-test work: record; then verify every other one and
    roll back every fifth, so transactions touch several rows."""
    fields = crash_fields(number)
    say(f"begin record {number}")
    dt.record_deployment(db, **fields)
    say(f"recorded {fields['deployment_id']}")
    if number % 2 == 1:
        say(f"begin verify {number}")
        dt.verify_deployment(db, fields["deployment_id"], "verified", by="crash-bot")
        say(f"verified {fields['deployment_id']}")
    if number % 5 == 4:
        try:
            target = dt.rollback_target(db, "live")
        except dt.NotFound:
            return
        rollback_id = crash_rollback_id(number, target)
        say(f"begin rollback {number} {target['id']}")
        dt.record_deployment(
            db,
            environment="live",
            deployment_id=rollback_id,
            rollback_of=target["id"],
            actor="crash-bot",
        )
        say(f"recorded {rollback_id}")


# --------------------------------------------------------------------------
# Worker entry points
# --------------------------------------------------------------------------


def wait_for_go() -> None:
    """Block until the test releases every worker at once (one stdin line)."""
    sys.stdin.readline()


def load_worker(db_path: str, worker: int, count: int) -> None:
    wait_for_go()
    db = dt.connect(db_path, write=True)
    sha = hashlib.sha1(f"worker {worker}".encode()).hexdigest()
    for number in range(count):
        record, created = dt.record_deployment(
            db,
            environment=("staging", "live")[number % 2],
            branch=f"load/w{worker}/n{number}",
            commit_sha=sha,
            actor=f"worker-{worker}",
            note=f"load {worker}.{number}",
        )
        assert created
        if number % 4 == 0:
            dt.verify_deployment(db, record["id"], "verified", by=f"worker-{worker}")
        print(record["id"], flush=True)
    db.close()


def read_worker(db_path: str, stop_file: str) -> None:
    """Read in a loop until told to stop; any error ends the process non-zero."""
    reads = 0
    while True:
        stopping = os.path.exists(stop_file)
        db = dt.connect(db_path, write=False)
        for environment in ("staging", "live"):
            assert len(list(dt.list_deployments(db, environment=environment))) > 0
            dt.latest(db, environment, "any")
        list(dt.list_deployments(db, status="verified", limit=None))
        db.close()
        reads += 1
        if stopping:
            break
    print(reads, flush=True)


def migrate_worker(db_path: str, worker: int) -> None:
    wait_for_go()
    db = dt.connect(db_path, write=True)
    record, _ = dt.record_deployment(
        db, environment="staging", branch=f"first-use-{worker}", commit_sha="d" * 40
    )
    print(record["id"], flush=True)
    db.close()


def crash_worker(db_path: str, start: int) -> None:
    """Work forever from `start`, reporting each step after it committed."""

    def say(line: str) -> None:
        print(line, flush=True)

    db = dt.connect(db_path, write=True)
    say("ready")
    number = start
    while True:
        crash_step(db, number, say)
        number += 1


def main(argv: Sequence[str]) -> None:
    mode, db_path, *rest = argv
    if mode == "load":
        load_worker(db_path, int(rest[0]), int(rest[1]))
    elif mode == "read":
        read_worker(db_path, rest[0])
    elif mode == "migrate":
        migrate_worker(db_path, int(rest[0]))
    elif mode == "crash":
        crash_worker(db_path, int(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
