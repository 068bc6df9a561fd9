"""Many processes writing and reading one real database file at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from helpers import WORKER, check_history_consistent, integrity, run_tracker

import deployment_tracker as dt

WRITERS = 8
RECORDS_PER_WRITER = 200
READERS = 2
CLI_RECORDS = 32
CLI_READS = 16
FIRST_USE_PROCESSES = 8
FIRST_USE_ROUNDS = 4


def start_worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def release(workers: list[subprocess.Popen[str]]) -> None:
    """Every worker blocks on stdin until this, so they start together."""
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.close()
        worker.stdin = None  # communicate() must not flush it again


def seed(db_path: Path) -> None:
    db = dt.connect(str(db_path), write=True)
    for environment in ("staging", "live"):
        request = dt.RecordRequest(
            environment=environment, branch=f"seed-{environment}", commit_sha="e" * 40
        ).checked()
        dt.record_deployment(db, request, gates=dt.parse_gates(None))
    db.close()


def test_writers_and_readers_in_parallel_lose_nothing(tmp_path: Path) -> None:
    db_path = tmp_path / "load.db"
    seed(db_path)
    stop_file = tmp_path / "stop"
    writers = [
        start_worker("load", str(db_path), str(worker), str(RECORDS_PER_WRITER))
        for worker in range(WRITERS)
    ]
    readers = [start_worker("read", str(db_path), str(stop_file)) for _ in range(READERS)]
    release(writers)
    written = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        written.extend(out.split())
    stop_file.touch()
    for reader in readers:
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        assert int(out) > 0

    assert len(written) == WRITERS * RECORDS_PER_WRITER
    assert integrity(db_path) == "ok"
    with sqlite3.connect(db_path) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM deployments")}
        verified = db.execute("SELECT count(*) FROM deployments WHERE status = 'verified'")
        assert verified.fetchone()[0] == WRITERS * (RECORDS_PER_WRITER // 4)
    assert set(written) <= stored
    assert len(stored) == WRITERS * RECORDS_PER_WRITER + 2
    counts = check_history_consistent(db_path)
    assert counts["events"] == counts["deployments"] + WRITERS * (RECORDS_PER_WRITER // 4)


def test_real_record_commands_in_parallel_with_list_and_latest(tmp_path: Path) -> None:
    db_path = tmp_path / "cli.db"
    seed(db_path)
    jobs: list[list[str]] = []
    for number in range(CLI_RECORDS):
        jobs.append(
            ["record", "-e", "staging", "-b", f"cli/{number}", "-c", "f" * 40, "--actor", "ci"]
        )
        if number % 4 == 0:
            jobs.append(["list", "-e", "staging", "-o", "json"])
        elif number % 4 == 2:
            jobs.append(["latest", "-e", "staging", "--status", "any", "--field", "id"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: run_tracker(*args, db=db_path), jobs))

    for args, result in zip(jobs, results):
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr == "", (args, result.stderr)
    recorded = [result.stdout.strip() for args, result in zip(jobs, results) if args[0] == "record"]
    assert len(recorded) == CLI_RECORDS
    assert sum(1 for args in jobs if args[0] != "record") == CLI_READS
    assert integrity(db_path) == "ok"
    with sqlite3.connect(db_path) as db:
        stored = {row[0] for row in db.execute("SELECT id FROM deployments")}
    assert set(recorded) <= stored
    assert len(stored) == CLI_RECORDS + 2


def reference_schema(tmp_path: Path) -> list[tuple[str, str]]:
    alone = tmp_path / "alone.db"
    dt.connect(str(alone), write=True).close()
    with sqlite3.connect(alone) as db:
        return db.execute("SELECT type, name FROM sqlite_master ORDER BY type, name").fetchall()


def test_first_use_by_many_processes_at_once_migrates_once(tmp_path: Path) -> None:
    expected_schema = reference_schema(tmp_path)
    for round_number in range(FIRST_USE_ROUNDS):
        db_path = tmp_path / f"round{round_number}" / "new.db"
        workers = [
            start_worker("migrate", str(db_path), str(worker))
            for worker in range(FIRST_USE_PROCESSES)
        ]
        release(workers)
        for worker in workers:
            _, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
        with sqlite3.connect(db_path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == len(dt.MIGRATIONS)
            assert db.execute("PRAGMA application_id").fetchone()[0] == dt.APPLICATION_ID
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            schema = db.execute("SELECT type, name FROM sqlite_master ORDER BY type, name")
            assert schema.fetchall() == expected_schema
            count = db.execute("SELECT count(*) FROM deployments").fetchone()[0]
        assert count == FIRST_USE_PROCESSES
        assert integrity(db_path) == "ok"


def open_new_database(path: str) -> str:
    """In a pool process: open (create and migrate) a database; '' or the error."""
    try:
        dt.connect(path, write=True).close()
    except dt.TrackerError as error:
        return str(error)
    return ""


def test_many_rounds_of_racing_first_opens(tmp_path: Path) -> None:
    """Processes already running, so their opens land within microseconds of each other:
    this caught a schema check that read in two snapshots and a WAL switch that answered
    'locked' (19 of 480 opens failed before the fix)."""
    import multiprocessing

    rounds, processes = 40, 8
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for round_number in range(rounds):
            path = str(tmp_path / f"race{round_number}.db")
            errors = [e for e in pool.map(open_new_database, [path] * processes) if e]
            assert errors == [], f"round {round_number}: {errors}"
            with closing(sqlite3.connect(path)) as db:
                assert db.execute("PRAGMA user_version").fetchone()[0] == len(dt.MIGRATIONS)
                assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
