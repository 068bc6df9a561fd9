"""Shared test helpers, in one place: how tests start the tracker, and the histories they build.

- The CLI in-process: `make_runner()` (the `runner`, `cli` and `cli_json` fixtures in
  conftest.py use it).
- The CLI in a real process: `run_tracker()`, the one way tests start it, through the installed
  console script `deployment-tracker` next to `sys.executable`.
- Histories through the CLI (`History`), and through the data layer at explicit times
  (`deploy`, `check`, `build_known_history`, `build_sample_history`).
- Reliability: files, permissions, and the worker processes the load and crash tests start.

Run as a script, this file is such a worker: `python helpers.py MODE ...`. Workers use the
real data layer on a real database file; the tests start many at once, kill them, and check
what is left on disk.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional, Union

from click.testing import CliRunner, Result

import deployment_tracker as dt

# ==========================================================================
# Starting the tracker
# ==========================================================================

TRACKER_SCRIPT = Path(sys.executable).parent / "deployment-tracker"
# Variables of ours and of GitHub Actions that would change what the CLI does.
CALLER_VARIABLES = (
    dt.DB_ENV_VAR,
    dt.HISTORY_ENV_VAR,
    dt.ENVIRONMENT_ENV_VAR,
    dt.GATES_ENV_VAR,
    "GITHUB_ACTIONS",
    "GITHUB_OUTPUT",
    "_DEPLOYMENT_TRACKER_COMPLETE",
    "COMP_WORDS",
    "COMP_CWORD",
)

Arg = Union[str, bytes]


def make_runner() -> CliRunner:
    """A runner that keeps stderr apart from stdout, on click 8.1 and on 8.2+."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg,unused-ignore]
    except TypeError:  # click 8.2 removed the option and always separates them
        return CliRunner()


def is_root() -> bool:
    return os.geteuid() == 0


def drop_privileges() -> None:
    """In the child, before exec: no capability at all, so even root obeys file
    permissions (as their owner) and the interpreter stays readable."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, einval = 24, 22
    for capability in range(64):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            if ctypes.get_errno() == einval:  # past the last capability
                break
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_tracker(
    *args: Arg,
    db: Optional[Path] = None,
    unprivileged: bool = False,
    env: Optional[dict[str, str]] = None,
    preexec_fn: Optional[Callable[[], None]] = None,
    timeout: float = 120,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run the installed `deployment-tracker` console script in a new process.

    The caller's tracker and GitHub Actions variables are removed; `env` adds to what is
    left. With `unprivileged`, file permissions apply even when the tests run as root.
    Output is decoded leniently (undecodable bytes show as U+FFFD), or left as bytes
    with `text=False`.
    """
    assert TRACKER_SCRIPT.exists(), f"{TRACKER_SCRIPT} is missing: pip install -e '.[test]'"
    full: list[Arg] = [*(["--db", str(db)] if db is not None else []), *args]
    child_env = {key: value for key, value in os.environ.items() if key not in CALLER_VARIABLES}
    child_env.update(env or {})
    steps = [step for step in (drop_privileges if unprivileged else None, preexec_fn) if step]

    def prepare() -> None:
        for step in steps:
            step()

    result = subprocess.run(
        [str(TRACKER_SCRIPT), *full],
        capture_output=True,
        env=child_env,
        preexec_fn=prepare if steps else None,
        timeout=timeout,
        check=False,
    )
    if not text:
        return result
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def process_env(**extra: str) -> dict[str, str]:
    """The test's environment without the caller's tracker or Actions settings, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if key not in CALLER_VARIABLES}
    env.update(extra)
    return env


def record(cli: Callable[..., Result], environment: str, branch: str, sha: str, *extra: str) -> str:
    """Record a deployment through the CLI and return its id."""
    return ok(cli("record", "-e", environment, "-b", branch, "-c", sha, *extra))


def sha(digit: str, index: int = 0) -> str:
    """A full commit sha: `digit` seven times, then `index` in hex."""
    return (digit * 7 + f"{index:033x}")[:40]


# ==========================================================================
# Reading results
# ==========================================================================


def ok(result: Result, *, strip: bool = True) -> str:
    """The stdout (stripped, unless told) of a CliRunner result that must have succeeded."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout.strip() if strip else result.stdout


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """A failure is exactly one `Error: ...` line, never a traceback."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, stderr)


def parse_github_output(text: str) -> dict[str, str]:
    """Read $GITHUB_OUTPUT the way the Actions runner does (key=value and key<<DELIMITER)."""
    values: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            name, value = line[:equals], line[equals + 1 :]
        else:
            assert heredoc > 0, f"invalid line {line!r}"
            name, delimiter = line[:heredoc], line[heredoc + 2 :]
            body = []
            for body_line in lines:
                if body_line == delimiter:
                    break
                body.append(body_line)
            else:
                raise AssertionError(f"no closing delimiter {delimiter!r}")
            value = "\n".join(body)
        assert name not in values, f"{name} set twice"
        values[name] = value
    return values


def output_text(value: Any) -> str:
    """A field as $GITHUB_OUTPUT and --field show it: booleans in lowercase, None empty."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def row_count(db_path: Path, table: str = "deployments") -> int:
    with closing(sqlite3.connect(db_path)) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def captured_sql(db: sqlite3.Connection, action: Callable[[], Any]) -> list[str]:
    """The SELECT statements `action` runs on `db`, with their values filled in."""
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        result = action()
        if isinstance(result, Iterator):
            list(result)
    finally:
        db.set_trace_callback(None)
    return [sql for sql in statements if sql.lstrip().upper().startswith(("SELECT", "WITH"))]


def query_plan(db: sqlite3.Connection, sql: str) -> list[str]:
    """The steps of EXPLAIN QUERY PLAN, e.g. `SEARCH deployments USING INDEX ...`."""
    return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]


# ==========================================================================
# Histories through the CLI
# ==========================================================================


class History:
    """Records deployments through the CLI with unique, ordered ids and commits."""

    def __init__(self, cli: Callable[..., Result]) -> None:
        self.cli = cli
        self.count = 0

    def next_id(self, branch: str = "main") -> tuple[str, str]:
        self.count += 1
        sha = f"{self.count:07x}" + "c" * 33
        seconds = self.count
        stamp = f"20260101{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
        return f"{dt.sanitise_branch(branch)}_{sha[:7]}_{stamp}", sha

    def record(
        self,
        environment: str,
        *extra: str,
        branch: str = "main",
        image: Optional[str] = None,
        verified: bool = False,
    ) -> str:
        deployment_id, sha = self.next_id(branch)
        args = ["record", "-e", environment, "-b", branch, "-c", sha, "--id", deployment_id]
        if image is not None:
            args += ["--image-tag", image]
        ok(self.cli(*args, *extra))
        if verified:
            self.verify(deployment_id)
        return deployment_id

    def rollback(self, environment: str, target: str) -> str:
        deployment_id, _ = self.next_id()
        sha_prefix = deployment_id.split("_")[1]
        # A rollback keeps the target's commit, so its id must name that commit.
        target_sha = target.split("_")[-2]
        deployment_id = deployment_id.replace(f"_{sha_prefix}_", f"_{target_sha}_")
        ok(self.cli("record", "-e", environment, "--rollback-of", target, "--id", deployment_id))
        return deployment_id

    def promote(self, source_id: str, environment: str = "production") -> str:
        deployment_id, _ = self.next_id()
        sha_prefix = deployment_id.split("_")[1]
        deployment_id = deployment_id.replace(f"_{sha_prefix}_", f"_{source_id.split('_')[-2]}_")
        ok(
            self.cli(
                "record", "-e", environment, "--promoted-from", source_id, "--id", deployment_id
            )
        )
        return deployment_id

    def verify(self, deployment_id: str, status: str = "verified") -> None:
        ok(self.cli("verify", deployment_id, "--status", status))

    def get(self, deployment_id: str) -> Any:
        return json.loads(ok(self.cli("get", deployment_id, "-o", "json")))

    def ids(self, *args: str) -> list[str]:
        out = ok(self.cli("list", "--all", "-o", "json", *args))
        return [record["id"] for record in json.loads(out)]


# ==========================================================================
# Histories through the data layer, at explicit times (stats, timeline)
# ==========================================================================

# The known history's clock: `stats --since 10d` at NOW covers 2026-04-01 .. 2026-04-11.
NOW = datetime(2026, 4, 11, tzinfo=timezone.utc)
SINCE = datetime(2026, 4, 1, tzinfo=timezone.utc)


def at(text: str) -> datetime:
    """`04-03 00:20` in April 2026, UTC."""
    return datetime.strptime(f"2026-{text}", "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)


def moment(when: datetime | str) -> datetime:
    return when if isinstance(when, datetime) else at(when)


def deploy(
    db: sqlite3.Connection,
    environment: str,
    when: datetime | str,
    *,
    branch: str = "main",
    sha: str = "a" * 40,
    committed: datetime | str | None = None,
    rollback_of: Optional[str] = None,
    status: str = "deployed",
    actor: str = "octocat",
) -> str:
    """Record a deployment at `when`. No gates: these histories are about DORA figures and
    pictures (production receives fresh builds); the gate's own tests use the real one."""
    request = dt.RecordRequest(
        environment=environment,
        branch=None if rollback_of else branch,
        commit_sha=None if rollback_of else sha,
        rollback_of=rollback_of,
        status=status,
        actor=actor,
        committed_at=moment(committed).isoformat() if committed else None,
    ).checked()
    record, _, _ = dt.record_deployment(db, request, gates={}, now=moment(when))
    return str(record["id"])


def check(db: sqlite3.Connection, deployment_id: str, status: str, when: datetime | str) -> None:
    dt.verify_deployment(db, deployment_id, status, by="smoke-test", now=moment(when))


def build_known_history(db_path: Path) -> dict[str, str]:
    """Production and staging with every figure worked out by hand (see test_stats.py)."""
    db = dt.connect(str(db_path), write=True)
    ids: dict[str, str] = {}
    try:
        # Before the window: never counted.
        ids["p0"] = deploy(db, "production", "03-30 00:00", sha="0" * 40)
        check(db, ids["p0"], "verified", "03-30 00:05")
        ids["s1"] = deploy(db, "staging", "04-01 23:00", sha="1" * 40)
        check(db, ids["s1"], "verified", "04-01 23:10")
        # p1: lead time 04-01 22:00 -> 04-02 00:10 = 2h10m.
        ids["p1"] = deploy(db, "production", "04-02 00:00", sha="1" * 40, committed="04-01 22:00")
        check(db, ids["p1"], "verified", "04-02 00:10")
        # p2 fails; the rollback p3 to p1 is verified at 00:30: restored in 30m.
        ids["p2"] = deploy(db, "production", "04-03 00:00", sha="2" * 40, committed="04-02 23:00")
        check(db, ids["p2"], "failed", "04-03 00:05")
        ids["p3"] = deploy(db, "production", "04-03 00:20", rollback_of=ids["p1"])
        check(db, ids["p3"], "verified", "04-03 00:30")
        ids["s2"] = deploy(db, "staging", "04-04 00:00", branch="branch_1", sha="c" * 40)
        # p4: lead time 04-04 20:00 -> 04-05 00:15 = 4h15m.
        ids["p4"] = deploy(db, "production", "04-05 00:00", sha="4" * 40, committed="04-04 20:00")
        check(db, ids["p4"], "verified", "04-05 00:15")
        # p5: verified (lead time 40m), then rolled back by p6 to p4: restored in 6h05m.
        ids["p5"] = deploy(db, "production", "04-06 00:00", sha="5" * 40, committed="04-05 23:30")
        check(db, ids["p5"], "verified", "04-06 00:10")
        ids["p6"] = deploy(db, "production", "04-06 06:00", rollback_of=ids["p4"])
        check(db, ids["p6"], "verified", "04-06 06:05")
        # p7: failed at deploy; nothing verified after it: unrestored.
        ids["p7"] = deploy(
            db, "production", "04-08 00:00", branch="feature/x", sha="7" * 40, status="failed"
        )
    finally:
        db.close()
    return ids


def build_sample_history(db_path: Path, now: datetime) -> None:
    """A realistic month for the screenshot: staging busy, production calmer,
    a failed verification fixed forward, two rollbacks, one still-pending deploy."""
    import random

    chooser = random.Random(6)
    db = dt.connect(str(db_path), write=True)
    branches = ["main", "feature/login-form", "fix/cache-headers", "branch_1", "release/2.4"]
    people = ["octocat", "hubot", "mona", "dependabot[bot]"]
    start = now - timedelta(days=27)

    try:
        for environment, every, fail_rate in (("staging", 0.9, 0.18), ("production", 2.6, 0.12)):
            when = start + timedelta(hours=chooser.uniform(2, 20))
            last_good: Optional[str] = None
            while when < now - timedelta(hours=6):
                sha = f"{chooser.getrandbits(160):040x}"
                committed = when - timedelta(minutes=chooser.randint(20, 600))
                deployment_id = deploy(
                    db,
                    environment,
                    when,
                    branch=chooser.choice(branches) if environment == "staging" else "main",
                    sha=sha,
                    committed=committed,
                    actor=chooser.choice(people),
                )
                checked = when + timedelta(minutes=chooser.randint(3, 15))
                roll = chooser.random()
                if roll < fail_rate or (roll > 0.92 and last_good is not None):
                    if roll < fail_rate:
                        check(db, deployment_id, "failed", checked)
                    else:
                        check(db, deployment_id, "verified", checked)
                    if last_good is not None and chooser.random() < 0.6:
                        rollback_at = checked + timedelta(minutes=chooser.randint(5, 90))
                        rollback = deploy(db, environment, rollback_at, rollback_of=last_good)
                        check(db, rollback, "verified", rollback_at + timedelta(minutes=4))
                        when = rollback_at
                else:
                    check(db, deployment_id, "verified", checked)
                    last_good = deployment_id
                when += timedelta(days=every * chooser.uniform(0.3, 1.7))
            pending_sha = ("e" if environment == "staging" else "f") * 40
            deploy(db, environment, now - timedelta(hours=2), sha=pending_sha)
    finally:
        db.close()


# ==========================================================================
# Reliability: files on disk
# ==========================================================================

WORKER = str(Path(__file__).resolve())
CRASH_BASE_TIME = datetime(2024, 1, 1, tzinfo=timezone.utc)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A scratch folder of our own whose permissions a test may take away."""
    path = Path(tempfile.mkdtemp(prefix="dt-reliability-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        for folder, _, _ in os.walk(path):
            os.chmod(folder, 0o755)
        shutil.rmtree(path, ignore_errors=True)


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
    with closing(sqlite3.connect(db_path)) as db:
        return [
            db.execute("SELECT * FROM deployments ORDER BY seq").fetchall(),
            db.execute("SELECT * FROM events ORDER BY seq").fetchall(),
        ]


def integrity(db_path: Path) -> str:
    with closing(sqlite3.connect(db_path)) as db:
        result: str = db.execute("PRAGMA integrity_check").fetchone()[0]
        problems = db.execute("PRAGMA foreign_key_check").fetchall()
        return result if not problems else f"foreign keys: {problems}"


def checkpoint(db_path: Path) -> None:
    """Fold the WAL into the main file so its bytes are the whole database."""
    with closing(sqlite3.connect(db_path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def check_history_consistent(db_path: Path) -> dict[str, int]:
    """No half-written record: rows, events and statuses agree."""
    with closing(sqlite3.connect(db_path)) as db:
        deployments = db.execute(
            "SELECT id, status, deployed_at, verified_at, rollback_of FROM deployments"
        ).fetchall()
        history: dict[str, list[tuple[str, str, Optional[str]]]] = {}
        for deployment_id, status, at_time, note in db.execute(
            "SELECT deployment_id, status, at, note FROM events ORDER BY seq"
        ):
            history.setdefault(deployment_id, []).append((status, at_time, note))
    rollbacks = 0
    for deployment_id, status, deployed_at, verified_at, rollback_of in deployments:
        trail = history.get(deployment_id)
        assert trail, f"{deployment_id} has no events"
        assert trail[0][0] in dt.RECORD_STATUSES, (deployment_id, trail)
        assert trail[0][1] == deployed_at, (deployment_id, trail)
        status_changes = [event for event in trail if event[0] in dt.STATUSES]
        assert status_changes[-1][0] == status, (deployment_id, status, trail)
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


# ==========================================================================
# Reliability: deterministic records for the crash test (the test can redo any)
# ==========================================================================


def crash_request(number: int) -> dt.RecordRequest:
    sha = f"{number:07x}" + "c" * 33
    when = CRASH_BASE_TIME + timedelta(seconds=number)
    branch = f"crash/n{number}"
    return dt.RecordRequest(
        environment="live",
        branch=branch,
        commit_sha=sha,
        deployment_id=dt.make_id(branch, sha, when),
        actor="crash-bot",
        run_id=str(number),
        note=f"crash test {number}\nsecond line",
    ).checked()


def crash_rollback_request(number: int, target: dict[str, Any]) -> dt.RecordRequest:
    rollback_id = dt.make_id(
        f"rollback/n{number}", target["commit_sha"], CRASH_BASE_TIME + timedelta(seconds=number)
    )
    return dt.RecordRequest(
        environment="live", deployment_id=rollback_id, rollback_of=target["id"], actor="crash-bot"
    ).checked()


def crash_step(db: sqlite3.Connection, number: int, say: Callable[[str], None]) -> None:
    """One unit of crash-test work: record; then verify every other one and
    roll back every fifth, so transactions touch several rows."""
    request = crash_request(number)
    say(f"begin record {number}")
    dt.record_deployment(db, request, gates=dt.parse_gates(None))
    say(f"recorded {request.deployment_id}")
    if number % 2 == 1:
        say(f"begin verify {number}")
        dt.verify_deployment(db, str(request.deployment_id), "verified", by="crash-bot")
        say(f"verified {request.deployment_id}")
    if number % 5 == 4:
        try:
            target, _ = dt.rollback_target(db, "live")
        except dt.NotFound:
            return
        rollback = crash_rollback_request(number, target)
        say(f"begin rollback {number} {target['id']}")
        dt.record_deployment(db, rollback, gates=dt.parse_gates(None))
        say(f"recorded {rollback.deployment_id}")


# ==========================================================================
# Worker entry points
# ==========================================================================


def wait_for_go() -> None:
    """Block until the test releases every worker at once (one stdin line)."""
    sys.stdin.readline()


def load_worker(db_path: str, worker: int, count: int) -> None:
    wait_for_go()
    db = dt.connect(db_path, write=True)
    sha = hashlib.sha1(f"worker {worker}".encode()).hexdigest()
    for number in range(count):
        request = dt.RecordRequest(
            environment=("staging", "live")[number % 2],
            branch=f"load/w{worker}/n{number}",
            commit_sha=sha,
            actor=f"worker-{worker}",
            note=f"load {worker}.{number}",
        ).checked()
        record, created, _ = dt.record_deployment(db, request, gates=dt.parse_gates(None))
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
    request = dt.RecordRequest(
        environment="staging", branch=f"first-use-{worker}", commit_sha="d" * 40
    ).checked()
    record, _, _ = dt.record_deployment(db, request, gates=dt.parse_gates(None))
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
