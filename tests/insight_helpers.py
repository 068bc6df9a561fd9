"""Histories with known DORA figures, built through the data layer at explicit times."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import deployment_tracker as dt

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
    record, _ = dt.record_deployment(
        db,
        environment=environment,
        branch=None if rollback_of else branch,
        commit_sha=None if rollback_of else sha,
        rollback_of=rollback_of,
        status=status,
        actor=actor,
        committed_at=dt.iso(moment(committed)) if committed else None,
        now=moment(when),
        gates={},
    )
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
