"""Crashes, broken files and hostile file systems: one line, right exit code, no damage."""

from __future__ import annotations

import errno
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest
from helpers import (
    WORKER,
    assert_one_line_error,
    check_history_consistent,
    checkpoint,
    crash_request,
    crash_rollback_request,
    dump,
    file_hash,
    integrity,
    run_tracker,
    scratch_dir,
    snapshot,
)

import deployment_tracker as dt

KILLS = 60
SIDECARS = ("-wal", "-shm")
CLI_RETRIES = 8
SHA = "0123456789abcdef0123456789abcdef01234567"
KNOWN_ID = "main_0123456_20240101000000"
RECORD = ("record", "-e", "staging", "-b", "main", "-c", SHA)
NEW_RECORD = ("record", "-e", "staging", "-b", "next", "-c", SHA)
READ_COMMANDS: dict[str, tuple[str, ...]] = {
    "list": ("list",),
    "latest": ("latest", "-e", "staging"),
    "get": ("get", KNOWN_ID),
    "rollback-target": ("rollback-target", "-e", "staging"),
}
WRITE_COMMANDS: dict[str, tuple[str, ...]] = {
    "record": NEW_RECORD,
    "verify": ("verify", KNOWN_ID, "--status", "verified"),
}


# --------------------------------------------------------------------------
# SIGKILL in the middle of writes
# --------------------------------------------------------------------------


@dataclass
class CrashLog:
    reported: set[str] = field(default_factory=set)
    verified: set[str] = field(default_factory=set)
    in_flight: list[str] = field(default_factory=list)
    committed_unreported: int = 0
    cli_retries: int = 0


def run_until_killed(db_path: Path, start: int, rng: random.Random) -> list[str]:
    """Start a crash worker, let it commit a few steps, SIGKILL it; its output."""
    worker = subprocess.Popen(
        [sys.executable, WORKER, "crash", str(db_path), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    lines = []
    ready = worker.stdout.readline()
    assert ready == "ready\n", worker.communicate()[1]
    for _ in range(rng.randint(0, 4)):
        lines.append(worker.stdout.readline().strip())
    # A random pause so the kill lands anywhere: in SQL, in fsync, in print.
    time.sleep(rng.random() * 0.004)
    worker.kill()
    # Read the rest through the same buffered reader: readline() may hold lines it read
    # ahead, which communicate() (reading the pipe itself) would never see.
    assert worker.stderr is not None
    out, err = worker.stdout.read(), worker.stderr.read()
    worker.wait(timeout=60)
    assert worker.returncode == -9, err
    assert "Traceback" not in err, err
    lines.extend(line for line in out.splitlines() if line)
    return lines


def retry_after_crash(db_path: Path, begin: str, log: CrashLog) -> None:
    """Redo the step the killed worker had begun: identical is safe, different fails."""
    kind, number_text, *rest = begin.split()[1:]
    number = int(number_text)
    gates = dt.parse_gates(None)
    db = dt.connect(str(db_path), write=True)
    try:
        if kind == "record":
            request = crash_request(number)
            if log.cli_retries < CLI_RETRIES:
                log.cli_retries += 1
                retry_record_with_cli(db_path, request, log)
            else:
                _, created, _ = dt.record_deployment(db, request, gates=gates)
                log.committed_unreported += not created
                with pytest.raises(dt.Refused, match="already recorded with a different note"):
                    different = request._replace(note="something else")
                    dt.record_deployment(db, different, gates=gates)
            log.reported.add(str(request.deployment_id))
        elif kind == "verify":
            deployment_id = str(crash_request(number).deployment_id)
            _, changed = dt.verify_deployment(db, deployment_id, "verified", by="crash-bot")
            log.committed_unreported += not changed
            log.verified.add(deployment_id)
        else:
            target = dt.get_deployment(db, rest[0])
            again = crash_rollback_request(number, target)
            _, created, _ = dt.record_deployment(db, again, gates=gates)
            log.committed_unreported += not created
            with pytest.raises(dt.Refused, match="different actor"):
                someone_else = again._replace(actor="someone-else")
                dt.record_deployment(db, someone_else, gates=gates)
            log.reported.add(str(again.deployment_id))
    finally:
        db.close()


def retry_record_with_cli(db_path: Path, request: dt.RecordRequest, log: CrashLog) -> None:
    options = {
        "environment": "-e",
        "branch": "-b",
        "commit_sha": "-c",
        "deployment_id": "--id",
        "actor": "--actor",
        "run_id": "--run-id",
        "note": "--note",
    }
    args = [part for name, flag in options.items() for part in (flag, getattr(request, name))]
    same = run_tracker("record", *args, db=db_path)
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip() == request.deployment_id
    if same.stderr:
        assert same.stderr == f"already recorded: {request.deployment_id}\n"
        log.committed_unreported += 1
    different = run_tracker("record", *args, "--run-id", "999999", db=db_path)
    assert different.returncode == 1
    assert_one_line_error(different.stderr, "already recorded with a different run_id")


def test_sigkill_during_writes_loses_and_half_writes_nothing(tmp_path: Path) -> None:
    db_path = tmp_path / "crash.db"
    dt.connect(str(db_path), write=True).close()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log = CrashLog()
    start = 0
    for _ in range(KILLS):
        lines = run_until_killed(db_path, start, rng)
        begins = [line for line in lines if line.startswith("begin ")]
        for line in lines:
            kind, _, value = line.partition(" ")
            if kind == "recorded":
                log.reported.add(value)
            elif kind == "verified":
                log.verified.add(value)
        if lines and lines[-1].startswith("begin "):
            log.in_flight.append(lines[-1])
            retry_after_crash(db_path, lines[-1], log)
        if begins:
            start = int(begins[-1].split()[2]) + 1

    assert integrity(db_path) == "ok", seed
    counts = check_history_consistent(db_path)
    db = sqlite3.connect(db_path)
    stored = dict(db.execute("SELECT id, status FROM deployments").fetchall())
    db.close()
    assert log.reported <= set(stored), (seed, log.reported - set(stored))
    for deployment_id in log.verified:
        assert stored[deployment_id] in ("verified", "rolled_back"), (seed, deployment_id)
    assert len(log.in_flight) > 0, seed
    assert counts["deployments"] >= KILLS // 2
    assert counts["rollbacks"] > 0
    print(
        f"\ncrash test (seed {seed}): {KILLS} kills, {len(log.in_flight)} mid-step,"
        f" {log.committed_unreported} committed but unreported, {counts}"
    )


# --------------------------------------------------------------------------
# Broken or foreign database files
# --------------------------------------------------------------------------


def make_database(path: Path, records: int = 40) -> str:
    """A checkpointed database with KNOWN_ID and some filler; the newest id."""
    db = dt.connect(str(path), write=True)
    gates = dt.parse_gates(None)
    known = dt.RecordRequest(
        environment="staging", branch="main", commit_sha=SHA, deployment_id=KNOWN_ID
    ).checked()
    record, _, _ = dt.record_deployment(db, known, gates=gates)
    for number in range(records):
        filler = dt.RecordRequest(
            environment="staging", branch=f"filler/{number}", commit_sha=SHA, note="filler " * 50
        ).checked()
        record, _, _ = dt.record_deployment(db, filler, gates=gates)
    db.close()
    checkpoint(path)
    return str(record["id"])


def bad_file_cases() -> Iterator[tuple[str, Callable[[Path, Path], None], str]]:
    """(name, how to break the path given a good database, expected message)."""

    def missing(path: Path, good: Path) -> None:
        pass

    def directory(path: Path, good: Path) -> None:
        path.mkdir()
        (path / "inside").write_text("keep me")

    def random_bytes(path: Path, good: Path) -> None:
        path.write_bytes(random.Random(1).randbytes(8192))

    def text(path: Path, good: Path) -> None:
        path.write_text("deployments:\n  - main\n" * 100)

    def cut(size: Callable[[int], int]) -> Callable[[Path, Path], None]:
        def truncate(path: Path, good: Path) -> None:
            data = good.read_bytes()
            path.write_bytes(data[: size(len(data))])

        return truncate

    def newer(path: Path, good: Path) -> None:
        shutil.copy(good, path)
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {len(dt.MIGRATIONS) + 1}")
        db.close()

    def foreign(path: Path, good: Path) -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)")
        db.execute("INSERT INTO accounts VALUES (1, 100)")
        db.close()

    def extra(sql: str) -> Callable[[Path, Path], None]:
        def add(path: Path, good: Path) -> None:
            shutil.copy(good, path)
            db = sqlite3.connect(path, isolation_level=None)
            db.execute(sql)
            db.close()

        return add

    yield "missing", missing, "no database at"
    yield "directory", directory, "is a directory"
    yield "random bytes", random_bytes, "not a readable deployment database"
    yield "text file", text, "not a readable deployment database"
    yield "truncated to half", cut(lambda size: size // 2), "not a readable deployment database"
    yield "truncated to 100 bytes", cut(lambda size: 100), "not a readable deployment database"
    yield "last page cut off", cut(lambda size: size - 4096), "malformed"
    yield "newer schema", newer, "newer than this tool knows"
    yield "another program's database", foreign, "not a deployment database"
    # Ours by its id and version, but crafted: its schema is not exactly ours.
    not_exactly = "does not have exactly the schema of version"
    yield "an extra table", extra("CREATE TABLE notes (x)"), not_exactly
    yield "an extra view", extra("CREATE VIEW everything AS SELECT * FROM deployments"), not_exactly
    yield (
        "an extra trigger",
        extra(
            "CREATE TRIGGER spy AFTER INSERT ON deployments"
            " BEGIN UPDATE deployments SET note = 'x'; END"
        ),
        not_exactly,
    )
    yield "a dropped index", extra("DROP INDEX deployments_by_branch"), not_exactly


BAD_FILES = list(bad_file_cases())


@pytest.mark.parametrize(
    ("command", "case"),
    [
        (command, case)
        for case in BAD_FILES
        for command in [*READ_COMMANDS, *WRITE_COMMANDS]
        if not (case[0] == "missing" and command in WRITE_COMMANDS)
    ],
    ids=lambda value: value if isinstance(value, str) else value[0].replace(" ", "-"),
)
def test_broken_database_gives_one_line_and_changes_nothing(
    tmp_path: Path, command: str, case: tuple[str, Callable[[Path, Path], None], str]
) -> None:
    _, breaking, message = case
    good = tmp_path / "good" / "good.db"
    good.parent.mkdir()
    make_database(good)
    folder = tmp_path / "work"
    folder.mkdir()
    path = folder / "deployments.db"
    breaking(path, good)
    before = snapshot(folder)

    args = {**READ_COMMANDS, **WRITE_COMMANDS}[command]
    result = run_tracker(*args, db=path)

    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, message)
    assert result.stdout == ""
    after = snapshot(folder)

    # SQLite may leave empty WAL side files next to a database it opened; the
    # database itself and everything else in the folder must be untouched.
    def main_files(files: dict[str, str]) -> dict[str, str]:
        return {name: digest for name, digest in files.items() if not name.endswith(SIDECARS)}

    assert main_files(before) == main_files(after)
    assert main_files(before) == before


def test_missing_database_for_a_write_is_created(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "deployments.db"
    result = run_tracker(*RECORD, db=path)
    assert result.returncode == 0, result.stderr
    assert integrity(path) == "ok"


# --------------------------------------------------------------------------
# Permissions, as a process without root's privileges (capabilities)
# --------------------------------------------------------------------------

READS = (
    ("list",),
    ("latest", "-e", "staging", "--status", "any", "--field", "id"),
    ("get", KNOWN_ID, "-o", "json"),
)


def assert_reads_work(path: Path, newest: str) -> None:
    for args in READS:
        result = run_tracker(*args, db=path, unprivileged=True)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr == ""
    assert run_tracker(*READS[1], db=path, unprivileged=True).stdout.strip() == newest


@pytest.fixture
def private_folder() -> Iterator[Path]:
    with scratch_dir() as folder:
        yield folder


def test_read_only_database_refuses_writes_and_still_reads(private_folder: Path) -> None:
    path = private_folder / "deployments.db"
    newest = make_database(path, records=3)
    path.chmod(0o444)
    digest = file_hash(path)

    result = run_tracker(*NEW_RECORD, db=path, unprivileged=True)

    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "readonly")
    assert file_hash(path) == digest
    assert_reads_work(path, newest)
    assert file_hash(path) == digest


def test_read_only_folder_refuses_writes_and_still_reads(private_folder: Path) -> None:
    path = private_folder / "deployments.db"
    newest = make_database(path, records=3)
    path.chmod(0o444)
    private_folder.chmod(0o555)
    digest = file_hash(path)

    for args in (NEW_RECORD, WRITE_COMMANDS["verify"]):
        result = run_tracker(*args, db=path, unprivileged=True)
        assert result.returncode == 1, result.stderr
        assert_one_line_error(result.stderr, "readonly")
    assert_reads_work(path, newest)
    assert file_hash(path) == digest
    assert sorted(os.listdir(private_folder)) == ["deployments.db"]


def test_writable_database_in_read_only_folder_refuses_writes(private_folder: Path) -> None:
    path = private_folder / "deployments.db"
    newest = make_database(path, records=3)
    private_folder.chmod(0o555)
    digest = file_hash(path)

    result = run_tracker(*NEW_RECORD, db=path, unprivileged=True)

    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "cannot use database", "readonly")
    assert file_hash(path) == digest
    assert_reads_work(path, newest)


def test_unflushed_wal_in_read_only_folder_is_never_read_stale(private_folder: Path) -> None:
    """A writer died before checkpointing: its commits live only in the -wal file."""
    path = private_folder / "deployments.db"
    make_database(path, records=3)
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    db = dt.connect(str(path), write=True)
    db.execute("PRAGMA wal_autocheckpoint = 0")
    late = dt.RecordRequest(environment="staging", branch="late", commit_sha=SHA).checked()
    newest, _, _ = dt.record_deployment(db, late, gates=dt.parse_gates(None))
    crashed = private_folder / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{path}{suffix}", f"{crashed / 'deployments.db'}{suffix}")
    db.close()
    writer.close()
    copy = crashed / "deployments.db"
    assert Path(f"{copy}-wal").stat().st_size > 0
    crashed.chmod(0o555)

    result = run_tracker(*READS[1], db=copy, unprivileged=True)

    if result.returncode == 0:
        assert result.stdout.strip() == newest["id"]
    else:
        assert result.returncode == 1
        assert_one_line_error(result.stderr, "-wal")


def test_new_database_in_unwritable_folder(private_folder: Path) -> None:
    private_folder.chmod(0o555)
    for path in (private_folder / "deployments.db", private_folder / "sub" / "deployments.db"):
        result = run_tracker(*RECORD, db=path, unprivileged=True)
        assert result.returncode == 1, result.stderr
        assert_one_line_error(result.stderr, "cannot open database")
    assert os.listdir(private_folder) == []


# --------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------


def file_size_limit(limit: int) -> Callable[[], None]:
    """Make every write past `limit` bytes fail with EFBIG, like a full disk."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("limit", [0, 32 * 1024, 40 * 1024])
def test_write_that_runs_out_of_space_changes_nothing(tmp_path: Path, limit: int) -> None:
    path = tmp_path / "deployments.db"
    make_database(path, records=3)
    before = dump(path)
    digest = file_hash(path)

    result = run_tracker(
        *NEW_RECORD, "--note", "x" * 3000, db=path, preexec_fn=file_size_limit(limit)
    )

    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "disk I/O error")
    assert file_hash(path) == digest
    assert dump(path) == before
    assert integrity(path) == "ok"
    assert run_tracker(*NEW_RECORD, db=path).returncode == 0


def test_new_database_on_a_full_disk_fails_cleanly_and_later_works(tmp_path: Path) -> None:
    path = tmp_path / "deployments.db"
    result = run_tracker(*RECORD, db=path, preexec_fn=file_size_limit(0))
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "disk I/O error")
    again = run_tracker(*RECORD, db=path)
    assert again.returncode == 0, again.stderr
    assert integrity(path) == "ok"


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, when this process may mount one (root on Linux)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while out.write(b"\0" * 4096):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_full_filesystem(tiny_filesystem: Path) -> None:
    path = tiny_filesystem / "deployments.db"
    make_database(path, records=3)
    before = dump(path)
    digest = file_hash(path)
    filler: Optional[Path] = fill(tiny_filesystem)

    result = run_tracker(*NEW_RECORD, "--note", "x" * 3000, db=path)

    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr, "disk")
    assert file_hash(path) == digest
    assert filler is not None
    filler.unlink()
    assert dump(path) == before
    assert integrity(path) == "ok"
    assert run_tracker(*NEW_RECORD, db=path).returncode == 0
