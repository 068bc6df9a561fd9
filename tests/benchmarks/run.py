"""Benchmark deployment-tracker against the start-up floor; prints a Markdown table.

Not a test (pytest does not collect it). Every measurement is a whole process,
timed several times; the table shows medians and their ratios to the floor
(`python -c "import click, sqlite3"`) measured in the same run, interleaved
with the commands so that machine noise hits both alike.

    .venv/bin/python tests/benchmarks/run.py                          # 1k, 100k, 1M
    .venv/bin/python tests/benchmarks/run.py --sizes 1k,100k --runs 5  # quick

Databases are built once through the tracker's own migrations and cached in
--cache-dir, keyed by size, schema version and generator version.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import deployment_tracker as dt  # noqa: E402

GENERATOR_VERSION = 2
BATCH = 20_000
ENVIRONMENTS = (  # (name, share of deployments)
    ("dev", 0.30),
    ("preview", 0.15),
    ("qa", 0.15),
    ("staging", 0.25),
    ("production", 0.15),
)
QUERY_ENVIRONMENT = "production"
# The columns of m001; later migrations' columns keep their defaults.
COLUMNS = ("seq", *dt.FIELDS[: dt.FIELDS.index("committed_at") + 1])
INSERT_ROW = "INSERT INTO deployments ({}) VALUES ({})".format(
    ", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))
)
INSERT_EVENT_ROW = "INSERT INTO events (deployment_id, status, at, by, note) VALUES (?, ?, ?, ?, ?)"
ISO = "%Y-%m-%dT%H:%M:%SZ"
GNU_TIME = "/usr/bin/time"  # apt-get install time sqlite3
STAMP = "%Y%m%d%H%M%S"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Building databases
# --------------------------------------------------------------------------


def branch_names(count: int, rng: random.Random) -> list[str]:
    words = ("login", "billing", "search", "cache", "api", "ui", "auth", "export", "queue", "docs")
    names = ["main", "release/2026.1", "release/2026.2"]
    for number in range(count):
        kind = rng.choice(("feature", "feature", "fix", "chore", "renovate"))
        names.append(f"{kind}/PROJ-{1000 + number}-{rng.choice(words)}-{rng.choice(words)}")
    return names


def generate(size: int, end: datetime) -> Iterator[tuple[list[list[Any]], list[tuple[Any, ...]]]]:
    """Batches of (deployment rows, event rows), `size` deployments in all, a minute apart.

    Each environment's newest deployment is held back until the next one
    arrives there, because a rollback marks the deployment it replaces as
    rolled_back; rows carry explicit seq values, so the order stays right.
    """
    rng = random.Random(size)
    branches = branch_names(max(10, size // 40), rng)
    safe = {branch: dt.sanitise_branch(branch) for branch in branches}
    actors = [f"user{number}" for number in range(40)]
    names = [name for name, _ in ENVIRONMENTS]
    weights = [share for _, share in ENVIRONMENTS]
    start = (end - timedelta(minutes=size)).replace(tzinfo=None, second=0, microsecond=0)
    minute = timedelta(minutes=1)
    pending: dict[str, tuple[list[Any], list[tuple[Any, ...]]]] = {}
    verified: dict[str, deque[tuple[str, str, str, str]]] = {
        name: deque(maxlen=8) for name in names
    }
    rows: list[list[Any]] = []
    event_rows: list[tuple[Any, ...]] = []
    moment = start
    for seq in range(1, size + 1):
        if seq % BATCH == 1:
            environments = iter(rng.choices(names, weights, k=BATCH))
        environment = next(environments)
        moment += minute
        iso = moment.isoformat()  # strftime would be most of the build time
        at = iso + "Z"
        stamp = iso[0:4] + iso[5:7] + iso[8:10] + iso[11:13] + iso[14:16] + "00"
        actor = actors[int(rng.random() * len(actors))]
        current = pending.get(environment)
        rollback_of = image = None
        if current is not None and rng.random() < 0.03:
            running_image = current[0][5]
            for entry in reversed(verified[environment]):
                if entry[3] != running_image:
                    rollback_of, branch, sha, image = entry
                    break
        if rollback_of is None:
            branch = "main" if rng.random() < 0.45 else branches[int(rng.random() * len(branches))]
            sha = f"{rng.getrandbits(160):040x}"
        deployment_id = f"{safe[branch]}_{sha[:7]}_{stamp}"
        image = image or deployment_id
        run_id = str(1_000_000 + seq)
        committed = (moment - minute * (5 + int(rng.random() * 600))).isoformat() + "Z"
        row: list[Any] = [
            seq,
            deployment_id,
            environment,
            branch,
            sha,
            image,
            "deployed",
            at,
            None,  # verified_at
            None,  # verified_by
            actor,
            run_id,
            f"https://github.com/acme/shop/actions/runs/{run_id}",
            rollback_of,
            None,  # note
            committed,
        ]
        row_events: list[tuple[Any, ...]] = [(deployment_id, "deployed", at, actor, None)]
        outcome = rng.random()
        if outcome < 0.03:
            row[6] = "failed"
            row_events[0] = (deployment_id, "failed", at, actor, "deploy job failed")
        elif outcome < 0.95:
            status = "verified" if outcome < 0.89 else "failed"
            checked = iso[:17] + "30Z"
            row[6], row[8], row[9] = status, checked, "smoke-test"
            row_events.append((deployment_id, status, checked, "smoke-test", "GET /health"))
            if status == "verified":
                verified[environment].append((deployment_id, branch, sha, image))
        if current is not None:
            if rollback_of is not None and current[0][6] in ("deployed", "verified"):
                current[0][6] = "rolled_back"
                note = f"replaced by rollback {deployment_id} to {rollback_of}"
                current[1].append((current[0][1], "rolled_back", at, actor, note))
            rows.append(current[0])
            event_rows.extend(current[1])
        pending[environment] = (row, row_events)
        if len(rows) >= BATCH:
            yield rows, event_rows
            rows, event_rows = [], []
    for row, row_events in pending.values():
        rows.append(row)
        event_rows.extend(row_events)
    yield rows, event_rows


def build(path: Path, size: int) -> None:
    building = path.with_suffix(".building")
    for leftover in building.parent.glob(building.name + "*"):
        leftover.unlink()
    started = time.perf_counter()
    db = dt.connect(str(building), write=True)
    db.execute("PRAGMA cache_size = -262144")  # 256 MiB: the indexes fit while building

    def insert_all() -> None:
        # Indexes built once over all rows are much faster than kept up row by
        # row; they are recreated by the migrations' own statements.
        indexes = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        ).fetchall()
        for name, _ in indexes:
            db.execute(f'DROP INDEX "{name}"')
        for rows, event_rows in generate(size, datetime.now(timezone.utc) - timedelta(hours=1)):
            db.executemany(INSERT_ROW, rows)
            db.executemany(INSERT_EVENT_ROW, event_rows)
        for _, sql in indexes:
            db.execute(sql)

    with dt.transaction(db):
        insert_all()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    building.rename(path)
    log(f"built {path.name} in {time.perf_counter() - started:.1f} s")


def cached_database(cache: Path, size: int, rebuild: bool) -> Path:
    path = cache / f"deployments-{size}-schema{len(dt.MIGRATIONS)}-gen{GENERATOR_VERSION}.db"
    if rebuild or not path.exists():
        build(path, size)
    return path


# --------------------------------------------------------------------------
# Running processes
# --------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # user + system

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_seconds) * 1000


@dataclass
class Case:
    name: str
    output: str  # "machine", "table", "start-up", "write", "floor" or "sqlite3"
    argv: Callable[[int], list[str]]  # run number -> command line
    env: Optional[dict[str, str]] = None
    sample: Sample = field(default_factory=Sample)


def run_once(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time, and CPU time (which a busy shared machine disturbs less)."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"failed ({child.returncode}): {' '.join(argv)}")
    return elapsed, usage.ru_utime + usage.ru_stime


def peak_rss_mib(argv: Sequence[str], env: dict[str, str], runs: int) -> float:
    """Largest max RSS over `runs` runs, from GNU time (whose own few pages are counted too).

    The benchmark's own rusage is no use here: Linux charges a child the
    parent's resident memory at fork, and this process holds megabytes.
    """
    peaks = []
    with tempfile.NamedTemporaryFile("r") as report:
        for _ in range(runs):
            command = [GNU_TIME, "-f", "%M", "-o", report.name, *argv]
            subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)
            report.seek(0)
            peaks.append(int(report.read().split()[-1]))
    return max(peaks) / 1024


def check_output(argv: Sequence[str], env: dict[str, str], *, silent: bool) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0 or (not silent and not result.stdout.strip()):
        raise SystemExit(f"{' '.join(argv)} -> {result.returncode}:\n{result.stderr}")


def measure(cases: Sequence[Case], runs: int, env: dict[str, str], seed: int) -> None:
    """Warm up and check each case, then time them round-robin in shuffled order."""
    for case in cases:
        check_output(case.argv(-1), {**env, **(case.env or {})}, silent=case.output == "floor")
    order = list(cases)
    rng = random.Random(seed)
    for number in range(runs):
        rng.shuffle(order)
        for case in order:
            wall, cpu = run_once(case.argv(number), {**env, **(case.env or {})})
            case.sample.seconds.append(wall)
            case.sample.cpu_seconds.append(cpu)


@dataclass
class Launcher:
    """How a process starts: the floor, the floor with tabulate, and the tool."""

    python: str
    console_script: bool
    site_packages: str

    def python_argv(self) -> list[str]:
        # -S (with the paths given in PYTHONPATH) leaves out the .pth hooks of
        # this editable install, which no real install has and which would
        # hide the tool's own cost inside a bigger floor.
        return [self.python] if self.console_script else [self.python, "-S"]

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONDONTWRITEBYTECODE", "GITHUB_OUTPUT", dt.DB_ENV_VAR)
        }
        env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "deployment-tracker-pyc")
        if not self.console_script:
            env["PYTHONPATH"] = os.pathsep.join((str(REPO), self.site_packages))
        return env

    def floor(self, *modules: str) -> list[str]:
        return [*self.python_argv(), "-c", "import " + ", ".join(("click", "sqlite3", *modules))]

    def script(self, *args: str) -> list[str]:
        """`python deployment_tracker.py ...`, as the original design runs it: the
        file is compiled on every call (a script's bytecode is never cached)."""
        return [*self.python_argv(), str(REPO / "deployment_tracker.py"), *args]

    def tool(self, *args: str) -> list[str]:
        if self.console_script:
            return [str(Path(self.python).parent / "deployment-tracker"), *args]
        main = "import sys; from deployment_tracker import main; sys.exit(main())"
        return [*self.python_argv(), "-c", main, *args]


# --------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------


@dataclass
class Subjects:
    """Ids the reading commands ask about, taken from the database."""

    get_id: str
    rollback_id: str


def subjects(path: Path, size: int) -> Subjects:
    db = dt.connect(str(path), write=False)
    try:
        middle = db.execute("SELECT id FROM deployments WHERE seq = ?", (size // 2,)).fetchone()[0]
        target = dt.rollback_target(db, QUERY_ENVIRONMENT)[0]["id"]
    finally:
        db.close()
    return Subjects(get_id=middle, rollback_id=target)


def quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def reading_cases(launcher: Launcher, db: Path, ids: Subjects, github_output: Path) -> list[Case]:
    environment = ("--environment", QUERY_ENVIRONMENT)  # as the README's examples
    commands: dict[str, tuple[str, ...]] = {
        "latest": ("latest", *environment),
        "rollback-target": ("rollback-target", *environment),
        "rollback-target --id": ("rollback-target", *environment, "--id", ids.rollback_id),
        "get": ("get", "--id", ids.get_id),
        "list": ("list",),
    }
    outputs: dict[str, tuple[str, tuple[str, ...]]] = {
        "--format json": ("machine", ("--format", "json")),
        "--field": ("machine", ("--field", "image_tag")),
        # Also prints the default table, which needs no tabulate: judged as machine output.
        "--github-output": ("machine", ("--github-output",)),
        "table": ("table", ()),
    }
    cases = []
    for name, command in commands.items():
        for label, (kind, flags) in outputs.items():
            if name == "list" and label == "--github-output":
                continue  # list has no --github-output
            argv = launcher.tool("--db", str(db), *command, *flags)
            env = {"GITHUB_OUTPUT": str(github_output)} if label == "--github-output" else None
            cases.append(Case(f"`{name}` {label}", kind, lambda _, argv=argv: argv, env))
    # click tries a short option as a long one first, and its "no such option"
    # error imports difflib to suggest names: a few ms that --environment avoids.
    short = launcher.tool("--db", str(db), "latest", "-e", QUERY_ENVIRONMENT, "--format", "json")
    cases.append(Case("`latest -e` --format json", "machine", lambda _: short))
    script = launcher.script("--db", str(db), *commands["latest"], "--format", "json")
    cases.append(Case("`python deployment_tracker.py latest` --format json", "script",
                      lambda _: script))  # fmt: skip
    # What the shell runs on TAB after `deployment-tracker get `: ids from the database.
    words = f"deployment-tracker --db {db} get "
    completion = {
        "_DEPLOYMENT_TRACKER_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split())),
    }
    cases.append(
        Case("completion of `get ID`", "machine", lambda _: launcher.tool(), env=completion)
    )
    sql = f"SELECT {', '.join(dt.FIELDS)} FROM deployments"  # what the tracker selects
    in_environment = f"{sql} WHERE environment = {quoted(QUERY_ENVIRONMENT)}"
    newest = "ORDER BY seq DESC LIMIT"
    running_image = in_environment.replace(sql, "SELECT image_tag FROM deployments")
    get_id = quoted(ids.get_id)
    queries = {  # the SQL behind each command, values inlined
        "latest": f"{in_environment} AND status = 'verified' {newest} 1",
        "rollback-target": f"{in_environment} AND status = 'verified'"
        f" AND image_tag != ({running_image} {newest} 1) {newest} 1",
        "get": f"{sql} WHERE id = {get_id}; SELECT at, status, by, note FROM events"
        f" WHERE deployment_id = {get_id} ORDER BY seq",
        "list": f"{sql} {newest} {dt.DEFAULT_LIST_LIMIT}",
    }
    for name, query in queries.items() if shutil.which("sqlite3") else ():
        argv = ["sqlite3", "-readonly", "-json", str(db), query]
        cases.append(Case(f"sqlite3 shell: {name}", "sqlite3", lambda _, argv=argv: argv))
    return cases


def write_cases(launcher: Launcher, db: Path) -> list[Case]:
    """`record` a new deployment each run; `verify` the one recorded the run before."""
    sha = "c0ffee0" + "0" * 33
    base = datetime.now(timezone.utc) - timedelta(days=1)

    def recorded_id(number: int) -> str:
        moment = base + timedelta(seconds=number)
        return f"bench-record_{sha[:7]}_{moment.strftime(STAMP)}"

    def record(number: int) -> list[str]:
        return launcher.tool(
            "--db", str(db), "record", "-e", "staging", "-b", "bench/record", "-c", sha,
            "--id", recorded_id(number), "--actor", "bench",
        )  # fmt: skip

    def verify(number: int) -> list[str]:
        return launcher.tool(
            "--db", str(db), "verify", "--id", recorded_id(number - 1), "--status", "verified",
        )  # fmt: skip

    connection = dt.connect(str(db), write=True)
    try:  # what the first (checking) run of verify needs
        request = dt.RecordRequest(
            environment="staging",
            branch="bench/record",
            commit_sha=sha,
            deployment_id=recorded_id(-2),
        ).checked()
        dt.record_deployment(connection, request, gates={})
    finally:
        connection.close()
    return [Case("`record`", "write", record), Case("`verify`", "write", verify)]


def write_rate(path: Path, seconds: float) -> tuple[float, str]:
    """Deployments per second through the data layer, one transaction each, as `record`."""
    db = dt.connect(str(path), write=True)
    settings = "journal_mode={}, synchronous={}".format(
        db.execute("PRAGMA journal_mode").fetchone()[0],
        {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
            db.execute("PRAGMA synchronous").fetchone()[0]
        ],
    )
    count = 0
    started = time.perf_counter()
    moment = datetime.now(timezone.utc) - timedelta(days=1)
    while (elapsed := time.perf_counter() - started) < seconds:
        sha = f"{count:07x}" + "f" * 33
        request = dt.RecordRequest(
            environment="staging", branch="bench/write-rate", commit_sha=sha, actor="bench"
        ).checked()
        dt.record_deployment(db, request, gates={}, now=moment)
        count += 1
    db.close()
    return count / elapsed, settings


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def label(size: int) -> str:
    for unit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if size >= unit and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    factor = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(text.rstrip("km")) * factor


TARGETS = {  # kind: (at most this many times the base, what the base is)
    "machine": (1.3, "floor"),
    "table": (1.3, "floor + tabulate"),
    "start-up": (1.2, "floor"),
}
# The script path pays for compiling the whole file each time; reported, not judged.
UNJUDGED = ("script",)
MAX_GROWTH = 1.10  # machine output on the largest size vs the smallest
MAX_MEMORY_RATIO = 1.5


@dataclass
class Results:
    sizes: list[int]
    runs: int
    per_size: dict[int, dict[str, Case]] = field(default_factory=dict)
    memory: dict[int, tuple[float, float]] = field(default_factory=dict)
    bytes_per_deployment: dict[int, float] = field(default_factory=dict)
    write_rates: dict[int, tuple[float, str]] = field(default_factory=dict)


def verdict(met: bool) -> str:
    return "yes" if met else "**no**"


def report(results: Results) -> str:
    sizes = results.sizes
    smallest, largest = results.per_size[sizes[0]], results.per_size[sizes[-1]]
    heads = " | ".join(f"{label(size)}: ms (x base)" for size in sizes)
    growth = f"{label(sizes[-1])} / {label(sizes[0])} (of the x base)"
    cpu = f"{label(sizes[-1])}: CPU ms (x base)"
    lines = [
        f"| command | output | base | {heads} | {growth} | {cpu} | target ({label(sizes[-1])})"
        " | met |",
        "|" + "---|" * (7 + len(sizes)),
    ]
    for name, case in largest.items():
        kind = case.output
        base = "floor + tabulate" if kind == "table" else "floor"
        cells = []
        for size in sizes:
            row = results.per_size[size].get(name)
            if row is None:
                cells.append("")
            elif kind == "floor":
                cells.append(f"{row.sample.median_ms:.1f}")
            else:
                ratio = row.sample.median_ms / results.per_size[size][base].sample.median_ms
                cells.append(f"{row.sample.median_ms:.1f} ({ratio:.2f}x)")
        growth = target = met = ""
        grown = 1.0
        if name in smallest and len(sizes) > 1 and kind not in ("floor", "start-up"):
            raw = case.sample.median_ms / smallest[name].sample.median_ms
            # Judged relative to each size's own floor: the sizes are timed minutes
            # apart, and a shared machine's speed drifts in between.
            grown = raw * smallest[base].sample.median_ms / largest[base].sample.median_ms
            growth = f"{raw:.2f}x ({grown:.2f}x)"
        if kind in TARGETS:
            limit, _ = TARGETS[kind]
            target = f"<= {limit}x {base}"
            ok = case.sample.median_ms / largest[base].sample.median_ms <= limit
            if kind == "machine" and len(sizes) > 1:
                target += f", <= {MAX_GROWTH}x {label(sizes[0])}"
                ok = ok and grown <= MAX_GROWTH
            met = verdict(ok)
        shown = "" if kind == "floor" else base
        cpu = f"{case.sample.median_cpu_ms:.1f}"
        if kind != "floor":
            cpu += f" ({case.sample.median_cpu_ms / largest[base].sample.median_cpu_ms:.2f}x)"
        lines.append(
            f"| {name} | {kind} | {shown} | {' | '.join(cells)} | {growth} | {cpu} | {target}"
            f" | {met} |"
        )
    lines += [
        "",
        f"Medians of {results.runs} runs of whole processes; targets are judged on wall time;"
        " base = the floor measured in the same run, interleaved with the commands.",
        "",
        "| size | DB bytes per deployment | write rate (data layer, 1 transaction each) | settings"
        " | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        rate, settings = results.write_rates[size]
        lines.append(
            f"| {label(size)} | {results.bytes_per_deployment[size]:.0f} | {rate:,.0f}/s"
            f" | {settings} | >= 1,000/s | {verdict(rate >= 1000)} |"
        )
    lines += [
        "",
        "| size | peak RSS `list --format json` | peak RSS `list --all --format json` | ratio"
        " | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for size, (limited, unlimited) in results.memory.items():
        ratio = unlimited / limited
        lines.append(
            f"| {label(size)} | {limited:.1f} MiB | {unlimited:.1f} MiB | {ratio:.2f}x"
            f" | <= {MAX_MEMORY_RATIO}x | {verdict(ratio <= MAX_MEMORY_RATIO)} |"
        )
    return "\n".join(lines)


def compile_share(results: Results, runs: int) -> str:
    """How much of a `python deployment_tracker.py` run is compiling the file."""
    source = (REPO / "deployment_tracker.py").read_text(encoding="utf-8")
    lines = source.count("\n")
    timings = []
    for _ in range(max(runs, 5)):
        started = time.perf_counter()
        compile(source, "deployment_tracker.py", "exec")
        timings.append(time.perf_counter() - started)
    compile_ms = statistics.median(timings) * 1000
    largest = results.per_size[results.sizes[-1]]
    script = largest["`python deployment_tracker.py latest` --format json"].sample.median_ms
    installed = largest["`latest` --format json"].sample.median_ms
    floor = largest["floor"].sample.median_ms
    return (
        f"`python deployment_tracker.py latest --format json` ({label(results.sizes[-1])}):"
        f" {script / floor:.2f}x the floor, against {installed / floor:.2f}x for the installed"
        f" command (cached bytecode). Compiling the file ({lines:,} lines) takes"
        f" {compile_ms:.1f} ms ({compile_ms / lines * 1000:.1f} ms per 1,000 lines):"
        f" {compile_ms / script:.0%} of the script run, {compile_ms / floor:.2f}x of the floor."
    )


def startup_cases(launcher: Launcher) -> list[Case]:
    new_id = ("new-id", "--branch", "feature/login", "--commit", "3f2c9e1d")
    return [
        Case("`--help`", "start-up", lambda _: launcher.tool("--help")),
        Case(
            "`python deployment_tracker.py --help`", "script", lambda _: launcher.script("--help")
        ),
        Case("`new-id`", "start-up", lambda _: launcher.tool(*new_id)),
        Case(
            "`new-id` --format json",
            "start-up",
            lambda _: launcher.tool(*new_id, "--format", "json"),
        ),
    ]


def benchmark_size(
    launcher: Launcher, options: argparse.Namespace, size: int, results: Results, work: Path
) -> None:
    source = cached_database(Path(options.cache_dir), size, options.rebuild)
    results.bytes_per_deployment[size] = source.stat().st_size / size
    db = work / f"{size}.db"
    shutil.copyfile(source, db)  # record and verify write to a copy
    env = launcher.env()
    cases = [
        Case("floor", "floor", lambda _: launcher.floor()),
        Case("floor + tabulate", "floor", lambda _: launcher.floor("tabulate")),
        *reading_cases(launcher, db, subjects(db, size), work / "github_output"),
        *write_cases(launcher, db),
    ]
    if size == results.sizes[-1]:
        cases += startup_cases(launcher)
    log(f"{label(size)}: timing {len(cases)} commands x {options.runs} runs")
    measure(cases, options.runs, env, seed=size)
    results.per_size[size] = {case.name: case for case in cases}
    if os.access(GNU_TIME, os.X_OK):
        list_json = launcher.tool("--db", str(db), "list", "--format", "json")
        results.memory[size] = (
            peak_rss_mib(list_json, env, runs=3),
            peak_rss_mib([*list_json, "--all"], env, runs=3),
        )
    log(f"{label(size)}: write rate")
    results.write_rates[size] = write_rate(db, options.write_seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1k,100k,1M", help="comma-separated; k and M suffixes")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command")
    parser.add_argument(
        "--cache-dir", default=str(Path(tempfile.gettempdir()) / "deployment-tracker-bench")
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild cached databases")
    parser.add_argument(
        "--write-seconds", type=float, default=3.0, help="time spent measuring the write rate"
    )
    parser.add_argument(
        "--console-script",
        action="store_true",
        help="time .venv/bin/deployment-tracker (site and .pth hooks included) over python -S",
    )
    options = parser.parse_args()
    results = Results(sorted(parse_size(size) for size in options.sizes.split(",")), options.runs)
    Path(options.cache_dir).mkdir(parents=True, exist_ok=True)
    site_packages = next(path for path in sys.path if path.endswith("site-packages"))
    launcher = Launcher(sys.executable, options.console_script, site_packages)
    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="run-", dir=options.cache_dir))
    try:
        for size in results.sizes:
            benchmark_size(launcher, options, size, results, work)
            for leftover in work.glob(f"{size}.db*"):
                leftover.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report(results))
    print()
    print(compile_share(results, options.runs))
    print()
    print(machine(launcher, load_at_start))


def machine(launcher: Launcher, load_at_start: float) -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    shell = "none"
    if shutil.which("sqlite3"):
        version = subprocess.run(
            ["sqlite3", "--version"], capture_output=True, text=True, check=True
        )
        shell = version.stdout.split()[0]
    launch = "console script" if launcher.console_script else "python -S, PYTHONPATH"
    return (
        f"Machine: {os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]},"
        f" SQLite {sqlite3.sqlite_version} (module) / {shell} (shell); launched as: {launch};"
        f" load average {load_at_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )


if __name__ == "__main__":
    main()
