"""Query plans: every query a reading command runs is answered by an index.

The SQL is captured from the real data-layer functions (a trace callback on a
real SQLite file), then each statement is run through EXPLAIN QUERY PLAN. A
`SCAN` of a table, or a sort of its rows, would make the command slower as the
history grows; the benchmark (tests/benchmarks/run.py) measures the timing.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import captured_sql, query_plan

import deployment_tracker as dt

ENVIRONMENTS = ("qa", "staging")  # production has a promotion gate
BRANCHES = ("main", "feature/login", "hotfix/rare")


def seed(db: sqlite3.Connection, count: int) -> dict[str, str]:
    """`count` deployments of every status, newest last; returns ids to ask about."""
    start = datetime.now(timezone.utc) - timedelta(days=30)
    ids: dict[str, str] = {}
    for number in range(count):
        branch = BRANCHES[number % 2] if number else "hotfix/rare"  # rare: the oldest only
        environment = ENVIRONMENTS[number % 3 == 0]
        request = dt.RecordRequest(
            environment=environment, branch=branch, commit_sha=f"{number:07x}" + "a" * 33
        ).checked()
        record, _, _ = dt.record_deployment(
            db, request, gates=dt.parse_gates(None), now=start + timedelta(minutes=number)
        )
        if number % 5:
            result = "failed" if number % 7 == 3 and number < count - 3 else "verified"
            dt.verify_deployment(db, record["id"], result, by="test")
        ids.setdefault(environment, record["id"])
    for environment in ENVIRONMENTS:  # marks the running one rolled_back
        target, _ = dt.rollback_target(db, environment)
        rollback = dt.RecordRequest(environment=environment, rollback_of=target["id"]).checked()
        dt.record_deployment(
            db, rollback, gates=dt.parse_gates(None), now=start + timedelta(minutes=count + 1)
        )
    # A verified qa deployment of an image qa doesn't run: to roll back to, or to promote.
    verified, _ = dt.rollback_target(db, "qa")
    ids["verified qa"] = verified["id"]
    ids["verified qa commit"] = verified["commit_sha"]
    return ids


@pytest.fixture(scope="module")
def database(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[sqlite3.Connection, dict[str, str]]]:
    path = tmp_path_factory.mktemp("plans") / "deployments.db"
    db = dt.connect(str(path), write=True)
    ids = seed(db, 60)
    db.close()
    reader = dt.connect(str(path), write=False)
    yield reader, ids
    reader.close()


def latest_in_qa(db: sqlite3.Connection, status: str) -> dict[str, Any]:
    return dt.latest(db, "qa", status)


def listed(
    db: sqlite3.Connection, filters: dict[str, Any], limit: int | None
) -> Iterator[dict[str, Any]]:
    return dt.list_deployments(db, **filters, limit=limit)


def reading_queries(ids: dict[str, str]) -> dict[str, Callable[[sqlite3.Connection], Any]]:
    """Every query behind latest, rollback-target, get, promote, the gate, ids given as a
    prefix or a short sha, status of one environment, and list, by name."""
    queries: dict[str, Callable[[sqlite3.Connection], Any]] = {}
    for status in (*dt.STATUSES, "any"):
        queries[f"latest --status {status}"] = functools.partial(latest_in_qa, status=status)
    queries["rollback-target"] = lambda db: dt.rollback_target(db, "qa")
    queries["rollback-target --id"] = lambda db: dt.rollback_target(db, "qa", ids["qa"], force=True)
    queries["rollback-target verified ID"] = lambda db: dt.rollback_target(
        db, "qa", ids["verified qa"]
    )
    queries["get"] = lambda db: (
        dt.get_deployment(db, ids["staging"]),
        dt.events(db, ids["staging"]),
    )
    queries["ID prefix"] = lambda db: dt.resolve_id(db, ids["staging"][:-3])
    queries["ID short sha"] = lambda db: dt.resolve_id(db, ids["verified qa commit"][:7], "qa")
    queries["promote"] = lambda db: dt.promotion_candidate(db, "qa", "staging")
    queries["promote ID"] = lambda db: dt.promotion_candidate(
        db, "qa", "staging", deployment_id=ids["verified qa"]
    )
    queries["promote --commit"] = lambda db: dt.promotion_candidate(
        db, "qa", "staging", commit_sha=ids["verified qa commit"]
    )
    queries["gate"] = lambda db: dt.gate_objection(
        db,
        {**dt.get_deployment(db, ids["staging"]), "environment": "production"},
        {"production": "qa"},
    )
    queries["completion of ids"] = lambda db: dt.newest_ids(db, "main")
    queries["status -e"] = lambda db: dt.environment_status(db, "qa")
    queries["rollback-target --preview"] = lambda db: dt.rollback_undoes(
        db, dt.get_deployment(db, ids["verified qa"])
    )
    queries["plan"] = lambda db: dt.plan_run(
        db,
        dt.PlanRequest("qa", True, None, "main", "a" * 40, "ghcr.io/acme/app"),
        gates={},
    )
    queries["settle"] = lambda db: dt.settle(db, ids["qa"], "rollback")
    filters = {"environment": "qa", "branch": "hotfix/rare", "status": "verified"}
    for size in range(len(filters) + 1):
        for chosen in itertools.combinations(filters, size):
            given: dict[str, Any] = {name: filters[name] for name in chosen}
            for limit in (dt.DEFAULT_LIST_LIMIT, None):
                name = (
                    "list "
                    + " ".join(f"--{key}" for key in chosen)
                    + (" --all" if limit is None else "")
                )
                queries[name] = functools.partial(listed, filters=given, limit=limit)
    return queries


def test_every_reading_query_is_captured(
    database: tuple[sqlite3.Connection, dict[str, str]],
) -> None:
    db, ids = database
    for name, query in reading_queries(ids).items():
        assert captured_sql(db, functools.partial(query, db)), name


@pytest.mark.parametrize("name", list(reading_queries({"qa": "", "staging": ""})))
def test_no_table_scan_and_no_sort(
    database: tuple[sqlite3.Connection, dict[str, str]], name: str
) -> None:
    db, ids = database
    query = reading_queries(ids)[name]
    for sql in captured_sql(db, lambda: query(db)):
        steps = query_plan(db, sql)
        shown = f"{name}: {sql}\n" + "\n".join(steps)
        assert not any("TEMP B-TREE" in step for step in steps), shown
        for step in steps:
            if step.startswith("SCAN"):
                # Only the unfiltered list may walk the table, in rowid order
                # (newest first), so its LIMIT stops it after a page.
                assert step == "SCAN deployments" and " WHERE " not in sql, shown


FILTER_COLUMNS = ("environment", "branch", "status")


@pytest.mark.parametrize(
    "chosen",
    [c for size in (1, 2, 3) for c in itertools.combinations(FILTER_COLUMNS, size)],
    ids="+".join,
)
def test_list_filters_are_all_answered_by_one_index(
    database: tuple[sqlite3.Connection, dict[str, str]], chosen: tuple[str, ...]
) -> None:
    """An index on only some of the filters would walk every row of the others."""
    db, _ = database
    values = {"environment": "qa", "branch": "hotfix/rare", "status": "verified"}
    given: dict[str, Any] = {name: values[name] for name in chosen}
    (sql,) = captured_sql(db, lambda: dt.list_deployments(db, **given))
    (step,) = query_plan(db, sql)
    assert step.startswith("SEARCH deployments USING INDEX"), step
    used = step[step.index("(") + 1 : step.rindex(")")].split(" AND ")
    assert sorted(used) == sorted(f"{column}=?" for column in chosen), step


def test_work_does_not_grow_with_history(tmp_path: Path) -> None:
    """The SQLite VM does the same work on 3x the history: the queries stop early."""

    def work(count: int) -> dict[str, int]:
        db = dt.connect(str(tmp_path / f"{count}.db"), write=True)
        ids = seed(db, count)
        counts = {}
        for name, query in reading_queries(ids).items():
            if name.endswith("--all"):
                continue
            steps = [0]

            def tick(steps: list[int] = steps) -> int:
                steps[0] += 1
                return 0

            db.set_progress_handler(tick, 100)
            result = query(db)
            if isinstance(result, Iterator):
                list(result)
            db.set_progress_handler(None, 0)
            counts[name] = steps[0]
        db.close()
        return counts

    small, large = work(200), work(600)
    grown = {name: (small[name], large[name]) for name in small if large[name] > small[name] + 2}
    assert not grown, grown
