"""Benchmark the shared history branch; prints Markdown tables (issue 20).

Not a test (pytest does not collect it; test_history_bench.py runs it once at a tiny size).
Everything runs against local bare remotes on disk through the installed commands
(`deployment-history`, `deployment-tracker`), each call from a fresh shallow clone of the app
(a fresh runner: no state), and each job of a workflow run from its own fresh clone, with its own
session directory when the history supports `$DEPLOYMENT_HISTORY_SESSION`. Times are medians of
--runs whole calls, and each size is compared with the smallest one measured in the same run.

    .venv/bin/python tests/benchmarks/history.py                      # 1k, 100k, 1M; 1, 8, 16
    .venv/bin/python tests/benchmarks/history.py --sizes 1k,100k --writers 1,8,16 --runs 3

The tracker databases come from run.py's generator and cache (--cache-dir). A remote is seeded
with `deployment-history import FILE` when that command exists, else by committing the file on
the branch as today's single-file layout stores it (README.md and deployments.db); with today's
layout, sizes above --legacy-limit are skipped (each call would move the whole file).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as tracker_bench  # noqa: E402  (the tracker benchmark: generator, cache, labels)

dt = tracker_bench.dt
label = tracker_bench.label
parse_size = tracker_bench.parse_size
verdict = tracker_bench.verdict
log = tracker_bench.log

BIN = Path(sys.executable).parent
HISTORY = str(BIN / "deployment-history")
TRACKER = str(BIN / "deployment-tracker")
REAL_GIT = shutil.which("git") or "git"
BRANCH = "deployment-history"
APP_BRANCH = "main"
SESSION_ENV = "DEPLOYMENT_HISTORY_SESSION"
REPOSITORY = "ghcr.io/acme/shop"
RUN_URL = "https://github.com/acme/shop/actions/runs/{}"
IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
# Targets from issue 20, judged at the largest size measured.
READ_SECONDS = 0.5
WRITE_SECONDS = 1.0
MAX_RATIO = 1.5
MAX_BLOB = 50 * 1024 * 1024
MAX_GROWTH = 2.0
TARGET_WRITERS = 16
READS = ("`rollback-target -e production`", "`get` a recent id")
WRITES = ("`record`", "`verify`")


# --------------------------------------------------------------------------
# The layout under test
# --------------------------------------------------------------------------


@dataclass
class Layout:
    importer: bool  # `deployment-history import FILE [--replace]` exists
    session: bool  # $DEPLOYMENT_HISTORY_SESSION=DIR makes a job's calls share one fetch
    version: int = 1  # the history module's LAYOUT: 1 is one deployments.db per commit

    @property
    def single_file(self) -> bool:
        return self.version < 2

    @property
    def name(self) -> str:
        layout = "today's single-file layout" if self.single_file else f"layout {self.version}"
        seeded = "`deployment-history import`" if self.importer else "committing deployments.db"
        return f"{layout} (seeded by {seeded})"


def detect_layout(seed: str, session: str) -> Layout:
    with tempfile.TemporaryDirectory() as empty:  # not a git repository: nothing can be fetched
        env = clean_env()
        helped = subprocess.run(
            [HISTORY, "import", "--help"],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        general = subprocess.run(
            [HISTORY, "--help"], cwd=empty, env=env, capture_output=True, text=True, check=False
        )
    importer = helped.returncode == 0 and "import" in helped.stdout
    spec = importlib.util.find_spec("deployment_tracker_workflow.deployment_history")
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    sessions = SESSION_ENV in general.stdout + helped.stdout or SESSION_ENV in source
    found = re.search(r"(?m)^LAYOUT = (\d+)$", source)
    return Layout(
        importer={"auto": importer, "import": True, "commit": False}[seed],
        session={"auto": sessions, "on": True, "off": False}[session],
        version=int(found.group(1)) if found else 1,
    )


# --------------------------------------------------------------------------
# Git, remotes and clones
# --------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """The caller's environment without anything that would steer the tools elsewhere."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DEPLOYMENT_", "GIT_", "GITHUB_"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    return env


def git(*args: str, cwd: Optional[Path] = None, stdin: bytes = b"") -> str:
    result = subprocess.run(
        [REAL_GIT, *args],
        cwd=cwd,
        input=stdin,
        env={**clean_env(), **IDENTITY},
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode().strip()


def bare_remote(path: Path) -> Path:
    """A bare remote holding a tiny app on `main` (what actions/checkout clones)."""
    git("init", "--quiet", "--bare", "--initial-branch", APP_BRANCH, str(path))
    blob = git("--git-dir", str(path), "hash-object", "-w", "--stdin", stdin=b"print('shop')\n")
    tree = git("--git-dir", str(path), "mktree", stdin=f"100644 blob {blob}\tapp.py\n".encode())
    commit = git("--git-dir", str(path), "commit-tree", tree, "-m", "the app")
    git("--git-dir", str(path), "update-ref", f"refs/heads/{APP_BRANCH}", commit)
    return path


class Clones:
    """Fresh shallow clones of the app, as each job's checkout makes one."""

    def __init__(self, remote: Path, work: Path) -> None:
        self.remote = remote
        self.work = work
        self.count = 0
        self.lock = threading.Lock()

    def fresh(self) -> Path:
        with self.lock:
            self.count += 1
            path = self.work / f"clone-{self.count}"
        git(
            "clone",
            "--quiet",
            "--depth",
            "1",
            "--branch",
            APP_BRANCH,
            self.remote.as_uri(),
            str(path),
        )
        return path

    def done(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


def objects_bytes(remote: Path) -> int:
    return sum(path.stat().st_size for path in (remote / "objects").rglob("*") if path.is_file())


def branch_blobs(remote: Path) -> tuple[int, str, int, int]:
    """(largest blob reachable from the branch, its path, files at the tip, their bytes)."""
    git_dir = ("--git-dir", str(remote))
    objects = git(*git_dir, "rev-list", "--objects", f"refs/heads/{BRANCH}")
    checked = git(
        *git_dir,
        "cat-file",
        "--batch-check=%(objecttype) %(objectsize) %(rest)",
        stdin=(objects + "\n").encode(),
    )
    largest, where = 0, ""
    for line in checked.splitlines():
        kind, size, *rest = line.split(" ", 2)
        if kind == "blob" and int(size) > largest:
            largest, where = int(size), (rest[0] if rest else "")
    tip = git(*git_dir, "ls-tree", "-r", "-l", f"refs/heads/{BRANCH}").splitlines()
    tip_bytes = sum(int(line.split()[3]) for line in tip if line.split()[1] == "blob")
    return largest, where, len(tip), tip_bytes


def seed_by_commit(remote: Path, source: Path, work: Path) -> None:
    """Today's layout: README.md and deployments.db on the branch, in rollback-journal mode,
    as deployment_history.py commits them."""
    spec = importlib.util.find_spec("deployment_tracker_workflow.deployment_history")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    copy = work / "seed.db"
    shutil.copyfile(source, copy)
    db = sqlite3.connect(copy)
    db.execute("PRAGMA journal_mode = DELETE")
    db.close()
    git_dir = ("--git-dir", str(remote))
    database = git(*git_dir, "hash-object", "-w", "--no-filters", str(copy))
    readme = git(*git_dir, "hash-object", "-w", "--stdin", stdin=module.README.encode())
    listing = f"100644 blob {readme}\tREADME.md\n100644 blob {database}\t{module.HISTORY_FILE}\n"
    tree = git(*git_dir, "mktree", stdin=listing.encode())
    commit = git(*git_dir, "commit-tree", tree, "-m", "seeded by tests/benchmarks/history.py")
    git(*git_dir, "update-ref", f"refs/heads/{BRANCH}", commit)
    copy.unlink()


# --------------------------------------------------------------------------
# Calls
# --------------------------------------------------------------------------


@dataclass
class Call:
    argv: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    fetches: int = 0
    ls_remotes: int = 0
    pushes: int = 0


TRACE_COMMAND = re.compile(r"trace: built-in: git (fetch|ls-remote|push)\b")
ATTEMPT = re.compile(r"\battempt (\d+)")


def call(
    argv: Sequence[str],
    cwd: Path,
    *,
    extra: Optional[dict[str, str]] = None,
    check: bool = True,
) -> Call:
    """One whole process, timed; the git commands that reached the remote, from GIT_TRACE."""
    with tempfile.NamedTemporaryFile("r", prefix="trace-", dir=cwd.parent) as trace:
        env = {**clean_env(), **(extra or {}), "GIT_TRACE": trace.name}
        started = time.perf_counter()
        result = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - started
        counts = Counter(found[1] for found in TRACE_COMMAND.finditer(trace.read()))
    done = Call(list(argv), seconds, result.returncode, result.stdout, result.stderr)
    done.fetches, done.ls_remotes, done.pushes = (
        counts["fetch"],
        counts["ls-remote"],
        counts["push"],
    )
    if check and result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(argv)}\n{result.stderr}")
    return done


def history(*args: str) -> list[str]:
    return [HISTORY, "--", *args]


def github_outputs(path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT as the runner reads it: name=value lines and name<<DELIMITER blocks."""
    values: dict[str, str] = {}
    lines = iter(path.read_text(encoding="utf-8").splitlines() if path.exists() else [])
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block = []
            for value in lines:
                if value == delimiter:
                    break
                block.append(value)
            values[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def new_sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


# --------------------------------------------------------------------------
# A workflow run, job by job
# --------------------------------------------------------------------------


@dataclass
class Job:
    name: str
    calls: list[Call] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(done.seconds for done in self.calls)


class Runner:
    """A fresh runner for one job: its own clone, $GITHUB_OUTPUT and session directory."""

    def __init__(self, name: str, clones: Clones, layout: Layout) -> None:
        self.job = Job(name)
        self.clones = clones
        self.clone = clones.fresh()
        self.home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=clones.work))
        self.extra: dict[str, str] = {}
        if layout.session:
            session = self.home / "session"
            session.mkdir()
            self.extra[SESSION_ENV] = str(session)

    def history(self, *args: str, output: bool = False) -> Call:
        extra = dict(self.extra)
        if output:
            extra["GITHUB_OUTPUT"] = str(self.home / "github_output")
        done = call(history(*args), self.clone, extra=extra)
        self.job.calls.append(done)
        return done

    def outputs(self) -> dict[str, str]:
        values = github_outputs(self.home / "github_output")
        (self.home / "github_output").unlink(missing_ok=True)
        return values

    def close(self) -> Job:
        self.clones.done(self.clone)
        shutil.rmtree(self.home, ignore_errors=True)
        return self.job


def workflow_run(clones: Clones, layout: Layout, rng: random.Random, *, fails: bool) -> list[Job]:
    """The history calls of deploy.yml's jobs for a push to main deploying staging: prepare,
    deploy, verify (its smoke check passing, or failing and then the automatic rollback)."""
    sha = new_sha(rng)
    run_id = str(rng.randrange(10**9))
    who = ("--actor", "bench", "--run-id", run_id, "--run-url", RUN_URL.format(run_id))
    jobs = []

    prepare = Runner("prepare", clones, layout)
    prepare.history(
        "plan", "--environment", "staging", "--branch", APP_BRANCH, "--commit", sha,
        "--repository", REPOSITORY, "--github-output", output=True,
    )  # fmt: skip
    plan = prepare.outputs()
    jobs.append(prepare.close())
    if plan.get("mode") != "deploy":
        raise SystemExit(f"plan chose {plan.get('mode')!r}, not deploy: {plan}")
    deployment_id = plan["id"]
    committed = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    deploy = Runner("deploy", clones, layout)
    deploy.history(
        "record", "--environment", "staging", "--branch", APP_BRANCH, "--commit", sha,
        "--committed-at", committed, "--id", deployment_id, *who,
        "--image-digest", f"sha256:{rng.getrandbits(256):064x}",
    )  # fmt: skip
    expect(deploy.history("settle", "--id", deployment_id, "--stage", "deploy"), "deploy")
    deploy.history("get", "--id", deployment_id, "--format", "json")
    jobs.append(deploy.close())

    verify = Runner("verify", clones, layout)
    expect(verify.history("settle", "--id", deployment_id, "--stage", "verify"), "verify")
    status = "failed" if fails else "verified"
    verify.history(
        "verify", "--id", deployment_id, "--status", status, "--by", "smoke-check (run by bench)",
        "--note", "GET /health: 503" if fails else "GET /health: 200",
    )  # fmt: skip
    verify.history("get", "--id", deployment_id, "--format", "json")
    verify.history(*TIMELINE)
    jobs.append(verify.close())
    if not fails:
        return jobs

    rollback = Runner("rollback", clones, layout)
    settled = rollback.history(
        "settle", "--id", deployment_id, "--stage", "rollback", "--github-output", output=True
    )
    expect(settled, "rollback")
    target = rollback.outputs()
    # `deployment-tracker new-id` makes no history call: it is left out of the job's time.
    rollback_id = dt.make_id(target["branch"], target["commit_sha"], datetime.now(timezone.utc))
    rollback.history(
        "record", "--environment", "staging", "--id", rollback_id, "--rollback-of", target["id"],
        *who, "--note", f"automatic rollback after {deployment_id} failed",
    )  # fmt: skip
    rollback.history("get", "--id", rollback_id, "--format", "json")
    rollback.history(
        "verify", "--id", rollback_id, "--status", "verified",
        "--by", "smoke-check (run by bench)", "--note", "GET /health: 200",
    )  # fmt: skip
    rollback.history("get", "--id", rollback_id, "--format", "json")
    rollback.history("get", "--id", rollback_id, "--format", "json")  # the notification's record
    rollback.history(*TIMELINE)
    jobs.append(rollback.close())
    return jobs


TIMELINE = ("timeline", "--environment", "staging", "--since", "30d", "--format", "markdown")


def expect(done: Call, action: str) -> None:
    if done.stdout.strip() != action:
        raise SystemExit(f"{' '.join(done.argv)} said {done.stdout.strip()!r}, not {action}")


# --------------------------------------------------------------------------
# One size
# --------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: int
    skipped: str = ""
    seed_seconds: float = 0.0
    source_bytes: int = 0
    calls: dict[str, list[float]] = field(default_factory=dict)  # case -> seconds per run
    runs: dict[str, list[float]] = field(default_factory=dict)  # workflow run -> seconds per run
    jobs: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # job -> counts, calls
    largest_blob: int = 0
    largest_blob_path: str = ""
    tip_files: int = 0
    tip_bytes: int = 0
    growth_writes: int = 0
    growth_bytes: int = 0
    changed_page_bytes: int = 0


def case_calls(subjects: tuple[str, str]) -> dict[str, Any]:
    recent, old = subjects
    return {
        "`rollback-target -e production`": ("rollback-target", "--environment", "production"),
        "`get` a recent id": ("get", "--id", recent, "--format", "json"),
        "`get` an old id": ("get", "--id", old, "--format", "json"),
        "`record`": None,  # made per run: a new deployment each time
        "`verify`": None,  # the deployment the same run's `record` made
        "`stats` (30d)": ("stats",),
        "`timeline -e staging --since 30d`": TIMELINE,
    }


def subject_ids(source: Path) -> tuple[str, str]:
    db = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        recent = db.execute("SELECT id FROM deployments ORDER BY seq DESC LIMIT 1").fetchone()[0]
        old = db.execute("SELECT id FROM deployments ORDER BY seq LIMIT 1").fetchone()[0]
    finally:
        db.close()
    return str(recent), str(old)


def record_args(deployment_id: str, branch: str, sha: str) -> tuple[str, ...]:
    return (
        "record", "--environment", "dev", "--branch", branch, "--commit", sha,
        "--id", deployment_id, "--actor", "bench", "--field", "id",
    )  # fmt: skip


class Ids:
    """New deployment ids, one second apart, each with its own commit."""

    def __init__(self, rng: random.Random, branch: str) -> None:
        self.rng = rng
        self.branch = branch
        self.moment = datetime.now(timezone.utc) - timedelta(minutes=50)
        self.lock = threading.Lock()

    def next(self) -> tuple[str, str]:
        with self.lock:
            self.moment += timedelta(seconds=1)
            sha = new_sha(self.rng)
            return dt.make_id(self.branch, sha, self.moment), sha


def measure_size(size: int, options: argparse.Namespace, layout: Layout, work: Path) -> SizeResult:
    result = SizeResult(size)
    source = tracker_bench.cached_database(Path(options.cache_dir), size, options.rebuild)
    result.source_bytes = source.stat().st_size
    rng = random.Random(size)
    remote = bare_remote(work / "remote.git")
    clones = Clones(remote, work)
    log(f"{label(size)}: seeding ({label(size)} deployments, {result.source_bytes:,} bytes)")
    started = time.perf_counter()
    if layout.importer:
        clone = clones.fresh()
        seed = work / "seed.db"
        shutil.copyfile(source, seed)
        call([HISTORY, "import", str(seed)], clone)
        seed.unlink()
        clones.done(clone)
    else:
        seed_by_commit(remote, source, work)
    result.seed_seconds = time.perf_counter() - started
    ids = Ids(rng, "bench/calls")
    cases = case_calls(subject_ids(source))
    recorded: list[str] = []

    def one(name: str) -> Call:
        args = cases[name]
        if name == "`record`":
            deployment_id, sha = ids.next()
            args = record_args(deployment_id, ids.branch, sha)
            recorded.append(deployment_id)
        elif name == "`verify`":
            args = ("verify", "--id", recorded.pop(0), "--status", "verified", "--by", "bench")
        clone = clones.fresh()
        try:
            return call(history(*args), clone)
        finally:
            clones.done(clone)

    one("`rollback-target -e production`")  # warms the page cache; not timed
    result.calls = {name: [] for name in cases}
    order = list(cases)
    for number in range(options.runs):
        log(f"{label(size)}: calls, run {number + 1}/{options.runs}")
        rng.shuffle(order)
        if order.index("`verify`") < order.index("`record`"):
            first, second = order.index("`verify`"), order.index("`record`")
            order[first], order[second] = order[second], order[first]
        for name in order:
            result.calls.setdefault(name, []).append(one(name).seconds)
        for fails in (False, True):
            name = "failed verify + rollback run" if fails else "normal deploy run"
            log(f"{label(size)}: {name}, run {number + 1}/{options.runs}")
            jobs = workflow_run(clones, layout, rng, fails=fails)
            result.runs.setdefault(name, []).append(sum(job.seconds for job in jobs))
            for job in jobs:
                key = f"{name}: {job.name}"
                counts = result.jobs.setdefault(
                    key, {"calls": [], "fetches": [], "ls_remotes": [], "pushes": []}
                )
                counts["calls"].append(len(job.calls))
                counts["fetches"].append(sum(done.fetches for done in job.calls))
                counts["ls_remotes"].append(sum(done.ls_remotes for done in job.calls))
                counts["pushes"].append(sum(done.pushes for done in job.calls))
    log(f"{label(size)}: growth over {options.growth_writes} writes")
    measure_growth(result, source, remote, clones, Ids(rng, "bench/growth"), options, work)
    blob = branch_blobs(remote)
    result.largest_blob, result.largest_blob_path, result.tip_files, result.tip_bytes = blob
    return result


def changed_pages(before: Path, after: Path) -> int:
    """Bytes of the pages (the database's page size) that differ, or that one file lacks."""
    page = int.from_bytes(
        after.read_bytes()[16:18] if after.stat().st_size >= 18 else b"\0\0", "big"
    )
    page = 65536 if page == 1 else (page or 4096)
    changed = 0
    with open(before, "rb") as old, open(after, "rb") as new:
        while True:
            a, b = old.read(page * 256), new.read(page * 256)
            if not a and not b:
                return changed
            if a == b:
                continue
            for start in range(0, max(len(a), len(b)), page):
                if a[start : start + page] != b[start : start + page]:
                    changed += page
    return changed


def measure_growth(
    result: SizeResult,
    source: Path,
    remote: Path,
    clones: Clones,
    ids: Ids,
    options: argparse.Namespace,
    work: Path,
) -> None:
    """The bare remote's growth over N writes (alternately `record` and `verify` of it),
    against the SQLite pages the same commands change in a local copy of the database."""
    local, before = work / "local.db", work / "local-before.db"
    shutil.copyfile(source, local)
    start_bytes = objects_bytes(remote)
    pending = ""
    for number in range(options.growth_writes):
        if number % 2 == 0:
            pending, sha = ids.next()
            args: tuple[str, ...] = record_args(pending, ids.branch, sha)
        else:
            args = ("verify", "--id", pending, "--status", "verified", "--by", "bench")
        shutil.copyfile(local, before)
        call([TRACKER, "--db", str(local), *args], work)
        result.changed_page_bytes += changed_pages(before, local)
        clone = clones.fresh()
        call(history(*args), clone)
        clones.done(clone)
    result.growth_writes = options.growth_writes
    result.growth_bytes = objects_bytes(remote) - start_bytes
    for path in (local, before):
        path.unlink()


# --------------------------------------------------------------------------
# Contention
# --------------------------------------------------------------------------


@dataclass
class Contention:
    writers: int
    per_writer: int
    seconds: float = 0.0
    write_seconds: list[float] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)


@dataclass
class Landing:
    missing: list[str]
    duplicated: list[str]
    failed: int

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicated and not self.failed


def landing(contention: Contention) -> Landing:
    """Did every write land exactly once, and none fail?"""
    counts = Counter(contention.found)
    return Landing(
        missing=[each for each in contention.expected if counts[each] == 0],
        duplicated=[each for each in contention.expected if counts[each] > 1],
        failed=len(contention.failures),
    )


def contend(writers: int, options: argparse.Namespace, layout: Layout, work: Path) -> Contention:
    """`writers` processes at once, each making --records-per-writer records, one after the
    other, each from a fresh clone, on one remote seeded with 1k deployments."""
    result = Contention(writers, options.records_per_writer)
    source = tracker_bench.cached_database(Path(options.cache_dir), 1000, options.rebuild)
    remote = bare_remote(work / "remote.git")
    clones = Clones(remote, work)
    if layout.importer:
        clone = clones.fresh()
        seed = work / "seed.db"  # the cached file stays as it is, whatever import does
        shutil.copyfile(source, seed)
        call([HISTORY, "import", str(seed)], clone)
        clones.done(clone)
    else:
        seed_by_commit(remote, source, work)
    rng = random.Random(writers)
    plans = []
    for writer in range(writers):
        ids = Ids(rng, f"bench/writer-{writer}")
        plans.append([(ids.next(), clones.fresh()) for _ in range(options.records_per_writer)])
    result.expected = [deployment_id for plan in plans for (deployment_id, _), _ in plan]
    lock = threading.Lock()
    start = threading.Barrier(writers + 1)

    def write(plan: list[tuple[tuple[str, str], Path]], branch: str) -> None:
        start.wait()
        for (deployment_id, sha), clone in plan:
            done = call(history(*record_args(deployment_id, branch, sha)), clone, check=False)
            tried = [int(found) for found in ATTEMPT.findall(done.stderr)]
            with lock:
                result.write_seconds.append(done.seconds)
                result.attempts.append(max([done.pushes, *tried]))
                if done.returncode != 0:
                    lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
                    result.failures.append(f"{deployment_id}: {lines[-1]}")

    threads = [
        threading.Thread(target=write, args=(plan, f"bench/writer-{number}"))
        for number, plan in enumerate(plans)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - began
    clone = clones.fresh()
    listed = call(history("list", "--all", "--format", "json"), clone)
    result.found = [str(row["id"]) for row in json.loads(listed.stdout)]
    return result


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def seconds_cell(value: float, base: float) -> str:
    return f"{value:.2f} s ({value / base:.2f}x)"


def mib(size: int) -> str:
    return f"{size / 1024 / 1024:,.1f} MiB" if size >= 1024 * 1024 else f"{size / 1024:,.1f} KiB"


def report(data: dict[str, Any]) -> str:
    sizes = [SizeResult(**each) for each in data["sizes"]]
    measured = [each for each in sizes if not each.skipped]
    base = measured[0] if measured else None
    session = " and session directory" if data["session"] else ""
    compared = f"; (x) = the ratio to {label(base.size)} in this run" if base else ""
    lines = [
        f"History layout: {data['layout']}; session mode: {'yes' if data['session'] else 'no'}.",
        f"Medians of {data['runs']} runs; each call a whole process from a fresh shallow clone;"
        f" each job of a workflow run from its own clone{session}{compared}.",
        "",
    ]
    heads = " | ".join(label(each.size) for each in sizes)
    lines += [f"| per call | {heads} |", "|---|" + "---|" * len(sizes)]
    assert base is not None or not measured

    def row(name: str, values: dict[int, float]) -> str:
        cells = []
        for each in sizes:
            if each.skipped:
                cells.append(each.skipped)
            else:
                cells.append(seconds_cell(values[each.size], values[base.size]))  # type: ignore[union-attr]
        return f"| {name} | " + " | ".join(cells) + " |"

    if base is not None:
        for name in base.calls:
            lines.append(row(name, {each.size: median(each.calls[name]) for each in measured}))
        for name in base.runs:
            calls = sum(
                int(median(counts["calls"]))
                for key, counts in base.jobs.items()
                if key.startswith(name + ":")
            )
            values = {each.size: median(each.runs[name]) for each in measured}
            lines.append(row(f"{name} ({calls} history calls)", values))
        lines += ["", f"| history round trips per job: fetch / ls-remote / push | {heads} |"]
        lines.append("|---|" + "---|" * len(sizes))
        for key, counts in base.jobs.items():
            cells = []
            for each in sizes:
                if each.skipped:
                    cells.append(each.skipped)
                    continue
                got = each.jobs[key]
                cells.append(
                    "{} / {} / {}".format(
                        *(max(got[kind]) for kind in ("fetches", "ls_remotes", "pushes"))
                    )
                )
            calls = int(median(counts["calls"]))
            lines.append(
                f"| {key} ({calls} call{'s' * (calls != 1)}) | " + " | ".join(cells) + " |"
            )
        lines += [
            "",
            "| size | tracker database | seeding | largest stored file | files at the tip"
            " | remote growth per write | changed pages per write | growth / pages |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for each in sizes:
            if each.skipped:
                lines.append(f"| {label(each.size)} | {each.skipped} |" + " |" * 6)
                continue
            growth = each.growth_bytes / max(each.growth_writes, 1)
            pages = each.changed_page_bytes / max(each.growth_writes, 1)
            lines.append(
                f"| {label(each.size)} | {mib(each.source_bytes)} | {each.seed_seconds:.1f} s"
                f" | {mib(each.largest_blob)} (`{each.largest_blob_path}`)"
                f" | {each.tip_files} ({mib(each.tip_bytes)}) | {growth:,.0f} B"
                f" | {pages:,.0f} B | {growth / pages:,.1f}x |"
            )
    contention = [Contention(**each) for each in data["contention"]]
    if contention:
        lines += [
            "",
            "| concurrent writers (1k history) | writes | writes/s | worst write"
            " | attempts: max (mean) | failed | every write landed exactly once |",
            "|---|---|---|---|---|---|---|",
        ]
        for each in contention:
            landed = landing(each)
            writes = each.writers * each.per_writer
            lines.append(
                f"| {each.writers} | {each.writers} x {each.per_writer}"
                f" | {writes / each.seconds:.2f} | {max(each.write_seconds):.1f} s"
                f" | {max(each.attempts)} ({statistics.mean(each.attempts):.1f})"
                f" | {landed.failed} | {landed_text(landed)} |"
            )
    lines += ["", "| target (issue 20) | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {met} |" for name, value, met in targets(data)]
    return "\n".join(lines)


def landed_text(landed: Landing) -> str:
    if landed.ok:
        return "yes"
    parts = [f"{len(landed.missing)} missing", f"{len(landed.duplicated)} duplicated"]
    return f"**no** ({', '.join(parts)}, {landed.failed} failed)"


def targets(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, what was measured, met) for each target of the issue."""
    sizes = [SizeResult(**each) for each in data["sizes"]]
    measured = [each for each in sizes if not each.skipped]
    rows: list[tuple[str, str, str]] = []
    if not measured:
        return rows
    small, large = measured[0], measured[-1]
    at = label(large.size)
    short = "" if large.size >= 1_000_000 else f" ({at}: 1M not measured)"
    for names, limit, kind in ((READS, READ_SECONDS, "read"), (WRITES, WRITE_SECONDS, "write")):
        worst = max(median(large.calls[name]) for name in names)
        rows.append(
            (
                f"{kind} ({', '.join(names)}) <= {limit:g} s per call at 1M",
                f"{worst:.2f} s at {at}",
                verdict(worst <= limit) + short,
            )
        )
    ratios = [median(large.calls[name]) / median(small.calls[name]) for name in READS + WRITES]
    rows.append(
        (
            f"1M / 1k <= {MAX_RATIO:g} (those reads and writes)",
            f"{at} / {label(small.size)}: {min(ratios):.2f}x to {max(ratios):.2f}x",
            verdict(max(ratios) <= MAX_RATIO) + short,
        )
    )
    rows.append(
        (
            "largest stored file < 50 MiB at 1M",
            f"{mib(large.largest_blob)} at {at}",
            verdict(large.largest_blob < MAX_BLOB) + short,
        )
    )
    growths = [(each, each.growth_bytes / max(each.changed_page_bytes, 1)) for each in measured]
    rows.append(
        (
            f"bare-remote growth per write <= {MAX_GROWTH:g}x the changed pages",
            ", ".join(f"{label(each.size)}: {ratio:,.1f}x" for each, ratio in growths),
            verdict(all(ratio <= MAX_GROWTH for _, ratio in growths)),
        )
    )
    contention = {each["writers"]: Contention(**each) for each in data["contention"]}
    most = contention.get(TARGET_WRITERS) or (contention[max(contention)] if contention else None)
    if most is not None:
        landed = landing(most)
        note = "" if most.writers == TARGET_WRITERS else f" ({most.writers} writers measured)"
        rows.append(
            (
                f"{TARGET_WRITERS} concurrent writers: every write lands exactly once, none fails",
                f"{most.writers} writers: {landed_text(landed)}",
                verdict(landed.ok) + note,
            )
        )
    return rows


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1k,100k,1M", help="comma-separated; k and M suffixes")
    parser.add_argument("--writers", default="1,8,16", help="concurrent writers, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each call and run")
    parser.add_argument("--records-per-writer", type=int, default=5)
    parser.add_argument("--growth-writes", type=int, default=6, help="writes measuring growth")
    parser.add_argument(
        "--legacy-limit",
        default="100k",
        help="with today's layout, skip sizes above this ('none': skip nothing)",
    )
    parser.add_argument("--seed", choices=("auto", "import", "commit"), default="auto")
    parser.add_argument("--session", choices=("auto", "on", "off"), default="auto")
    parser.add_argument(
        "--cache-dir", default=str(Path(tempfile.gettempdir()) / "deployment-tracker-bench")
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild cached databases")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--report", help="print the tables of a --json file; measure nothing")
    options = parser.parse_args(argv)
    if options.report:
        print(report(json.loads(Path(options.report).read_text(encoding="utf-8"))))
        return 0
    layout = detect_layout(options.seed, options.session)
    limit = None if options.legacy_limit == "none" else parse_size(options.legacy_limit)
    Path(options.cache_dir).mkdir(parents=True, exist_ok=True)
    sizes = sorted(parse_size(size) for size in options.sizes.split(","))
    data: dict[str, Any] = {
        "layout": layout.name,
        "importer": layout.importer,
        "layout_version": layout.version,
        "session": layout.session,
        "runs": options.runs,
        "sizes": [],
        "contention": [],
    }
    log(f"layout: {layout.name}; session mode: {layout.session}")
    for size in sizes:
        if layout.single_file and limit is not None and size > limit:
            skipped = SizeResult(size, skipped="skipped (today's layout moves the whole file)")
            data["sizes"].append(asdict(skipped))
            continue
        with tempfile.TemporaryDirectory(prefix="history-", dir=options.cache_dir) as work:
            data["sizes"].append(asdict(measure_size(size, options, layout, Path(work))))
    for writers in sorted(int(each) for each in options.writers.split(",") if each):
        log(f"contention: {writers} writers x {options.records_per_writer} records")
        with tempfile.TemporaryDirectory(prefix="contend-", dir=options.cache_dir) as work:
            data["contention"].append(asdict(contend(writers, options, layout, Path(work))))
    data["machine"] = machine()
    if options.json:
        Path(options.json).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(report(data))
    print()
    print(data["machine"])
    return 0


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    version = git("--version").split()[-1]
    return (
        f"Machine: {os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]},"
        f" SQLite {sqlite3.sqlite_version}, git {version}; load average"
        f" {os.getloadavg()[0]:.1f} at the end"
    )


if __name__ == "__main__":
    raise SystemExit(main())
