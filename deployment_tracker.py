"""Track deployments, verify them, and find what to roll back to.

Every deployment from any branch to any environment is recorded in a SQLite
database with its image tag, verification result and full event history, so a
rollback can always go back to the latest *verified* deployment.

The shape: a click command group (the CLI) over a thin sqlite3 data layer that
only runs SQL and builds records. What talks to git or HTTP for the workflow
(the history branch, webhooks) lives with the workflow in .github/scripts and
drives this file through its command line; --history only hands a command to
that history module (imported then). Sections, in reading order:

      41-394   Constants and SQL
     396-422   Errors
     425-649   Migrations
     652-1002  Validation and ids
    1005-1226  Connection and transactions
    1229-1699  Data layer: records
    1702-2052  Data layer: control (promotion gates, promote, block, prune)
    2055-2202  Data layer: insight (DORA figures, the deployments of a window, status, completion)
    2205-3005  Output
    3008-4255  CLI
    4258-4268  main
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, NoReturn, Optional, TypeVar, Union

import click

__version__ = "0.4.0"

# ==========================================================================
# Constants and SQL
# ==========================================================================

DEFAULT_DB = ".github/deployments.db"
DB_ENV_VAR = "DEPLOYMENT_TRACKER_DB"
HISTORY_ENV_VAR = "DEPLOYMENT_TRACKER_HISTORY"
# Where `--history` finds the history module: installed by pip (pyproject.toml), or as the
# workflow's setup action installs it.
HISTORY_MODULES = ("deployment_tracker_workflow.deployment_history", "deployment_history")
ENVIRONMENT_ENV_VAR = "DEPLOYMENT_TRACKER_ENVIRONMENT"
GATES_ENV_VAR = "DEPLOYMENT_TRACKER_GATES"
APPLICATION_ID = 0x44504C54  # "DPLT": marks the file as ours.
BUSY_TIMEOUT_SECONDS = 30.0
# The shared history is writable by anyone who can push its branch: a crafted
# file must neither hang a job nor fill its memory.
QUERY_DEADLINE_SECONDS = 120.0
MAX_DATABASE_BYTES = 4 * 1024**3
DEFAULT_LIST_LIMIT = 20
# Clock skew tolerated on timestamps that come from other machines.
FUTURE_TOLERANCE = timedelta(minutes=5)

STATUSES = ("deployed", "verified", "failed", "rolled_back")
# The workflow jobs that ask `settle` what to do.
SETTLE_STAGES = ("deploy", "verify", "rollback")
VERIFY_STATUSES = ("verified", "failed")
RECORD_STATUSES = ("deployed", "failed")
# Allowed status changes; repeating the current status is a no-op.
_TRANSITIONS = {
    "deployed": {"verified", "failed", "rolled_back"},
    "verified": {"rolled_back"},
    "failed": set(),
    "rolled_back": set(),
}
# Events that record an action on a deployment without changing its status.
BLOCKED_EVENT = "blocked"
UNBLOCKED_EVENT = "unblocked"
GATE_BYPASSED_EVENT = "gate_bypassed"

FIELDS = (
    "id",
    "environment",
    "branch",
    "commit_sha",
    "image_tag",
    "status",
    "deployed_at",
    "verified_at",
    "verified_by",
    "actor",
    "run_id",
    "run_url",
    "rollback_of",
    "note",
    "committed_at",
    "promoted_from",
    "blocked",
    "blocked_at",
    "blocked_by",
    "blocked_reason",
    "gate_bypassed",
    "image_digest",
    "replaces",
)
# Fields that a retried `record` must repeat exactly to count as the same call.
_IDENTITY_FIELDS = (
    "environment",
    "branch",
    "commit_sha",
    "image_tag",
    "actor",
    "run_id",
    "run_url",
    "rollback_of",
    "note",
    "committed_at",
    "promoted_from",
    "image_digest",
)
EVENT_FIELDS = ("at", "status", "by", "note")
# The default table: what ran, where, when, and did it pass. `image` appears
# only when some row's image tag differs from its id (rollbacks, promotions).
TABLE_COLUMNS = ("id", "environment", "commit", "status", "age", "verified_by", "marks")
BUILTIN_FORMATS = ("table", "json", "csv", "tsv")
SHORT_SHA_LENGTH = 7
# 128 - len("_") - 7 (short sha) - len("_") - 14 (timestamp)
MAX_BRANCH_PART = 105
BRANCH_HASH_LENGTH = 8
MAX_LENGTHS = {
    "branch": 1000,
    "actor": 100,
    "verified_by": 100,
    "run_url": 2048,
    "note": 4000,
    "reason": 1000,
}
TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Bytes a file: URI carries as they are (the rest are %-escaped).
_URI_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


class _LazyPattern:
    """A regex compiled on first use: each command needs only a few, and start-up time counts."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled: Optional[re.Pattern[str]] = None

    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._compiled = re.compile(self.pattern)
        return self._compiled

    def fullmatch(self, text: str) -> Optional[re.Match[str]]:
        return self.compiled().fullmatch(text)

    def search(self, text: str) -> Optional[re.Match[str]]:
        return self.compiled().search(text)

    def sub(self, replacement: Any, text: str) -> str:
        return self.compiled().sub(replacement, text)


# Docker's tag grammar: 128 characters at most, no leading '.' or '-'.
_TAG_PATTERN = _LazyPattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST_PATTERN = _LazyPattern(r"sha256:[0-9a-f]{64}")
# An image repository as docker names it: a registry host (and port), then lowercase path parts.
_REPOSITORY_PATTERN = _LazyPattern(
    r"[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]{1,5})?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+"
)
_ID_PATTERN = _LazyPattern(r"(?P<branch>.+)_(?P<sha>[0-9a-f]{7})_(?P<timestamp>\d{14})")
_SHA_PATTERN = _LazyPattern(r"[0-9a-f]{7,40}|[0-9a-f]{64}")
_ENVIRONMENT_PATTERN = _LazyPattern(r"[a-z][a-z0-9_-]{0,62}")
_RUN_ID_PATTERN = _LazyPattern(r"[0-9]{1,20}")
_URL_PATTERN = _LazyPattern(r"https?://[^\s\x00-\x1f\x7f]+")
_UNSAFE_TAG_CHARACTERS = _LazyPattern(r"[^A-Za-z0-9_.-]+")
# What git check-ref-format refuses in a branch name.
_BAD_BRANCH_PATTERN = _LazyPattern(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")
# Every format character (Unicode category Cf): the bidi marks reorder displayed text
# (`hotfix/\u202edexif-ton` shows as `hotfix/not-fixed`); zero-width and tag characters
# hide in it (`main\u200b` shows as `main`).
_INVISIBLE = (
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f"
)
_CONTROL_CHARACTERS = _LazyPattern(f"[\\x00-\\x1f\\x7f-\\x9f{_INVISIBLE}]")
_NOTE_CONTROL_CHARACTERS = _LazyPattern(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_INVISIBLE}]")
# What a terminal, a log or a summary must never receive raw from a stored value:
# controls (ESC starts CSI/OSC sequences), bidi marks, and unpaired surrogates.
_UNSHOWABLE = _LazyPattern(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_INVISIBLE}\\ud800-\\udfff]")
# What a shell takes as one word without quotes (shlex.quote's safe set).
_SHELL_SAFE = _LazyPattern(r"[A-Za-z0-9_@%+=:,./-]+")
_UNSHOWABLE_IN_A_LINE = _LazyPattern(f"[\\x00-\\x1f\\x7f-\\x9f{_INVISIBLE}\\ud800-\\udfff]")

_SELECT_DEPLOYMENT = "SELECT {columns} FROM deployments".format(  # noqa: S608 (constant columns)
    columns=", ".join(FIELDS)
)
_INSERT_DEPLOYMENT = "INSERT INTO deployments ({columns}) VALUES ({names})".format(  # noqa: S608
    columns=", ".join(FIELDS), names=", ".join(f":{field}" for field in FIELDS)
)
_INSERT_EVENT = (
    "INSERT INTO events (deployment_id, status, at, by, note)"
    " VALUES (:deployment_id, :status, :at, :by, :note)"
)
_SELECT_EVENTS = "SELECT at, status, by, note FROM events WHERE deployment_id = ? ORDER BY seq"
_SELECT_FIRST_STATUS = "SELECT status FROM events WHERE deployment_id = ? ORDER BY seq LIMIT 1"
_SELECT_SCHEMA_STATE = (
    "SELECT (SELECT * FROM pragma_application_id()), (SELECT * FROM pragma_user_version()),"
    " (SELECT group_concat(type || ' ' || name || ' ' || tbl_name || ' ' || coalesce(sql, ''),"
    " char(30)) FROM (SELECT * FROM sqlite_master ORDER BY type, name))"
)
_SELECT_BY_ID = _SELECT_DEPLOYMENT + " WHERE id = ?"
# Ids are Docker tags, and '~' sorts after every character a tag may hold.
_SELECT_IDS_WITH_PREFIX = (
    "SELECT id, environment FROM deployments WHERE id >= :prefix AND id < :prefix || '~'"
    " AND (:environment IS NULL OR environment = :environment) ORDER BY id LIMIT :limit"
)
_SELECT_IDS_OF_COMMIT = (
    "SELECT id, environment FROM deployments"
    " WHERE commit_sha >= :prefix AND commit_sha < :prefix || 'g'"
    " AND (:environment IS NULL OR environment = :environment)"
    # The index's own order, backwards (newest first per commit): no sort.
    " ORDER BY commit_sha DESC, environment DESC, seq DESC LIMIT :limit"
)
_SELECT_NEWEST_IDS = "SELECT id FROM deployments ORDER BY seq DESC LIMIT ?"
_SELECT_RUNNING = _SELECT_DEPLOYMENT + " WHERE environment = ? ORDER BY seq DESC LIMIT 1"
_SELECT_LATEST_WITH_STATUS = (
    _SELECT_DEPLOYMENT + " WHERE environment = ? AND status = ? ORDER BY seq DESC LIMIT 1"
)
_SELECT_ROLLBACK_CANDIDATE = (
    _SELECT_DEPLOYMENT + " WHERE environment = ? AND status = 'verified' AND image_tag != ?"
    " AND blocked = 0 ORDER BY seq DESC LIMIT 1"
)
# The deployment that first shipped an image in an environment (and was good).
# What a rollback to an image undoes: the deployments after the last that ran it.
_SELECT_UNDONE = (
    _SELECT_DEPLOYMENT + " WHERE environment = :environment AND seq > (SELECT max(seq) FROM"
    " deployments WHERE environment = :environment AND image_tag = :image_tag)"
    " ORDER BY seq DESC LIMIT :limit"
)
_SELECT_FIRST_SHIPPED = (
    _SELECT_DEPLOYMENT + " WHERE environment = ? AND image_tag = ? AND verified_at IS NOT NULL"
    " ORDER BY seq LIMIT 1"
)
_SELECT_GATE_PASS = (
    _SELECT_DEPLOYMENT + " WHERE environment = ? AND image_tag = ? AND status = 'verified'"
    " AND blocked = 0 ORDER BY seq DESC LIMIT 1"
)
_SELECT_VERIFIED_COMMIT = (
    _SELECT_DEPLOYMENT + " WHERE commit_sha = ? AND environment = ? AND status = 'verified'"
    " AND blocked = 0 ORDER BY seq DESC LIMIT 1"
)
_SELECT_VERIFIED_COMMIT_PREFIX = (
    _SELECT_DEPLOYMENT + " WHERE commit_sha >= :prefix AND commit_sha < :prefix || 'g'"
    # '+': walk the commits' index (not every verified row of the environment), in its
    # own order backwards (newest first per commit): no sort.
    " AND +environment = :environment AND +status = 'verified' AND blocked = 0"
    " ORDER BY commit_sha DESC, environment DESC, seq DESC LIMIT 50"
)
_SELECT_PROMOTION_CANDIDATE = (
    _SELECT_DEPLOYMENT + " WHERE environment = ? AND status = 'verified' AND blocked = 0"
    " ORDER BY seq DESC LIMIT 1"
)
# The newest two verified, unblocked deployments: is one of them the only one?
_SELECT_NEWEST_VERIFIED_IDS = (
    "SELECT id FROM deployments WHERE environment = ? AND status = 'verified' AND blocked = 0"
    " ORDER BY seq DESC LIMIT 2"
)
# Distinct values of an indexed column without reading every row: hop from
# each value to the next one through the index.
_SELECT_DISTINCT = """
    WITH RECURSIVE hop(value) AS (
        SELECT min({column}) FROM deployments WHERE {column} >= :prefix
        UNION ALL
        SELECT (SELECT min({column}) FROM deployments WHERE {column} > hop.value)
        FROM hop WHERE hop.value IS NOT NULL AND hop.value < :prefix || '\U0010ffff'
    )
    SELECT value FROM hop
    WHERE value IS NOT NULL AND value < :prefix || '\U0010ffff' LIMIT :limit
"""

# Promotion gates, SOURCE:TARGET[,...]: TARGET only receives images verified in SOURCE.
DEFAULT_GATES = "staging:production"
NO_GATES = "none"

# Insight: DORA figures (stats) and the timeline picture.
DEFAULT_SINCE = "30d"
_SINCE_PATTERN = _LazyPattern(r"(?P<amount>[0-9]{1,5})(?P<unit>[hdw])")
_SINCE_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
TIMELINE_FORMATS = ("mermaid", "markdown", "html")
STATS_FIELDS = (
    "environment",
    "since",
    "until",
    "days",
    "deployments",
    "deployments_per_day",
    "deployments_per_week",
    "rollbacks",
    "change_failures",
    "change_failure_rate",
    "restored",
    "unrestored",
    "time_to_restore_median_seconds",
    "time_to_restore_worst_seconds",
    "lead_time_changes",
    "lead_time_median_seconds",
)
# `status`: per environment, what runs there, the last verified one, the rollback target.
ENVIRONMENT_STATUS_FIELDS = (
    "environment",
    "id",
    "status",
    "branch",
    "image_tag",
    "since",
    "last_verified",
    "last_verified_at",
    "rollback_target",
)
# The newest deployments shown: the HTML page stays small, Mermaid stays legible.
HTML_MAX_DEPLOYMENTS = 1500
MERMAID_MAX_PER_ENVIRONMENT = 20
# status: (fill, darker stroke); GitHub's Primer palette, readable on white.
STATUS_COLOURS = {
    "verified": ("#2da44e", "#1a7f37"),
    "failed": ("#cf222e", "#a40e26"),
    "deployed": ("#d4a72c", "#9a6700"),
    "rolled_back": ("#8c959f", "#57606a"),
}
ROLLBACK_COLOUR = "#8250df"
_TIMELINE_WIDTH = 1200
_TIMELINE_LABEL_WIDTH = 175
_TIMELINE_LANE_HEIGHT = 100
# Marks closer than the gap (px) stack into rows below one another.
_TIMELINE_MARK_GAP = 13
_TIMELINE_ROWS = 3
_TIMELINE_ROW_HEIGHT = 14
_TIMELINE_STYLE = """
body{font:14px/1.45 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328;
margin:24px;background:#fff}
h1{font-size:20px;margin:0 0 4px}
p.window{color:#57606a;margin:0 0 16px}
table.stats{border-collapse:collapse;margin:0 0 20px}
table.stats th,table.stats td{border:1px solid #d0d7de;padding:4px 10px;text-align:right}
table.stats th:first-child,table.stats td:first-child{text-align:left;color:#57606a}
table.stats thead th{background:#f6f8fa;text-align:center}
.chart{overflow-x:auto}
svg text{font:12px -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;fill:#1f2328}
svg text.lane{font-weight:600;font-size:13px}
svg text.muted{fill:#57606a}
.grid{stroke:#d0d7de;stroke-width:1}
.baseline{stroke:#afb8c1;stroke-width:1.5}
.mark{stroke-width:1.5}
.restore{fill:none;stroke:ROLLBACK;stroke-width:1.6;marker-end:url(#arrowhead)}
.restore.earlier{stroke-dasharray:5 3}
"""
# A Mermaid label keeps these characters; any other becomes an entity code (#NNN;).
_MERMAID_SAFE_CHARACTER = _LazyPattern(r"[A-Za-z0-9 _./:@+,=-]")
# A change is a deployment that is not a rollback; it failed if its
# verification failed or it was rolled back. The window is on deployed_at.
_SELECT_STATS_COUNTS = """
    SELECT coalesce(sum(rollback_of IS NULL), 0), coalesce(sum(rollback_of IS NOT NULL), 0),
        coalesce(sum(rollback_of IS NULL AND status IN ('failed', 'rolled_back')), 0)
    FROM deployments
    WHERE environment = :environment AND deployed_at >= :since AND deployed_at <= :until
"""
# Per failed change: seconds until the next deployment in its environment that
# was verified (NULL while there is none).
_SELECT_RESTORE_SECONDS = """
    SELECT CAST(strftime('%s', (
            SELECT restore.verified_at FROM deployments AS restore
            WHERE restore.environment = failure.environment AND restore.seq > failure.seq
                AND restore.status IN ('verified', 'rolled_back')
                AND restore.verified_at IS NOT NULL
            ORDER BY restore.seq LIMIT 1
        )) AS INTEGER) - CAST(strftime('%s', failure.deployed_at) AS INTEGER)
    FROM deployments AS failure
    WHERE failure.environment = :environment AND failure.deployed_at >= :since
        AND failure.deployed_at <= :until AND failure.rollback_of IS NULL
        AND failure.status IN ('failed', 'rolled_back')
    ORDER BY failure.seq
"""
_SELECT_LEAD_SECONDS = """
    SELECT CAST(strftime('%s', verified_at) AS INTEGER)
        - CAST(strftime('%s', committed_at) AS INTEGER)
    FROM deployments
    WHERE environment = :environment AND deployed_at >= :since AND deployed_at <= :until
        AND rollback_of IS NULL AND committed_at IS NOT NULL AND verified_at IS NOT NULL
        AND status IN ('verified', 'rolled_back')
"""

# ==========================================================================
# Errors
# ==========================================================================


class TrackerError(Exception):
    """A failure the user can act on; shown as one line with its exit code."""

    exit_code = 1


class NotFound(TrackerError):
    """No such deployment, or nothing matches."""


class Refused(TrackerError):
    """The operation makes no sense for the data as it is."""


class DatabaseProblem(TrackerError):
    """The database is missing, unreadable, corrupt, foreign or from a newer version."""


class InvalidInput(TrackerError):
    """A value given by the caller is not acceptable."""

    exit_code = 2


# ==========================================================================
# Migrations
# ==========================================================================

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(function: Migration) -> Migration:
    """Register a migration; they run in the order they are declared."""
    MIGRATIONS.append(function)
    return function


@migration
def m001_deployments_and_events(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE deployments (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            environment TEXT NOT NULL,
            branch TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            image_tag TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('deployed', 'verified', 'failed', 'rolled_back')),
            deployed_at TEXT NOT NULL,
            verified_at TEXT,
            verified_by TEXT,
            actor TEXT,
            run_id TEXT,
            run_url TEXT,
            rollback_of TEXT REFERENCES deployments (id),
            note TEXT,
            committed_at TEXT
        )
        """
    )
    db.execute(
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            deployment_id TEXT NOT NULL REFERENCES deployments (id),
            status TEXT NOT NULL,
            at TEXT NOT NULL,
            by TEXT,
            note TEXT
        )
        """
    )
    db.execute("CREATE INDEX deployments_by_environment ON deployments (environment, seq)")
    db.execute(
        "CREATE INDEX deployments_by_environment_status ON deployments (environment, status, seq)"
    )
    db.execute("CREATE INDEX deployments_by_branch ON deployments (branch, seq)")
    db.execute("CREATE INDEX deployments_by_status ON deployments (status, seq)")
    db.execute("CREATE INDEX events_by_deployment ON events (deployment_id, seq)")


@migration
def m002_control(db: sqlite3.Connection) -> None:
    """Blocking, promotion links and the log of prunes."""
    db.execute("ALTER TABLE deployments ADD COLUMN promoted_from TEXT REFERENCES deployments (id)")
    db.execute(
        "ALTER TABLE deployments ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0"
        " CHECK (blocked IN (0, 1))"
    )
    db.execute("ALTER TABLE deployments ADD COLUMN blocked_at TEXT")
    db.execute("ALTER TABLE deployments ADD COLUMN blocked_by TEXT")
    db.execute("ALTER TABLE deployments ADD COLUMN blocked_reason TEXT")
    # The promotion gate looks for a verified image in the source environment.
    # Partial: writes of unverified deployments never touch it.
    db.execute(
        "CREATE INDEX verified_deployments_by_image ON deployments (environment, image_tag, seq)"
        " WHERE status = 'verified'"
    )
    db.execute(
        """
        CREATE TABLE prunes (
            seq INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            by TEXT,
            environment TEXT,
            keep INTEGER NOT NULL,
            removed INTEGER NOT NULL,
            removed_events INTEGER NOT NULL,
            removed_ids TEXT NOT NULL
        )
        """
    )


@migration
def m003_list_filter_indexes(db: sqlite3.Connection) -> None:
    """An index for every filter combination of `list`.

    With only some of its filters in an index, a LIMIT query walks every row
    matching those until enough match the rest: all verified rows of all
    branches, for `--branch X --status verified` on a rarely deployed branch.
    """
    db.execute("CREATE INDEX deployments_by_branch_status ON deployments (branch, status, seq)")
    db.execute(
        "CREATE INDEX deployments_by_environment_branch ON deployments (environment, branch, seq)"
    )
    db.execute(
        "CREATE INDEX deployments_by_environment_branch_status"
        " ON deployments (environment, branch, status, seq)"
    )


@migration
def m004_gate_bypasses_and_commits(db: sqlite3.Connection) -> None:
    """A mark on deployments recorded past a promotion gate, and lookups by commit and image.

    Earlier versions refused such records unless overridden; their override
    events ('gate_overridden') become the mark.
    """
    db.execute(
        "ALTER TABLE deployments ADD COLUMN gate_bypassed INTEGER NOT NULL DEFAULT 0"
        " CHECK (gate_bypassed IN (0, 1))"
    )
    db.execute(
        "UPDATE deployments SET gate_bypassed = 1"
        " WHERE id IN (SELECT deployment_id FROM events WHERE status = 'gate_overridden')"
    )
    db.execute("CREATE INDEX deployments_by_commit ON deployments (commit_sha, environment, seq)")
    db.execute(
        "CREATE INDEX deployments_by_environment_image ON deployments (environment, image_tag, seq)"
    )


@migration
def m005_image_digests(db: sqlite3.Connection) -> None:
    """The digest of the image a deployment ran: a tag can be pushed again, a digest can't."""
    db.execute("ALTER TABLE deployments ADD COLUMN image_digest TEXT")


@migration
def m006_what_a_deployment_replaced(db: sqlite3.Connection) -> None:
    """The deployment that ran in the environment when this one was recorded: what an
    automatic rollback of this one restores. No foreign key: a prune may remove it."""
    db.execute("ALTER TABLE deployments ADD COLUMN replaces TEXT")


def _schema_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(db: sqlite3.Connection) -> None:
    """Apply pending migrations, each with its bookkeeping in one transaction.

    The version is re-read after taking the write lock, so processes racing to
    create the same database apply each migration exactly once.
    """
    for number, step in enumerate(MIGRATIONS, start=1):
        if _schema_version(db) >= number:
            continue
        with transaction(db):
            if _schema_version(db) < number:
                step(db)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {number}")


# sqlite_master as migrations 1..6 leave it, as _check_schema reads it. Rebuilding it from the
# migrations costs 0.7 ms, so a database is first compared with this copy; it is rebuilt only on
# a mismatch (an older schema version, or a SQLite that spaces its ALTER TABLE output another
# way). A new migration must replace it (tests/test_hostile_values.py checks that a current
# database needs no rebuild). Print the new value with:
#   python -c "import deployment_tracker as d; print(d._expected_schema(len(d.MIGRATIONS)))"
_SCHEMA = (
    "index deployments_by_branch deployments CREATE INDEX deployments_by_branch ON "
    "deployments (branch, seq) index deployments_by_branch_status deployments CREATE INDEX "
    "deployments_by_branch_status ON deployments (branch, status, seq) index "
    "deployments_by_commit deployments CREATE INDEX deployments_by_commit ON deployments "
    "(commit_sha, environment, seq) index deployments_by_environment deployments CREATE "
    "INDEX deployments_by_environment ON deployments (environment, seq) index "
    "deployments_by_environment_branch deployments CREATE INDEX "
    "deployments_by_environment_branch ON deployments (environment, branch, seq) index "
    "deployments_by_environment_branch_status deployments CREATE INDEX "
    "deployments_by_environment_branch_status ON deployments (environment, branch, status, "
    "seq) index deployments_by_environment_image deployments CREATE INDEX "
    "deployments_by_environment_image ON deployments (environment, image_tag, seq) index "
    "deployments_by_environment_status deployments CREATE INDEX "
    "deployments_by_environment_status ON deployments (environment, status, seq) index "
    "deployments_by_status deployments CREATE INDEX deployments_by_status ON deployments "
    "(status, seq) index events_by_deployment events CREATE INDEX events_by_deployment ON "
    "events (deployment_id, seq) index sqlite_autoindex_deployments_1 deployments index "
    "verified_deployments_by_image deployments CREATE INDEX verified_deployments_by_image ON "
    "deployments (environment, image_tag, seq) WHERE status = 'verified' table deployments "
    "deployments CREATE TABLE deployments ( seq INTEGER PRIMARY KEY, id TEXT NOT NULL "
    "UNIQUE, environment TEXT NOT NULL, branch TEXT NOT NULL, commit_sha TEXT NOT NULL, "
    "image_tag TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('deployed', 'verified', "
    "'failed', 'rolled_back')), deployed_at TEXT NOT NULL, verified_at TEXT, verified_by "
    "TEXT, actor TEXT, run_id TEXT, run_url TEXT, rollback_of TEXT REFERENCES deployments "
    "(id), note TEXT, committed_at TEXT , promoted_from TEXT REFERENCES deployments (id), "
    "blocked INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)), blocked_at TEXT, "
    "blocked_by TEXT, blocked_reason TEXT, gate_bypassed INTEGER NOT NULL DEFAULT 0 CHECK "
    "(gate_bypassed IN (0, 1)), image_digest TEXT, replaces TEXT) table events events CREATE "
    "TABLE events ( seq INTEGER PRIMARY KEY, deployment_id TEXT NOT NULL REFERENCES "
    "deployments (id), status TEXT NOT NULL, at TEXT NOT NULL, by TEXT, note TEXT ) table "
    "prunes prunes CREATE TABLE prunes ( seq INTEGER PRIMARY KEY, at TEXT NOT NULL, by TEXT, "
    "environment TEXT, keep INTEGER NOT NULL, removed INTEGER NOT NULL, removed_events "
    "INTEGER NOT NULL, removed_ids TEXT NOT NULL )"
)


def _expected_schema(version: int) -> str:
    """sqlite_master as migrations 1..version leave it (as _SELECT_SCHEMA_STATE reads it)."""
    scratch = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for step in MIGRATIONS[:version]:
            step(scratch)
        expected: str = scratch.execute(_SELECT_SCHEMA_STATE).fetchone()[2]
    finally:
        scratch.close()
    return _normalised_schema(expected)


def _normalised_schema(listing: Optional[str]) -> str:
    """The schema listing with whitespace runs collapsed: SQLite versions differ in how
    ALTER TABLE spaces the statements it rewrites, never in what they declare."""
    return " ".join((listing or "").split())


# ==========================================================================
# Validation and ids
# ==========================================================================

Record = dict[str, Any]


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(ISO_FORMAT)


def _describe(value: str) -> str:
    """Show a rejected value safely: escaped and short."""
    shown = ascii(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def check_text(name: str, value: str, *, multiline: bool = False) -> str:
    """Free text: valid UTF-8, not blank, within its length, no control or bidi characters."""
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL bytes")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid UTF-8 text") from None
    limit = MAX_LENGTHS.get(name, 255)
    if len(value) > limit:
        raise InvalidInput(f"{name} is too long ({len(value)} characters, at most {limit})")
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    controls = _NOTE_CONTROL_CHARACTERS if multiline else _CONTROL_CHARACTERS
    if controls.search(value):
        raise InvalidInput(
            f"{name} must not contain control or bidi characters: {_describe(value)}"
        )
    return value


def storable_note(value: str) -> str:
    """A note as it can be stored whatever it held: what a check answered is evidence,
    and a verification result must never be lost over its note. Control and bidi
    characters and undecodable bytes become escapes; too long is cut."""

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code & 0xFF:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    text = _NOTE_CONTROL_CHARACTERS.sub(escape, value)
    text = re.sub("[\ud800-\udfff]", escape, text)
    limit = MAX_LENGTHS["note"]
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text if text.strip() else "(empty)"


def check_environment(value: str) -> str:
    if not _ENVIRONMENT_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"environment must be lowercase letters, digits, '-' or '_',"
            f" starting with a letter: {_describe(value)}"
        )
    return value


def check_branch(value: str) -> str:
    check_text("branch", value)
    if (
        _BAD_BRANCH_PATTERN.search(value)
        or value.startswith(("-", "/", "."))
        or value.endswith(("/", "."))
        or value == "@"
    ):
        raise InvalidInput(f"branch is not a valid git branch name: {_describe(value)}")
    return value


def _matching(pattern: _LazyPattern, rule: str) -> Callable[[str], str]:
    """A check that a value matches `pattern`; `rule` says what it must be."""

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise InvalidInput(f"{rule}: {_describe(value)}")
        return value

    return check


check_sha = _matching(_SHA_PATTERN, "commit must be 7 to 40 (or 64) lowercase hex characters")
check_image_tag = _matching(_TAG_PATTERN, "image tag is not a valid Docker tag")
check_digest = _matching(_DIGEST_PATTERN, "image digest must be sha256: and 64 lowercase hex")
check_repository = _matching(
    _REPOSITORY_PATTERN, "image repository must be REGISTRY/NAME in lowercase, as docker names it"
)
check_run_id = _matching(_RUN_ID_PATTERN, "run id must be a number")
# A full id, the start of one, or a commit's short sha: all are tag characters.
check_id_or_prefix = _matching(
    _TAG_PATTERN, "deployment id (or a unique start of one) must be a Docker tag"
)


def check_run_url(value: str) -> str:
    check_text("run_url", value)
    if not _URL_PATTERN.fullmatch(value):
        raise InvalidInput(f"run URL must be an http(s) URL: {_describe(value)}")
    return value


def check_id(deployment_id: str) -> str:
    """A full deployment id (its time is not checked: it names something recorded)."""
    if not _ID_PATTERN.fullmatch(deployment_id) or not _TAG_PATTERN.fullmatch(deployment_id):
        raise InvalidInput(
            f"deployment id must look like BRANCH_SHA7_YYYYmmddHHMMSS: {_describe(deployment_id)}"
        )
    return deployment_id


def _is_full_id(value: str) -> bool:
    return bool(_ID_PATTERN.fullmatch(value))


def _check_time(value: str) -> str:
    if _from_iso(value) is None:
        raise InvalidInput(f"not an ISO 8601 time: {_describe(value)}")
    return value


# The grammar of each stored value that decides something or is handed on (to
# $GITHUB_OUTPUT, to the next step): anyone who can push the history may have written it.
_STORED_GRAMMAR: dict[str, Callable[[str], str]] = {
    "id": check_id,
    "environment": check_environment,
    "branch": check_branch,
    "commit_sha": check_sha,
    "image_tag": check_image_tag,
    "image_digest": check_digest,
    "deployed_at": _check_time,
    "verified_at": _check_time,
    "committed_at": _check_time,
    "run_id": check_run_id,
    "run_url": check_run_url,
    "rollback_of": check_id,
    "promoted_from": check_id,
    "replaces": check_id,
    "source_id": check_id,
    "replaces_id": check_id,
    "replaces_commit": check_sha,
}


def trusted(record: Record) -> Record:
    """`record`, once every stored value in it that decides or is handed on fits its
    grammar; one that doesn't was not written by the tracker, and is refused."""
    for name, check in _STORED_GRAMMAR.items():
        value = record.get(name)
        if value is None:
            continue
        try:
            check(value if isinstance(value, str) else repr(value))
        except InvalidInput as error:
            raise DatabaseProblem(
                f"the history was altered: deployment {_describe(str(record.get('id')))}"
                f" has a {name} the tracker never writes ({error}); refusing to use it"
            ) from None
    if record.get("status", "deployed") not in STATUSES:
        raise DatabaseProblem(
            f"the history was altered: deployment {_describe(str(record.get('id')))}"
            f" has the status {_describe(str(record['status']))}; refusing to use it"
        )
    return record


def _from_iso(text: str) -> Optional[datetime]:
    """An ISO 8601 date or time (`Z` allowed; without a zone it is UTC), or None."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_timestamp(value: str, *, name: str) -> datetime:
    """Parse an ISO 8601 time, not in the future."""
    moment = _from_iso(value)
    if moment is None:
        raise InvalidInput(f"{name} is not an ISO 8601 time: {_describe(value)}")
    if moment > utc_now() + FUTURE_TOLERANCE:
        raise InvalidInput(f"{name} is in the future: {_describe(value)}")
    return moment


def parse_since(value: str, now: datetime) -> datetime:
    """A window's start: a span back from now (`12h`, `30d`, `2w`) or an ISO 8601 date/time."""
    match = _SINCE_PATTERN.fullmatch(value.strip())
    if match:
        amount = int(match["amount"])
        if amount == 0:
            raise InvalidInput(f"since must be a span longer than zero: {_describe(value)}")
        return now - amount * _SINCE_UNITS[match["unit"]]
    start = _from_iso(value)
    if start is None:
        raise InvalidInput(
            f"since must be a span such as 30d, 12h or 2w, or an ISO 8601 date or time:"
            f" {_describe(value)}"
        )
    if start >= now:
        raise InvalidInput(f"since must be before now ({iso(now)}): {_describe(value)}")
    return start


def parse_gates(text: Optional[str]) -> dict[str, str]:
    """Parse `SOURCE:TARGET[,SOURCE:TARGET...]` into {target: source}.

    Unset or empty means the default (staging:production), so a blank CI
    variable never opens the gate by accident; only 'none' turns gates off.
    """
    text = (text or "").strip() or DEFAULT_GATES
    if text.lower() == NO_GATES:
        return {}
    gates: dict[str, str] = {}
    for pair in text.split(","):
        source, _, target = (part.strip() for part in pair.partition(":"))
        if not (
            _ENVIRONMENT_PATTERN.fullmatch(source)
            and _ENVIRONMENT_PATTERN.fullmatch(target)
            and source != target
            and target not in gates
        ):
            raise InvalidInput(
                f"gates must be SOURCE:TARGET pairs of different environments, one source"
                f" per target, separated by commas (or 'none'): {_describe(text)}"
            )
        gates[target] = source
    return gates


def sanitise_branch(branch: str) -> str:
    """The branch as it may appear in a Docker tag.

    Unsafe characters become '-'; a name too long for the tag is cut and given
    a hash of the full name, so two long branches never share a prefix tag.
    """
    part = _UNSAFE_TAG_CHARACTERS.sub("-", branch)
    part = re.sub(r"-{2,}", "-", part).lstrip(".-")
    # Judge the raw name: sanitising can shrink two long names to one short tag.
    if part and len(branch) <= MAX_BRANCH_PART:
        return part
    import hashlib

    digest = hashlib.sha256(branch.encode("utf-8")).hexdigest()[:BRANCH_HASH_LENGTH]
    keep = MAX_BRANCH_PART - BRANCH_HASH_LENGTH - 1
    return f"{part[:keep].rstrip('.-')}-{digest}".lstrip("-") or digest


def make_id(branch: str, commit_sha: str, moment: datetime) -> str:
    """`{branch}_{short_sha}_{YYYYmmddHHMMSS}` in UTC; also the image tag."""
    stamp = moment.astimezone(timezone.utc).strftime(TIMESTAMP_FORMAT)
    return f"{sanitise_branch(branch)}_{commit_sha[:SHORT_SHA_LENGTH]}_{stamp}"


def parse_id(deployment_id: str) -> tuple[str, str, datetime]:
    """Split an id into branch part, short sha and time, reading from the right."""
    check_id(deployment_id)
    match = _ID_PATTERN.fullmatch(deployment_id)
    assert match is not None
    try:
        moment = datetime.strptime(match["timestamp"], TIMESTAMP_FORMAT)
    except ValueError:
        raise InvalidInput(
            f"deployment id has an impossible time: {_describe(deployment_id)}"
        ) from None
    moment = moment.replace(tzinfo=timezone.utc)
    if moment > utc_now() + FUTURE_TOLERANCE:
        raise InvalidInput(f"deployment id's time is in the future: {deployment_id}")
    return match["branch"], match["sha"], moment


class RecordRequest(NamedTuple):
    """What `record` is asked to store, as one value. `checked()` validates it whole, once,
    at the edge; the data layer trusts a checked request. A rollback (`rollback_of`) or a
    promotion (`promoted_from`) takes branch, commit and image (tag and digest) from the
    deployment it names."""

    environment: str
    branch: Optional[str] = None
    commit_sha: Optional[str] = None
    image_tag: Optional[str] = None
    image_digest: Optional[str] = None
    deployment_id: Optional[str] = None
    status: str = "deployed"
    actor: Optional[str] = None
    run_id: Optional[str] = None
    run_url: Optional[str] = None
    rollback_of: Optional[str] = None
    note: Optional[str] = None
    committed_at: Optional[str] = None
    promoted_from: Optional[str] = None
    # Why it was deployed past a promotion gate, when someone said.
    gate_reason: Optional[str] = None

    def checked(self) -> RecordRequest:
        """This request if every field and their combination is valid (InvalidInput if
        not), with the commit time normalised to ISO 8601 UTC."""
        check_environment(self.environment)
        if self.status not in RECORD_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(RECORD_STATUSES)}")
        for value, check in (
            (self.branch, check_branch),
            (self.commit_sha, check_sha),
            (self.image_tag, check_image_tag),
            (self.image_digest, check_digest),
            (self.deployment_id, parse_id),
            (self.actor, lambda value: check_text("actor", value)),
            (self.run_id, check_run_id),
            (self.run_url, check_run_url),
            (self.rollback_of, check_id),
            (self.promoted_from, check_id),
            (self.note, lambda value: check_text("note", value, multiline=True)),
            (self.gate_reason, lambda value: check_text("reason", value)),
        ):
            if value is not None:
                check(value)
        if self.rollback_of is not None and self.promoted_from is not None:
            raise InvalidInput("a deployment is a rollback or a promotion, not both")
        if (
            self.rollback_of is None
            and self.promoted_from is None
            and not (self.branch and self.commit_sha)
        ):
            raise InvalidInput(
                "--branch and --commit are required (unless --rollback-of or --promoted-from"
                " is given)"
            )
        if self.deployment_id is not None and self.commit_sha is not None:
            id_sha = parse_id(self.deployment_id)[1]
            if not self.commit_sha.startswith(id_sha):
                raise InvalidInput(
                    f"deployment id {self.deployment_id} names commit {id_sha},"
                    f" not {self.commit_sha[:SHORT_SHA_LENGTH]}"
                )
        if self.committed_at is None:
            return self
        return self._replace(
            committed_at=iso(parse_timestamp(self.committed_at, name="commit time"))
        )


# ==========================================================================
# Connection and transactions
# ==========================================================================


def connect(
    path: str,
    *,
    write: bool,
    max_bytes: int = MAX_DATABASE_BYTES,
    deadline_seconds: float = QUERY_DEADLINE_SECONDS,
) -> sqlite3.Connection:
    """Open the database, creating and migrating it only for a write.

    Reading never creates a file, and never changes one: a file an older
    version wrote is read through a migrated in-memory copy. A file that is not
    ours (another schema, an extra trigger or view), too large, or from a newer
    version of this tool is refused before anything runs on it; every query
    runs under a deadline.
    """
    # The path as pathlib would see it (no trailing '/'; '' is the current
    # folder), without importing pathlib: start-up time counts.
    location = path.rstrip("/" + os.sep) or (path[:1] if path else ".")
    if os.path.isdir(location):
        raise DatabaseProblem(f"database path is a directory: {path}")
    exists = os.path.exists(location)
    if not exists and not write:
        raise DatabaseProblem(f"no database at {path} (record a deployment first, or pass --db)")
    if exists and os.path.getsize(location) > max_bytes:
        raise DatabaseProblem(
            f"{path} is {os.path.getsize(location):,} bytes, more than the {max_bytes:,}"
            " a deployment database may hold; refusing to open it"
        )
    try:
        if write:
            if not exists:
                from pathlib import Path

                Path(location).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        else:
            # mode=rw never creates the file; SQLite falls back to read-only
            # by itself when the file is write-protected.
            db = _open_uri(location, "mode=rw")
    except (sqlite3.Error, OSError) as error:
        raise DatabaseProblem(f"cannot open database {path}: {error}") from None
    _set_deadline(db, deadline_seconds)
    try:
        return _checked(db, path, write=write, deadline_seconds=deadline_seconds)
    except DatabaseProblem:
        db.close()
        if (
            write
            or not os.path.exists(location)
            or os.access(os.path.dirname(location) or ".", os.W_OK)
        ):
            raise
        return _open_immutable(location, path, deadline_seconds)
    except BaseException:
        db.close()
        raise


def _checked(
    db: sqlite3.Connection, path: str, *, write: bool, deadline_seconds: float
) -> sqlite3.Connection:
    """`db` once its schema is checked; for reading an older schema, a migrated copy."""
    try:
        _check_schema(db, path, write=write)
    except _OlderSchema:
        return _migrated_copy(db, deadline_seconds)
    return db


def _open_immutable(location: str, path: str, deadline_seconds: float) -> sqlite3.Connection:
    """A WAL database in a read-only folder cannot get its -shm file; as nobody can
    write there either, reading it as immutable is safe, unless commits still sit in
    the -wal file (immutable skips them)."""
    wal = f"{location}-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise DatabaseProblem(
            f"{wal} holds commits not yet in {path} and the folder is read-only;"
            " open it once where it is writable"
        ) from None
    db = _open_uri(location, "mode=ro&immutable=1")
    _set_deadline(db, deadline_seconds)
    try:
        return _checked(db, path, write=False, deadline_seconds=deadline_seconds)
    except BaseException:
        db.close()
        raise


def _open_uri(location: str, query: str) -> sqlite3.Connection:
    """Open `location` by a file: URI, as pathlib's resolve().as_uri() would spell it."""
    if os.name == "nt":
        from pathlib import Path

        address = Path(location).resolve().as_uri()
    else:
        absolute = os.fsencode(os.path.realpath(location))
        address = "file://" + "".join(
            chr(byte) if byte in _URI_SAFE_BYTES else f"%{byte:02X}" for byte in absolute
        )
    uri = f"{address}?{query}"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)


def _set_deadline(db: sqlite3.Connection, seconds: float) -> None:
    """Interrupt any statement still running `seconds` after the connection opened."""
    import time

    limit = time.monotonic() + seconds

    def past_deadline() -> int:
        return 1 if time.monotonic() > limit else 0

    db.set_progress_handler(past_deadline, 20_000)


class _OlderSchema(DatabaseProblem):
    """An older schema, opened for reading: read a private migrated copy."""


def _migrated_copy(db: sqlite3.Connection, deadline_seconds: float) -> sqlite3.Connection:
    """An in-memory copy of `db` (already checked) brought to the current schema: reads of
    a history an older version wrote always work, and the file stays as it is."""
    copy = sqlite3.connect(":memory:", isolation_level=None)
    try:
        db.backup(copy)
        migrate(copy)
    except sqlite3.Error as error:
        copy.close()
        raise DatabaseProblem(f"cannot read an upgraded copy of the database: {error}") from None
    finally:
        db.close()
    _set_deadline(copy, deadline_seconds)
    return copy


def _check_schema(db: sqlite3.Connection, path: str, *, write: bool) -> None:
    try:
        # Functions in a crafted schema (views, triggers, defaults) must not run.
        db.execute("PRAGMA trusted_schema = OFF")
        # One statement, so one snapshot: another process may be creating the
        # schema between two separate reads.
        application_id, version, listing = db.execute(_SELECT_SCHEMA_STATE).fetchone()
    except sqlite3.OperationalError as error:
        # I/O, permissions or a full disk: the file may be fine, so don't call it broken.
        raise DatabaseProblem(f"cannot use database {path}: {error}") from None
    except sqlite3.DatabaseError as error:
        raise DatabaseProblem(f"{path} is not a readable deployment database ({error})") from None
    if application_id not in (0, APPLICATION_ID) or (
        application_id == 0 and version == 0 and listing
    ):
        raise DatabaseProblem(f"{path} is a SQLite database, but not a deployment database")
    if version > len(MIGRATIONS):
        raise DatabaseProblem(
            f"{path} has schema version {version}, newer than this tool knows"
            f" ({len(MIGRATIONS)}): a newer deployment-tracker wrote it; pin a release with"
            f" schema {version} or later (README: Releases)"
        )
    shown = _normalised_schema(listing)
    current = version == len(MIGRATIONS) and shown == _SCHEMA
    if listing and not current and shown != _expected_schema(version):
        raise DatabaseProblem(
            f"{path} does not have exactly the schema of version {version} (an extra"
            " or changed table, index, view or trigger); refusing to use it"
        )
    if version == len(MIGRATIONS):
        if write:
            _prepare_for_writes(db, path)
        return
    if not write:
        raise _OlderSchema(path)
    _prepare_for_writes(db, path)
    try:
        migrate(db)
    except sqlite3.Error as error:
        raise DatabaseProblem(f"cannot upgrade {path}: {error}") from None


def _prepare_for_writes(db: sqlite3.Connection, path: str) -> None:
    """WAL with a busy timeout lets writers queue instead of failing."""
    try:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            _switch_to_wal(db)
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as error:
        raise DatabaseProblem(f"cannot write to {path}: {error}") from None


def _switch_to_wal(db: sqlite3.Connection) -> None:
    """Switch a new database to WAL, waiting out other processes doing the same.

    The switch needs an exclusive lock and SQLite answers "locked" at once
    instead of calling the busy handler, so the wait is done here.
    """
    import time

    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One BEGIN IMMEDIATE transaction: all of the block's writes, or none."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


# ==========================================================================
# Data layer: records
# ==========================================================================


def _row_to_record(row: Sequence[Any]) -> Record:
    record = dict(zip(FIELDS, row))
    record["blocked"] = bool(record["blocked"])
    record["gate_bypassed"] = bool(record["gate_bypassed"])
    return record


def _find(db: sqlite3.Connection, deployment_id: str) -> Optional[Record]:
    row = db.execute(_SELECT_BY_ID, (deployment_id,)).fetchone()
    return _row_to_record(row) if row else None


def get_deployment(db: sqlite3.Connection, deployment_id: str) -> Record:
    record = _find(db, deployment_id)
    if record is None:
        raise NotFound(f"no deployment with id {deployment_id}")
    return record


def resolve_id(
    db: sqlite3.Connection,
    given: str,
    environment: Optional[str] = None,
    *,
    exact: bool = False,
) -> str:
    """The one deployment `given` names. A full id names itself (with `exact`,
    only a full id is accepted); hex is a commit (a short or full sha), never
    the start of an id, so a branch named like a sha can't stand in for it;
    anything else is the unique start of an id. With `environment`, the match
    is searched there, and one that exists only elsewhere is refused."""
    if exact or _is_full_id(given):
        record = _find(db, given)
        if record is None:
            raise NotFound(f"no deployment with id {given}")
        _check_environment_of(given, record["environment"], environment)
        return given
    is_commit = bool(_SHA_PATTERN.fullmatch(given))
    if not is_commit:
        record = _find(db, given)
        if record is not None:
            _check_environment_of(given, record["environment"], environment)
            return given
    query = _SELECT_IDS_OF_COMMIT if is_commit else _SELECT_IDS_WITH_PREFIX
    what = "a commit" if is_commit else "an id"
    limit = 11
    parameters = {"prefix": given, "environment": environment, "limit": limit}
    rows = db.execute(query, parameters).fetchall()
    if not rows and environment is not None:
        elsewhere = db.execute(query, {**parameters, "environment": None}).fetchall()
        if elsewhere:
            places = ", ".join(sorted({row[1] for row in elsewhere}))
            raise Refused(
                f"no deployment in {environment} has {what} starting with {given}"
                f" (it matches in {places})"
            )
    if not rows:
        where = f" in {environment}" if environment else ""
        raise NotFound(f"no deployment{where} has {what} starting with {given}")
    if len(rows) > 1:
        shown = ", ".join(row[0] for row in rows[: limit - 1])
        more = " and more" if len(rows) == limit else ""
        raise Refused(f"{given} is ambiguous: it matches {shown}{more}")
    found: str = rows[0][0]
    return found


def _check_environment_of(deployment_id: str, found: str, wanted: Optional[str]) -> None:
    if wanted is not None and found != wanted:
        raise Refused(f"{deployment_id} is in {found}, not {wanted}")


def events(db: sqlite3.Connection, deployment_id: str) -> list[Record]:
    return [dict(zip(EVENT_FIELDS, row)) for row in db.execute(_SELECT_EVENTS, (deployment_id,))]


def _add_event(
    db: sqlite3.Connection,
    deployment_id: str,
    status: str,
    at: str,
    by: Optional[str],
    note: Optional[str],
) -> None:
    db.execute(
        _INSERT_EVENT,
        {"deployment_id": deployment_id, "status": status, "at": at, "by": by, "note": note},
    )


def running(db: sqlite3.Connection, environment: str) -> Optional[Record]:
    """The deployment running in an environment: the newest one recorded."""
    row = db.execute(_SELECT_RUNNING, (environment,)).fetchone()
    return _row_to_record(row) if row else None


def record_deployment(
    db: sqlite3.Connection,
    request: RecordRequest,
    *,
    gates: dict[str, str],
    now: Optional[datetime] = None,
) -> tuple[Record, bool, Optional[str]]:
    """Record a deployment that happened; returns it, whether it was new, and the
    objection of the promotion gate it went past (None if none).

    Recording the same id again with the same fields is a success that changes
    nothing, so a retried CI step is safe. A rollback marks the deployment it
    replaces as rolled back. The gate (`gates`: target -> source) never refuses
    a fact: a deployment it would have kept out is stored with a
    `gate_bypassed` event. Gates are enforced where the decision to deploy is
    made: `promotion_candidate` and the workflow.
    """
    moment = now or utc_now()
    with transaction(db):
        record = _new_row(db, request, moment)
        is_rollback = request.rollback_of is not None
        existing = _find(db, record["id"])
        if existing is not None:
            _check_same_call(db, existing, record)
            return existing, False, None
        current = running(db, request.environment)
        record["replaces"] = current["id"] if current else None
        replaced = current if is_rollback else None
        if replaced is not None and replaced["id"] == request.rollback_of:
            raise Refused(f"{request.rollback_of} is what is running in {request.environment} now")
        # A rollback redeploys what this environment already ran: no gate.
        objection = None if is_rollback else gate_objection(db, record, gates)
        record["gate_bypassed"] = objection is not None
        db.execute(_INSERT_DEPLOYMENT, record)
        _add_event(
            db,
            record["id"],
            record["status"],
            record["deployed_at"],
            record["actor"],
            record["note"],
        )
        if objection is not None:
            reason = f"; reason given: {request.gate_reason}" if request.gate_reason else ""
            _add_event(
                db,
                record["id"],
                GATE_BYPASSED_EVENT,
                record["deployed_at"],
                record["actor"],
                objection + reason,
            )
        if replaced is not None and replaced["status"] in ("deployed", "verified"):
            db.execute(
                "UPDATE deployments SET status = 'rolled_back' WHERE id = ?", (replaced["id"],)
            )
            _add_event(
                db,
                replaced["id"],
                "rolled_back",
                record["deployed_at"],
                record["actor"],
                f"replaced by rollback {record['id']} to {request.rollback_of}",
            )
    return record, True, objection


def _new_row(db: sqlite3.Connection, request: RecordRequest, moment: datetime) -> Record:
    """The row `request` stores, with what a rollback or promotion takes from its source."""
    branch, commit_sha, image_tag = request.branch, request.commit_sha, request.image_tag
    image_digest = request.image_digest
    source = None
    if request.rollback_of is not None:
        source = _find(db, request.rollback_of)
        if source is None:
            raise NotFound(f"rollback target {request.rollback_of} does not exist")
        if source["environment"] != request.environment:
            raise Refused(
                f"rollback target {request.rollback_of} is in {source['environment']},"
                f" not {request.environment}"
            )
    if request.promoted_from is not None:
        source = promotion_source(db, request.promoted_from, request.environment)
    if source is not None:
        if image_tag is not None and image_tag != source["image_tag"]:
            raise InvalidInput(
                f"this deployment redeploys the image of {source['id']}"
                f" ({source['image_tag']}), not {image_tag}"
            )
        if image_digest is not None and image_digest != source["image_digest"]:
            raise InvalidInput(
                f"this deployment redeploys the image of {source['id']}"
                f" (digest {source['image_digest'] or 'unknown'}), not {image_digest}"
            )
        branch = branch or source["branch"]
        commit_sha = commit_sha or source["commit_sha"]
        image_tag = source["image_tag"]
        image_digest = source["image_digest"]
    assert branch is not None and commit_sha is not None
    deployment_id = request.deployment_id or make_id(branch, commit_sha, moment)
    record: Record = dict.fromkeys(FIELDS)
    record.update(
        id=deployment_id,
        environment=request.environment,
        branch=branch,
        commit_sha=commit_sha,
        image_tag=image_tag or deployment_id,
        image_digest=image_digest,
        status=request.status,
        deployed_at=iso(moment),
        actor=request.actor,
        run_id=request.run_id,
        run_url=request.run_url,
        rollback_of=request.rollback_of,
        note=request.note,
        committed_at=request.committed_at,
        promoted_from=request.promoted_from,
        blocked=False,
        gate_bypassed=False,
    )
    return record


def _check_same_call(db: sqlite3.Connection, existing: Record, record: Record) -> None:
    """A repeated `record` of an id must repeat what was recorded."""
    first_status = db.execute(_SELECT_FIRST_STATUS, (existing["id"],)).fetchone()
    differing = [field for field in _IDENTITY_FIELDS if existing[field] != record[field]]
    if first_status and first_status[0] != record["status"]:
        differing.append("status")
    if differing:
        raise Refused(
            f"deployment {existing['id']} is already recorded with a different"
            f" {', '.join(differing)}"
        )


def verify_deployment(
    db: sqlite3.Connection,
    deployment_id: str,
    status: str,
    *,
    by: Optional[str] = None,
    note: Optional[str] = None,
    now: Optional[datetime] = None,
) -> tuple[Record, bool]:
    """Record a verification result; returns the record and whether it changed."""
    at = iso(now or utc_now())
    with transaction(db):
        record = get_deployment(db, deployment_id)
        if record["status"] == status:
            return record, False
        if status not in _TRANSITIONS[record["status"]]:
            raise Refused(
                f"deployment {deployment_id} is {record['status']}; it cannot become {status}"
            )
        db.execute(
            "UPDATE deployments SET status = ?, verified_at = ?, verified_by = ? WHERE id = ?",
            (status, at, by, deployment_id),
        )
        _add_event(db, deployment_id, status, at, by, note)
    record.update(status=status, verified_at=at, verified_by=by)
    return record, True


Statuses = Union[str, Sequence[str], None]  # one status, several, or any


def _list_conditions(
    environment: Optional[str],
    branch: Optional[str],
    status: Statuses,
    since: Optional[datetime],
) -> tuple[str, list[Any]]:
    conditions = []
    parameters: list[Any] = []
    for column, value in (("environment", environment), ("branch", branch)):
        if value is not None:
            conditions.append(f"{column} = ?")
            parameters.append(value)
    statuses = [status] if isinstance(status, str) else list(status or ())
    if len(statuses) == 1:
        conditions.append("status = ?")
    elif statuses:
        conditions.append(f"status IN ({', '.join('?' * len(statuses))})")
    parameters.extend(statuses)
    if since is not None:
        conditions.append("deployed_at >= ?")
        parameters.append(iso(since))
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), parameters


def list_deployments(
    db: sqlite3.Connection,
    *,
    environment: Optional[str] = None,
    branch: Optional[str] = None,
    status: Statuses = None,
    since: Optional[datetime] = None,
    limit: Optional[int] = DEFAULT_LIST_LIMIT,
) -> Iterator[Record]:
    """Deployments newest first, streamed from the database; `status`: one or
    several (any of them); `since`: only those recorded at or after that moment."""
    where, parameters = _list_conditions(environment, branch, status, since)
    sql = _SELECT_DEPLOYMENT + where + " ORDER BY seq DESC"
    if limit is not None:
        sql += " LIMIT ?"
        parameters.append(limit)
    for row in db.execute(sql, parameters):
        yield _row_to_record(row)


def count_deployments(
    db: sqlite3.Connection,
    *,
    environment: Optional[str] = None,
    branch: Optional[str] = None,
    status: Statuses = None,
    since: Optional[datetime] = None,
) -> int:
    where, parameters = _list_conditions(environment, branch, status, since)
    sql = "SELECT count(*) FROM deployments" + where  # noqa: S608 (constant conditions)
    count: int = db.execute(sql, parameters).fetchone()[0]
    return count


def _latest_with_status(db: sqlite3.Connection, environment: str, status: str) -> Optional[Record]:
    row = db.execute(_SELECT_LATEST_WITH_STATUS, (environment, status)).fetchone()
    return _row_to_record(row) if row else None


def latest(db: sqlite3.Connection, environment: str, status: str = "verified") -> Record:
    if status == "any":
        record = running(db, environment)
    else:
        record = _latest_with_status(db, environment, status)
    if record is None:
        qualifier = "" if status == "any" else f"{status} "
        current = None if status == "any" else running(db, environment)
        runs = (
            f" ({current['id']}, {current['status']}, runs there: --status any shows it)"
            if current
            else ""
        )
        raise NotFound(f"no {qualifier}deployment in {environment}{runs}")
    return record


def rollback_target(
    db: sqlite3.Connection,
    environment: str,
    deployment_id: Optional[str] = None,
    *,
    force: bool = False,
) -> tuple[Record, list[str]]:
    """The deployment to roll back to, and what `force` let through.

    Without an id: the latest verified, unblocked deployment whose image
    differs from the running one. With an id: that deployment, which must be in
    the environment, have been verified and not be blocked (`force` accepts
    these problems; they are returned for a warning). Either way the answer is
    the deployment that first shipped that image in the environment, so a
    rollback names the original, not an earlier rollback to it.
    """
    current = running(db, environment)
    if current is None:
        raise NotFound(f"no deployments in {environment}")
    if deployment_id is None:
        row = db.execute(_SELECT_ROLLBACK_CANDIDATE, (environment, current["image_tag"])).fetchone()
        if row is None:
            raise NotFound(_nothing_earlier(db, current))
        return _first_shipped(db, _row_to_record(row)), []
    target = get_deployment(db, deployment_id)
    if target["environment"] != environment:
        raise Refused(
            f"deployment {deployment_id} is in {target['environment']}, not {environment}"
        )
    if target["image_tag"] == current["image_tag"]:
        raise Refused(
            f"{environment} already runs image {target['image_tag']} of deployment"
            f" {deployment_id} (running: {current['id']}); nothing to roll back"
        )
    problems = []
    if target["verified_at"] is None or target["status"] not in ("verified", "rolled_back"):
        problems.append(f"was never verified (status {target['status']})")
    if target["blocked"]:
        problems.append(f"is blocked ({target['blocked_reason']})")
    if problems and not force:
        raise Refused(f"deployment {deployment_id} {' and '.join(problems)}")
    return (_first_shipped(db, target) if not problems else target), problems


def _nothing_earlier(db: sqlite3.Connection, current: Record) -> str:
    """Why an environment has no rollback target: nothing verified (and unblocked),
    or only what runs there now."""
    environment = current["environment"]
    verified = [row[0] for row in db.execute(_SELECT_NEWEST_VERIFIED_IDS, (environment,))]
    if not verified:
        return f"no verified deployment in {environment} to roll back to (running: {current['id']})"
    if verified == [current["id"]]:
        return (
            f"the only verified, unblocked deployment in {environment}, {current['id']}, is the"
            " one running now; nothing earlier to roll back to"
        )
    return (
        f"every verified, unblocked deployment in {environment} has the image running now,"
        f" {current['image_tag']} (running: {current['id']}); nothing earlier to roll back to"
    )


def rollback_undoes(db: sqlite3.Connection, target: Record, limit: int = 50) -> list[Record]:
    """The deployments a rollback to `target`'s image undoes, newest (running) first: those
    recorded in its environment after the last one that ran that image."""
    parameters = {
        "environment": target["environment"],
        "image_tag": target["image_tag"],
        "limit": limit,
    }
    return [_row_to_record(row) for row in db.execute(_SELECT_UNDONE, parameters)]


def _first_shipped(db: sqlite3.Connection, record: Record) -> Record:
    row = db.execute(_SELECT_FIRST_SHIPPED, (record["environment"], record["image_tag"])).fetchone()
    first = _row_to_record(row) if row else record
    return record if first["blocked"] else first


def settle(db: sqlite3.Connection, deployment_id: str, stage: str) -> tuple[Optional[Record], str]:
    """What a workflow job does for the deployment its run recorded before the rollout:
    the record to act on (None: nothing to do) and why, decided from the history alone,
    so that a job re-run after its run finished does no harm.

    `deploy` and `verify` act on the deployment while it is what runs and nothing has
    settled it. `rollback` restores exactly the release it replaced (what ran when it was
    recorded), while it runs and was not verified; a replaced release that was never
    verified, or is blocked, is refused: that rollback is a person's decision.
    """
    record = get_deployment(db, deployment_id)
    environment = record["environment"]
    current = running(db, environment)
    assert current is not None  # the record itself is in the environment
    if current["id"] != deployment_id:
        return None, f"{deployment_id} no longer runs in {environment} (now: {current['id']})"
    status = record["status"]
    if stage in ("deploy", "verify"):
        if status != "deployed":
            return None, f"{deployment_id} is already {status}"
        return record, f"{stage} {deployment_id}"
    if status in ("verified", "rolled_back"):
        return None, f"{deployment_id} is {status}: nothing to roll back"
    replaced_id = record["replaces"]
    if replaced_id is None:
        return None, f"nothing ran in {environment} before {deployment_id}: nothing to restore"
    replaced = _find(db, replaced_id)
    if replaced is None:
        raise Refused(
            f"{deployment_id} replaced {replaced_id}, which is no longer in the history;"
            f" roll {environment} back by hand"
        )
    if replaced["verified_at"] is None:
        raise Refused(
            f"{deployment_id} replaced {replaced_id}, which was never verified (status"
            f" {replaced['status']}); roll {environment} back by hand"
        )
    if replaced["blocked"]:
        raise Refused(
            f"{deployment_id} replaced {replaced_id}, which is blocked"
            f" ({replaced['blocked_reason']}); roll {environment} back by hand"
        )
    target = _first_shipped(db, replaced)
    return target, f"restore {target['id']}, which {deployment_id} replaced"


# ==========================================================================
# Data layer: control (promotion gates, promote, block, prune)
# ==========================================================================


def gate_objection(db: sqlite3.Connection, record: Record, gates: dict[str, str]) -> Optional[str]:
    """Why the gate would keep `record` out of its environment; None if it may enter."""
    source = gates.get(record["environment"])
    if source is None or db.execute(_SELECT_GATE_PASS, (source, record["image_tag"])).fetchone():
        return None
    objection = (
        f"{record['environment']} only receives images verified in {source}:"
        f" image {record['image_tag']} has no verified, unblocked {source} deployment"
    )
    row = db.execute(_SELECT_VERIFIED_COMMIT, (record["commit_sha"], source)).fetchone()
    if row is not None:
        objection += (
            f" (commit {record['commit_sha'][:SHORT_SHA_LENGTH]} was verified there"
            f" as image {_row_to_record(row)['image_tag']})"
        )
    return objection


def promotion_source(db: sqlite3.Connection, source_id: str, environment: str) -> Record:
    """The deployment a promotion into `environment` reuses: verified and not blocked."""
    source = _find(db, source_id)
    if source is None:
        raise NotFound(f"no deployment with id {source_id} to promote")
    if source["environment"] == environment:
        raise Refused(f"deployment {source_id} is already in {environment}")
    if source["status"] != "verified":
        raise Refused(
            f"deployment {source_id} is {source['status']}; only a verified one can be promoted"
        )
    if source["blocked"]:
        raise Refused(f"deployment {source_id} is blocked ({source['blocked_reason']})")
    return source


def promotion_candidate(
    db: sqlite3.Connection,
    source: str,
    target: str,
    *,
    deployment_id: Optional[str] = None,
    commit_sha: Optional[str] = None,
) -> Record:
    """What to promote from `source` to `target`, reusing its image.

    With an id: that deployment, which must be in `source`, verified and
    unblocked. With a commit: the latest verified, unblocked deployment of
    that commit in `source`. With neither: the latest verified, unblocked one
    in `source`. Either way its image must not be what `target` runs now.
    """
    if source == target:
        raise InvalidInput(f"--from and --to must be different environments: {source}")
    if deployment_id is not None:
        candidate = get_deployment(db, deployment_id)
        if candidate["environment"] != source:
            raise Refused(
                f"deployment {deployment_id} is in {candidate['environment']}, not {source}"
            )
        candidate = promotion_source(db, deployment_id, target)
    elif commit_sha is not None:
        candidate = _verified_deployment_of(db, commit_sha, source)
    else:
        row = db.execute(_SELECT_PROMOTION_CANDIDATE, (source,)).fetchone()
        if row is None:
            raise NotFound(f"no verified, unblocked deployment in {source} to promote")
        candidate = _row_to_record(row)
    current = running(db, target)
    if current is not None and current["image_tag"] == candidate["image_tag"]:
        raise Refused(
            f"{target} already runs image {candidate['image_tag']} (deployment {current['id']})"
        )
    return candidate


class PlanRequest(NamedTuple):
    """What a workflow run was asked: checked by click as it parses."""

    environment: str
    rollback: bool
    deployment_id: Optional[str]  # a whole id: what to restore or to promote
    branch: str  # the run's branch and commit
    commit_sha: str
    repository: str  # where the images are (REGISTRY/NAME), lowercase


def plan_run(
    db: sqlite3.Connection,
    request: PlanRequest,
    *,
    gates: dict[str, str],
    now: Optional[datetime] = None,
) -> Record:
    """What a run does, decided from the history and its inputs, before anything changes.

    A rollback redeploys `rollback_target`'s image. An environment that
    promotions reach (a gate's target, or production from staging with the gates
    off) gets the verified image of the chosen deployment, or of the run's
    commit; without one, a gated environment refuses and an ungated one builds
    the commit. Anything else builds and deploys the commit. The new
    deployment's id names the commit of the image it runs.
    """
    environment = request.environment
    source = gates.get(environment) or parse_gates(None).get(environment)
    chosen = request.deployment_id
    current = running(db, environment)

    def planned(mode: str, case: str, image_source: Optional[Record]) -> Record:
        return _planned(mode, case, request, image_source, current, now)

    if request.rollback:
        target, _ = rollback_target(db, environment, chosen)
        return planned("rollback", "rollback", target)
    if chosen is not None and source is None:
        raise InvalidInput(
            f"a deployment id is for a rollback, or a promotion into an environment that"
            f" promotions reach; {environment} builds what it deploys"
        )
    if source is None:
        return planned("deploy", "push", None)
    if chosen is not None:
        candidate = promotion_candidate(db, source, environment, deployment_id=chosen)
        return planned("promote", "chosen", candidate)
    try:
        candidate = promotion_candidate(db, source, environment, commit_sha=request.commit_sha)
    except NotFound as error:
        if gates.get(environment) is not None:
            raise gate_refusal(error, source, environment, request.commit_sha) from None
        return planned("deploy", "ungated", None)
    return planned("promote", "commit", candidate)


def gate_refusal(error: NotFound, source: str, target: str, commit_sha: str) -> NotFound:
    """A commit with no verified `source` deployment, where a gate requires one: the ways on."""
    return NotFound(
        f"{error}, and the {source}:{target} gate requires one: deploy commit"
        f" {commit_sha} to {source} first, promote a verified {source}"
        f" deployment by its id, or turn the gate off ({GATES_ENV_VAR}=none)"
    )


def _planned(
    mode: str,
    case: str,
    request: PlanRequest,
    source: Optional[Record],
    current: Optional[Record],
    now: Optional[datetime],
) -> Record:
    """The plan's values, as the workflow's later jobs read them (`current`: what runs now)."""
    branch = source["branch"] if source else request.branch
    commit_sha = source["commit_sha"] if source else request.commit_sha
    deployment_id = make_id(branch, commit_sha, now or utc_now())
    image_tag = source["image_tag"] if source else deployment_id
    return {
        "mode": mode,
        "case": case,
        "environment": request.environment,
        "id": deployment_id,
        "branch": branch,
        "commit_sha": commit_sha,
        "image_tag": image_tag,
        "repository": request.repository,
        "image": f"{request.repository}:{image_tag}",
        "image_digest": source["image_digest"] if source else None,
        "source_id": source["id"] if source else None,
        "source_actor": source["actor"] if source else None,
        "source_verified_by": source["verified_by"] if source else None,
        "source_verified_at": source["verified_at"] if source else None,
        "replaces_id": current["id"] if current else None,
        "replaces_commit": current["commit_sha"] if current else None,
        "replaces_image": _image_reference(request.repository, current) if current else None,
    }


def _image_reference(repository: str, record: Record) -> str:
    digest = record["image_digest"]
    return f"{repository}:{record['image_tag']}" + (f"@{digest}" if digest else "")


def _verified_deployment_of(db: sqlite3.Connection, commit_sha: str, environment: str) -> Record:
    """The latest verified, unblocked deployment of a commit (given whole or by a
    prefix that names one commit) in an environment."""
    parameters = {"prefix": commit_sha, "environment": environment}
    rows = [_row_to_record(row) for row in db.execute(_SELECT_VERIFIED_COMMIT_PREFIX, parameters)]
    commits = sorted({row["commit_sha"] for row in rows})
    if len(commits) > 1:
        raise Refused(f"commit {commit_sha} is ambiguous: it matches {', '.join(commits)}")
    if not rows:
        raise NotFound(
            f"commit {commit_sha} has no verified, unblocked deployment in {environment}"
        )
    return rows[0]


def block_deployment(
    db: sqlite3.Connection,
    deployment_id: str,
    *,
    reason: str,
    by: Optional[str] = None,
    now: Optional[datetime] = None,
) -> tuple[Record, bool]:
    """Mark a deployment bad so nothing picks it; returns it and whether it changed.

    Blocking a blocked deployment changes nothing (its first reason stays).
    """
    at = iso(now or utc_now())
    with transaction(db):
        record = get_deployment(db, deployment_id)
        if record["blocked"]:
            return record, False
        db.execute(
            "UPDATE deployments SET blocked = 1, blocked_at = ?, blocked_by = ?,"
            " blocked_reason = ? WHERE id = ?",
            (at, by, reason, deployment_id),
        )
        _add_event(db, deployment_id, BLOCKED_EVENT, at, by, reason)
    record.update(blocked=True, blocked_at=at, blocked_by=by, blocked_reason=reason)
    return record, True


def unblock_deployment(
    db: sqlite3.Connection,
    deployment_id: str,
    *,
    by: Optional[str] = None,
    reason: Optional[str] = None,
    now: Optional[datetime] = None,
) -> tuple[Record, bool]:
    """Lift a block; unblocking a deployment that is not blocked changes nothing."""
    at = iso(now or utc_now())
    with transaction(db):
        record = get_deployment(db, deployment_id)
        if not record["blocked"]:
            return record, False
        db.execute(
            "UPDATE deployments SET blocked = 0, blocked_at = NULL, blocked_by = NULL,"
            " blocked_reason = NULL WHERE id = ?",
            (deployment_id,),
        )
        _add_event(db, deployment_id, UNBLOCKED_EVENT, at, by, reason)
    record.update(blocked=False, blocked_at=None, blocked_by=None, blocked_reason=None)
    return record, True


def plan_prune(
    db: sqlite3.Connection, keep: int, environment: Optional[str] = None
) -> list[Record]:
    """The deployments a prune removes, newest first.

    In each environment (or only `environment`) the newest `keep` stay, and so
    do: the running deployment, the latest verified one, the rollback
    candidate, every blocked one, and everything a staying deployment links to
    through rollback_of or promoted_from, in any environment. (What `settle`
    restores, the verified release the running one replaced, is the latest
    verified one while the running one is not.) Links always
    point to older deployments, so one pass from the newest finds them all.
    """
    seen: dict[str, int] = {}
    running_image: dict[str, str] = {}
    latest_verified: set[str] = set()
    rollback_candidate: set[str] = set()
    linked: set[str] = set()
    doomed: list[Record] = []
    for row in db.execute(_SELECT_DEPLOYMENT + " ORDER BY seq DESC"):
        record = _row_to_record(row)
        env = record["environment"]
        seen[env] = position = seen.get(env, 0) + 1
        stays = (
            (environment is not None and env != environment)
            or position <= keep
            or position == 1
            or record["blocked"]
            or record["id"] in linked
        )
        if position == 1:
            running_image[env] = record["image_tag"]
        if record["status"] == "verified":
            if env not in latest_verified:
                latest_verified.add(env)
                stays = True
            if (
                env not in rollback_candidate
                and not record["blocked"]
                and record["image_tag"] != running_image[env]
            ):
                rollback_candidate.add(env)
                stays = True
        if stays:
            linked.update(link for link in (record["rollback_of"], record["promoted_from"]) if link)
        else:
            doomed.append(record)
    return doomed


def prune(
    db: sqlite3.Connection,
    keep: int,
    environment: Optional[str] = None,
    *,
    by: Optional[str] = None,
    now: Optional[datetime] = None,
) -> tuple[list[Record], int]:
    """Delete what `plan_prune` selects, with its events, in one transaction.

    Returns the removed deployments and how many events went with them. A
    prune that removes something is logged in the prunes table.
    """
    import json

    at = iso(now or utc_now())
    with transaction(db):
        doomed = plan_prune(db, keep, environment)
        removed_events = 0
        # Newest first: a deployment goes before the older ones it links to.
        for record in doomed:
            removed_events += db.execute(
                "DELETE FROM events WHERE deployment_id = ?", (record["id"],)
            ).rowcount
            db.execute("DELETE FROM deployments WHERE id = ?", (record["id"],))
        if doomed:
            db.execute(
                "INSERT INTO prunes (at, by, environment, keep, removed, removed_events,"
                " removed_ids) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    at,
                    by,
                    environment,
                    keep,
                    len(doomed),
                    removed_events,
                    json.dumps([record["id"] for record in doomed]),
                ),
            )
    return doomed, removed_events


def count_events(db: sqlite3.Connection, records: Iterable[Record]) -> int:
    sql = "SELECT count(*) FROM events WHERE deployment_id = ?"
    return sum(db.execute(sql, (record["id"],)).fetchone()[0] for record in records)


def prunes(db: sqlite3.Connection) -> list[Record]:
    """The log of prunes, oldest first."""
    columns = ("at", "by", "environment", "keep", "removed", "removed_events", "removed_ids")
    sql = f"SELECT {', '.join(columns)} FROM prunes ORDER BY seq"  # noqa: S608 (constant columns)
    return [dict(zip(columns, row)) for row in db.execute(sql)]


# ==========================================================================
# Data layer: insight (DORA figures, the deployments of a window, status, completion)
# ==========================================================================


def distinct_values(
    db: sqlite3.Connection, column: str, prefix: str = "", limit: int = 200
) -> list[str]:
    """The distinct values of an indexed column (environment, branch, status) that
    start with `prefix`, in order, read by hopping through the index."""
    if column not in ("environment", "branch", "status"):
        raise ValueError(column)
    sql = _SELECT_DISTINCT.format(column=column)
    return [row[0] for row in db.execute(sql, {"prefix": prefix, "limit": limit})]


def newest_ids(db: sqlite3.Connection, prefix: str = "", limit: int = 50) -> list[str]:
    """Ids that start with `prefix` (the newest ones when it is empty)."""
    if not prefix:
        return [row[0] for row in db.execute(_SELECT_NEWEST_IDS, (limit,))]
    parameters = {"prefix": prefix, "environment": None, "limit": limit}
    return [row[0] for row in db.execute(_SELECT_IDS_WITH_PREFIX, parameters)]


def _median_seconds(values: Sequence[int]) -> Optional[int]:
    import statistics

    return round(statistics.median(values)) if values else None


def deployment_stats(
    db: sqlite3.Connection,
    *,
    since: datetime,
    environment: Optional[str] = None,
    now: Optional[datetime] = None,
) -> list[Record]:
    """DORA figures per environment over the deployments made from `since` to `now`.

    A change is a deployment that is not a rollback. Frequency counts changes;
    the failure rate is changes that failed or were rolled back over changes;
    time to restore runs per failed change from its deployment to the next
    verified deployment in its environment; lead time runs from commit time to
    verification of a verified change. Durations are whole seconds.
    """
    until = now or utc_now()
    if since >= until:
        raise InvalidInput(f"since must be before now ({iso(until)}): {iso(since)}")
    names = [environment] if environment else distinct_values(db, "environment", limit=10_000)
    days = (until - since).total_seconds() / 86400
    figures = []
    for name in names:
        window = {"environment": name, "since": iso(since), "until": iso(until)}
        changes, rollbacks, failures = db.execute(_SELECT_STATS_COUNTS, window).fetchone()
        restores = [row[0] for row in db.execute(_SELECT_RESTORE_SECONDS, window)]
        restored = [seconds for seconds in restores if seconds is not None]
        lead_times = [row[0] for row in db.execute(_SELECT_LEAD_SECONDS, window)]
        figures.append(
            {
                "environment": name,
                "since": window["since"],
                "until": window["until"],
                "days": round(days, 3),
                "deployments": changes,
                "deployments_per_day": round(changes / days, 3),
                "deployments_per_week": round(changes / days * 7, 3),
                "rollbacks": rollbacks,
                "change_failures": failures,
                "change_failure_rate": round(failures / changes, 3) if changes else None,
                "restored": len(restored),
                "unrestored": len(restores) - len(restored),
                "time_to_restore_median_seconds": _median_seconds(restored),
                "time_to_restore_worst_seconds": max(restored) if restored else None,
                "lead_time_changes": len(lead_times),
                "lead_time_median_seconds": _median_seconds(lead_times),
            }
        )
    return figures


def timeline_deployments(
    db: sqlite3.Connection,
    *,
    since: datetime,
    environment: Optional[str] = None,
    now: Optional[datetime] = None,
    limit: int = HTML_MAX_DEPLOYMENTS,
) -> tuple[list[Record], int]:
    """The newest `limit` deployments made from `since` to `now`, oldest first,
    and how many there are in that window."""
    conditions = ["deployed_at >= ?", "deployed_at <= ?"]
    parameters: list[Any] = [iso(since), iso(now or utc_now())]
    if environment is not None:
        conditions.append("environment = ?")
        parameters.append(environment)
    where = " WHERE " + " AND ".join(conditions)
    count_sql = "SELECT count(*) FROM deployments" + where  # noqa: S608 (constant conditions)
    total: int = db.execute(count_sql, parameters).fetchone()[0]
    rows = db.execute(
        _SELECT_DEPLOYMENT + where + " ORDER BY seq DESC LIMIT ?", [*parameters, limit]
    )
    return [_row_to_record(row) for row in rows][::-1], total


def environment_status(db: sqlite3.Connection, environment: Optional[str] = None) -> list[Record]:
    """Per environment that has deployments (or only `environment`): what runs
    there and since when, the last verified deployment (`latest`) and the
    rollback target (`rollback_target`; None when there is none)."""
    names = [environment] if environment else distinct_values(db, "environment", limit=10_000)
    rows = []
    for name in names:
        current = running(db, name)
        if current is None:
            continue
        verified = _latest_with_status(db, name, "verified")
        try:
            target: Optional[str] = rollback_target(db, name)[0]["id"]
        except NotFound:
            target = None
        rows.append(
            {
                "environment": name,
                "id": current["id"],
                "status": current["status"],
                "branch": current["branch"],
                "image_tag": current["image_tag"],
                "since": current["deployed_at"],
                "last_verified": verified["id"] if verified else None,
                "last_verified_at": verified["verified_at"] if verified else None,
                "rollback_target": target,
            }
        )
    return rows


def rollback_targets_outside(
    db: sqlite3.Connection, records: Sequence[Record]
) -> dict[str, Record]:
    """The deployments that rollbacks among `records` restored, when not among them."""
    shown = {record["id"] for record in records}
    targets = {}
    for record in records:
        target_id = record["rollback_of"]
        if target_id and target_id not in shown and target_id not in targets:
            target = _find(db, target_id)
            if target is not None:
                targets[target_id] = target
    return targets


# ==========================================================================
# Output
# ==========================================================================
# Stored values are not trusted to be what `record` would accept: the history
# branch can be pushed by hand. Every value is escaped for where it goes.


def _escape_character(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as Python carries it
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _printable(value: Any, *, one_line: bool = True) -> str:
    """A value as text a terminal or a log shows as it is: controls (ESC starts
    escape sequences), bidi marks and undecodable bytes become visible escapes."""
    text = _shown_value(value)
    if text.isprintable():  # the usual case, and no regex to compile for it
        return text
    pattern = _UNSHOWABLE_IN_A_LINE if one_line else _UNSHOWABLE
    return pattern.sub(_escape_character, text)


def _shown_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _json_text(value: Any, *, indent: Optional[int] = None) -> str:
    """JSON that keeps non-ASCII text readable but escapes, as JSON allows, the
    characters a terminal would act on."""
    import json

    text = json.dumps(value, ensure_ascii=False, indent=indent)
    if text.isascii() and "\x7f" not in text:  # json.dumps escaped every other control
        return text
    return _UNSHOWABLE.sub(_json_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a character beyond the BMP as a surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _csv_cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text: stored text it would run as a
    formula (starting with = + - @, a tab or a CR) gets a leading '."""
    text = _printable(value, one_line=False)
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def _tsv_cell(value: Any) -> str:
    text = _shown_value(value).replace("\\", "\\\\")
    text = text.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return _printable(text)


def _age(stamp: Any, now: datetime) -> str:
    """How long ago, as people say it: `45s ago`, `3h ago`, `12d ago`."""
    moment = _parse_stored_time(stamp)
    if moment is None:
        return _printable(stamp)
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit == "d" else 1):
            if unit == "d" and seconds >= 90 * 86400:
                return stamp[:10] if isinstance(stamp, str) else _printable(stamp)
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _parse_stored_time(stamp: Any) -> Optional[datetime]:
    try:
        return datetime.strptime(str(stamp), ISO_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _marks(record: Record) -> str:
    marks = []
    if record["rollback_of"]:
        marks.append("rollback")
    if record["promoted_from"]:
        marks.append("promoted")
    if record["blocked"]:
        marks.append("BLOCKED")
    if record["gate_bypassed"]:
        marks.append("gate-bypassed")
    return ",".join(marks)


def _table_cell(column: str, record: Record, now: datetime) -> str:
    if column == "commit":
        return _printable(_shown_value(record["commit_sha"])[:SHORT_SHA_LENGTH])
    if column == "age":
        return _age(record["deployed_at"], now)
    if column == "marks":
        return _marks(record)
    if column == "image":
        # Blank would read as "no image": a deployment built for itself runs its id's tag.
        return (
            "(its id)" if record["image_tag"] == record["id"] else _printable(record["image_tag"])
        )
    if column in ("blocked", "gate_bypassed"):
        return column.upper().replace("_", "-") if record[column] else ""
    return _printable(record[column], one_line=column != "note")


class _OutputRequest(NamedTuple):
    """How a command prints: checked once, while click parses its options."""

    format: Optional[str] = None  # None: the command's default
    fields: tuple[str, ...] = ()  # --field a,b: bare values
    json_fields: tuple[str, ...] = ()  # --json a,b: JSON objects of these fields
    headers: bool = True
    wide: bool = False
    github_output: Optional[str] = None  # the $GITHUB_OUTPUT file to append to

    @property
    def chosen_format(self) -> str:
        return self.format or "table"


def _render_table(
    rows: list[list[str]], headers: list[str], table_format: str, *, tight: bool = False
) -> str:
    """`tight`: a column is as wide as its widest cell or header, not header + 2
    (tabulate's MIN_PADDING), so the default list of typical ids fits 100 columns."""
    import tabulate as tabulate_module
    from tabulate import tabulate

    if table_format == "table":
        # Without headers, 'simple' still draws a rule above and below the rows.
        table_format = "simple" if headers else "plain"
    if not headers:
        return tabulate(rows, tablefmt=table_format, disable_numparse=True)
    padding = tabulate_module.MIN_PADDING
    if tight:
        tabulate_module.MIN_PADDING = 0
    try:
        return tabulate(rows, headers=headers, tablefmt=table_format, disable_numparse=True)
    finally:
        tabulate_module.MIN_PADDING = padding


def _echo_records(
    records: Iterable[Record], output: _OutputRequest, *, fields: Sequence[str] = FIELDS
) -> int:
    """Print records as the caller asked; JSON, CSV and TSV stream. Returns how many.

    `fields`: what the records hold, deployments' by default (their table shows
    its own columns); a table of other records shows every field."""
    out = sys.stdout
    count = 0
    if output.fields:
        for count, record in enumerate(records, start=1):  # noqa: B007 (the count is returned)
            out.write("\t".join(_tsv_cell(record[field]) for field in output.fields) + "\n")
        return count
    fmt = "json" if output.json_fields else output.chosen_format
    if fmt == "json":
        # Streamed so that an unlimited list needs no more memory than a page.
        separator = "[\n  "
        for count, record in enumerate(records, start=1):  # noqa: B007 (the count is returned)
            shown = (
                {key: record[key] for key in output.json_fields} if output.json_fields else record
            )
            out.write(separator + _json_text(shown))
            separator = ",\n  "
        out.write("[]\n" if count == 0 else "\n]\n")
        return count
    if fmt in ("csv", "tsv"):
        import csv

        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            write_row: Callable[[Sequence[Any]], Any] = writer.writerow
        else:
            write_row = lambda row: out.write("\t".join(_tsv_cell(cell) for cell in row) + "\n")  # noqa: E731
        if output.headers:
            write_row(fields)
        for count, record in enumerate(records, start=1):  # noqa: B007 (the count is returned)
            if fmt == "csv":
                write_row([_csv_cell(record[field]) for field in fields])
            else:
                write_row([record[field] for field in fields])
        return count
    shown_records = list(records)
    now = utc_now()
    columns = _deployment_columns(shown_records, output) if fields == FIELDS else fields
    rows = [[_table_cell(column, record, now) for column in columns] for record in shown_records]
    headers = list(columns) if output.headers else []
    out.write(_render_table(rows, headers, fmt, tight=fmt == "table") + "\n")
    return len(shown_records)


def _deployment_columns(records: Sequence[Record], output: _OutputRequest) -> Sequence[str]:
    """A table's columns for deployments: every field (--wide), or the default
    ones, with `image` when some row's image is not its own id."""
    if output.wide:
        return FIELDS
    if any(record["image_tag"] != record["id"] for record in records):
        return (*TABLE_COLUMNS[:3], "image", *TABLE_COLUMNS[3:])
    return TABLE_COLUMNS


def _echo_preview(target: Record, undone: list[Record], output: _OutputRequest) -> None:
    """What a rollback to `target` undoes: JSON, or a few lines for people."""
    running = undone[0]["commit_sha"] if undone else target["commit_sha"]
    commits = f"{target['commit_sha'][:SHORT_SHA_LENGTH]}..{running[:SHORT_SHA_LENGTH]}"
    if output.chosen_format == "json":
        click.echo(_json_text({"target": target, "undoes": undone, "commits": commits}, indent=2))
        return
    click.echo(
        f"Rolling {target['environment']} back to {target['id']}"
        f" (commit {target['commit_sha'][:SHORT_SHA_LENGTH]}) undoes:"
    )
    for record in undone:
        click.echo(
            f"  {record['id']}  {record['status']}  {_printable(record['branch'])}"
            f"  {record['commit_sha'][:SHORT_SHA_LENGTH]}"
        )
    click.echo(f"Commits between (in a clone): git log --oneline {commits}")


def _echo_details(record: Record, history: Optional[list[Record]], output: _OutputRequest) -> None:
    """One deployment, as the caller asked: bare fields, an object, a row, or a
    field/value table followed by its events."""
    if output.fields or output.json_fields:
        if output.fields:
            click.echo("\t".join(_tsv_cell(record[field]) for field in output.fields))
        else:
            click.echo(_json_text({key: record[key] for key in output.json_fields}, indent=2))
        return
    fmt = output.chosen_format
    if fmt == "json":
        shown = record if history is None else {**record, "events": history}
        click.echo(_json_text(shown, indent=2))
        return
    if fmt in ("csv", "tsv"):
        _echo_records([record], output)
        return
    pairs = [[field, _printable(record[field], one_line=False)] for field in FIELDS]
    click.echo(_render_table(pairs, ["field", "value"] if output.headers else [], fmt))
    if history:
        click.echo()
        rows = [
            [_printable(event[field], one_line=False) for field in EVENT_FIELDS]
            for event in history
        ]
        click.echo(_render_table(rows, list(EVENT_FIELDS) if output.headers else [], fmt))


def _writable_github_output() -> str:
    """The $GITHUB_OUTPUT file, checked before anything is written anywhere: a
    record stored and then not reported would be recorded twice on a retry."""
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        raise InvalidInput("--github-output needs the GITHUB_OUTPUT environment variable")
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise InvalidInput(
            f"cannot write the GITHUB_OUTPUT file {path}: {error.strerror or error}"
        ) from None
    return path


def _write_github_output(path: str, values: Record) -> None:
    """Append values as `name<<DELIMITER` blocks, which no value can break out of,
    once each is checked: a step may write them on with a plain `echo`."""
    trusted(values)
    lines = []
    for name, value in values.items():
        text = _shown_value(value)
        # os.urandom is what secrets.token_hex reads; importing secrets costs
        # more start-up time than the whole tracker.
        delimiter = f"ghadelimiter_{os.urandom(16).hex()}"
        while delimiter in text:
            delimiter = f"ghadelimiter_{os.urandom(16).hex()}"
        lines.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
    try:
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as output:
            output.write("".join(lines))
    except OSError as error:
        raise TrackerError(f"cannot write GITHUB_OUTPUT file {path}: {error.strerror}") from None


def _format_duration(seconds: Optional[int]) -> str:
    """A duration for people: `45s`, `12m 5s`, `3h 20m`, `2d 4h`."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    days, rest = divmod(abs(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h" if hours else f"{sign}{days}d"
    if hours:
        return f"{sign}{hours}h {minutes}m" if minutes else f"{sign}{hours}h"
    if minutes:
        return f"{sign}{minutes}m {rest}s" if rest else f"{sign}{minutes}m"
    return f"{sign}{rest}s"


def _stats_rows(
    figures: Sequence[Record], escape: Callable[[str], str]
) -> tuple[list[str], list[list[str]]]:
    """The stats as people read them: a row per figure, a column per environment."""

    def failure_rate(figure: Record) -> str:
        if not figure["deployments"]:
            return "-"
        return (
            f"{figure['change_failures'] / figure['deployments']:.0%}"
            f" ({figure['change_failures']}/{figure['deployments']})"
        )

    def lead_time(figure: Record) -> str:
        median = figure["lead_time_median_seconds"]
        if median is None:
            return "-"
        return f"{_format_duration(median)} (n={figure['lead_time_changes']})"

    shown: tuple[tuple[str, Callable[[Record], str]], ...] = (
        ("deployments", lambda figure: str(figure["deployments"])),
        ("per day", lambda figure: f"{figure['deployments_per_day']:.2f}"),
        ("per week", lambda figure: f"{figure['deployments_per_week']:.1f}"),
        ("rollbacks", lambda figure: str(figure["rollbacks"])),
        ("change failure rate", failure_rate),
        (
            "time to restore, median",
            lambda figure: _format_duration(figure["time_to_restore_median_seconds"]),
        ),
        (
            "time to restore, worst",
            lambda figure: _format_duration(figure["time_to_restore_worst_seconds"]),
        ),
        ("unrestored failures", lambda figure: str(figure["unrestored"])),
        ("lead time, median", lead_time),
    )
    headers = ["figure", *(escape(figure["environment"]) for figure in figures)]
    return headers, [[label, *(show(figure) for figure in figures)] for label, show in shown]


def _window_caption(since: datetime, until: datetime) -> str:
    days = f"{(until - since).total_seconds() / 86400:.1f}".removesuffix(".0")
    unit = "day" if days == "1" else "days"
    return (
        f"Deployments from {_short_time(iso(since))} to {_short_time(iso(until))} UTC"
        f" ({days} {unit})"
    )


def _echo_stats(
    figures: Sequence[Record], output: _OutputRequest, *, since: datetime, until: datetime
) -> None:
    fmt = output.chosen_format
    if fmt == "json":
        click.echo(_json_text(list(figures), indent=2))
        return
    if fmt in ("csv", "tsv"):
        import csv

        writer = csv.writer(
            sys.stdout, lineterminator="\n", delimiter="," if fmt == "csv" else "\t"
        )
        if output.headers:
            writer.writerow(STATS_FIELDS)
        for figure in figures:
            writer.writerow(
                [
                    (_csv_cell if fmt == "csv" else _printable)(figure[field])
                    for field in STATS_FIELDS
                ]
            )
        return
    click.echo(_window_caption(since, until))
    if not figures:
        click.echo("No deployments recorded.")
        return
    headers, rows = _stats_rows(figures, _printable)
    click.echo()
    click.echo(_render_table(rows, headers if output.headers else [], fmt))


def _short_time(stamp: str) -> str:
    """`2026-04-15T12:34:56Z` as `2026-04-15 12:34`."""
    return stamp[:16].replace("T", " ")


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _status_label(record: Record) -> str:
    status = str(record["status"]).replace("_", " ")
    return f"rollback, {status}" if record["rollback_of"] else status


def _status_class(record: Record) -> str:
    """A status as a CSS or Mermaid class name: only the ones we know."""
    return record["status"] if record["status"] in STATUS_COLOURS else "unknown"


def _mermaid_text(value: Any) -> str:
    """Text that cannot break out of a quoted Mermaid label: every character
    that could mean something to Mermaid, Markdown or HTML becomes an entity code."""
    return "".join(
        character if _MERMAID_SAFE_CHARACTER.fullmatch(character) else f"#{ord(character)};"
        for character in _shown_value(value)
    )


def _markdown_text(value: Any) -> str:
    """Text for a Markdown summary: every character that could mean something to
    Markdown or HTML becomes an HTML character reference."""
    return "".join(
        character if _MERMAID_SAFE_CHARACTER.fullmatch(character) else f"&#{ord(character)};"
        for character in _shown_value(value)
    )


def _mermaid_node(node: str, record: Record, css_class: str) -> str:
    label = "<br/>".join(
        (
            _mermaid_text(_clipped(_shown_value(record["branch"]), 40)),
            _mermaid_text(
                f"{_shown_value(record['commit_sha'])[:SHORT_SHA_LENGTH]}"
                f" {_short_time(_shown_value(record['deployed_at']))}"
            ),
            _mermaid_text(_status_label(record)),
        )
    )
    # A rollback is drawn as a stadium, a change as a box.
    opening, closing = ('(["', '"])') if record["rollback_of"] else ('["', '"]')
    return f"{node}{opening}{label}{closing}:::{css_class}"


def _render_mermaid(
    lanes: Sequence[tuple[str, list[Record], int]], earlier: dict[str, Record]
) -> str:
    """A Mermaid flowchart: a subgraph per environment holding its deployments
    in order, coloured by status, and a dotted arrow from each rollback back to
    the deployment it restored. `lanes` holds (environment, deployments oldest
    first, how many older ones are left out); `earlier` the restored
    deployments that are not shown."""
    lines = ["flowchart LR"]
    for status, (fill, stroke) in STATUS_COLOURS.items():
        text = "#1f2328" if status == "deployed" else "#ffffff"
        lines.append(f"  classDef {status} fill:{fill},stroke:{stroke},color:{text}")
    lines.append(
        "  classDef earlier fill:#ffffff,stroke:#8c959f,stroke-dasharray:4 3,color:#57606a"
    )
    lines.append("  classDef unknown fill:#ffffff,stroke:#cf222e,color:#1f2328")
    if not lanes:
        lines.append('  none["no deployments"]:::earlier')
    link_count = 0
    rollback_links = []
    for number, (environment, records, left_out) in enumerate(lanes, start=1):
        lane = f"lane{number}"
        lines.append(f'  subgraph {lane}["{_mermaid_text(environment)}"]')
        lines.append("    direction LR")
        chain = []
        if left_out:
            lines.append(f'    {lane}_more["{left_out} earlier"]:::earlier')
            chain.append(f"{lane}_more")
        elif not records:
            lines.append(f'    {lane}_none["no deployments"]:::earlier')
        nodes: dict[str, str] = {}
        restored_earlier = {record["rollback_of"] for record in records} & earlier.keys()
        for target_id in sorted(restored_earlier, key=lambda key: earlier[key]["deployed_at"]):
            node = f"{lane}_earlier{len(nodes) + 1}"
            nodes[target_id] = node
            lines.append(f"    {_mermaid_node(node, earlier[target_id], 'earlier')}")
            chain.insert(len(nodes) - 1, node)
        for index, record in enumerate(records, start=1):
            node = f"{lane}_{index}"
            nodes[record["id"]] = node
            lines.append(f"    {_mermaid_node(node, record, _status_class(record))}")
            chain.append(node)
        for before, after in zip(chain, chain[1:]):
            # Earlier deployments shown only as rollback targets are not in sequence.
            arrow = "~~~" if before.startswith(f"{lane}_earlier") else "-->"
            lines.append(f"    {before} {arrow} {after}")
            link_count += 1
        for record in records:
            if record["rollback_of"] in nodes:
                restored = nodes[record["rollback_of"]]
                lines.append(f"    {nodes[record['id']]} -. rollback .-> {restored}")
                rollback_links.append(str(link_count))
                link_count += 1
        lines.append("  end")
    if rollback_links:
        lines.append(
            f"  linkStyle {','.join(rollback_links)}"
            f" stroke:{ROLLBACK_COLOUR},stroke-width:2px,color:{ROLLBACK_COLOUR}"
        )
    return "\n".join(lines) + "\n"


def _render_markdown_summary(
    figures: Sequence[Record], mermaid: str, *, since: datetime, until: datetime
) -> str:
    """The stats table and the Mermaid timeline as Markdown, for $GITHUB_STEP_SUMMARY."""
    parts = [f"### {_window_caption(since, until)}\n"]
    if figures:
        headers, rows = _stats_rows(figures, _markdown_text)
        parts.append(_render_table(rows, headers, "github") + "\n")
    parts.append(f"```mermaid\n{mermaid}```\n")
    return "\n".join(parts)


def _timeline_ticks(start: datetime, end: datetime) -> tuple[list[datetime], str]:
    """Round times for the axis, at most about eight of them, and their label format."""
    steps = [timedelta(hours=hours) for hours in (1, 3, 6, 12)]
    steps += [timedelta(days=days) for days in (1, 2, 7, 14, 28, 91, 182, 364)]
    span = end - start
    step = next((step for step in steps if span / step <= 8), steps[-1])
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    tick = epoch + -((epoch - start) // step) * step
    ticks = []
    while tick <= end:
        ticks.append(tick)
        tick += step
    return ticks, ("%m-%d %H:%M" if step < timedelta(days=1) else "%Y-%m-%d")


def _mark_title(record: Record) -> str:
    lines = [
        f"{record['id']} ({_status_label(record)})",
        f"branch {_clipped(_shown_value(record['branch']), 80)},"
        f" commit {_shown_value(record['commit_sha'])[:12]}",
        f"deployed {_short_time(record['deployed_at'])} by {_clipped(record['actor'] or '?', 40)}",
    ]
    if record["verified_at"]:
        checker = record["verified_by"]
        lines.append(
            f"checked {_short_time(_shown_value(record['verified_at']))}"
            + (f" by {_clipped(checker, 40)}" if checker else "")
        )
    if record["rollback_of"]:
        lines.append(f"restores {record['rollback_of']}")
    return _printable("\n".join(lines), one_line=False)


def _svg_legend(left: int) -> list[str]:
    parts = []
    x = left
    for status in STATUS_COLOURS:
        parts.append(
            f'<circle class="{status}" cx="{x + 6}" cy="18" r="6"/>'
            f'<text x="{x + 16}" y="22">{status.replace("_", " ")}</text>'
        )
        x += 30 + 7 * len(status)
    parts.append(
        f'<path class="verified" d="M{x + 6} 10l8 8l-8 8l-8-8z"/>'
        f'<text x="{x + 18}" y="22">rollback</text>'
    )
    x += 90
    parts.append(
        f'<path class="restore" d="M{x + 40} 24C{x + 40} 6 {x + 8} 6 {x + 8} 16"/>'
        f'<text x="{x + 50}" y="22">arrow to the deployment a rollback restored</text>'
    )
    return parts


def _stacked_positions(
    records: Sequence[Record], x_of: Callable[[str], float], mid: int
) -> dict[str, tuple[float, int]]:
    """Each mark's (x, y): x by time; a mark that would overlap the one before
    it in its row goes down a row (or to the row with the most room)."""
    last_x = [float("-inf")] * _TIMELINE_ROWS
    positions = {}
    for record in records:
        x = x_of(record["deployed_at"])
        row = next(
            (row for row, previous in enumerate(last_x) if x - previous >= _TIMELINE_MARK_GAP),
            min(range(_TIMELINE_ROWS), key=last_x.__getitem__),
        )
        last_x[row] = x
        positions[record["id"]] = (x, mid + row * _TIMELINE_ROW_HEIGHT)
    return positions


def _svg_lane(
    environment: str,
    records: Sequence[Record],
    earlier: dict[str, Record],
    x_of: Callable[[str], float],
    *,
    top: int,
    left: int,
    right: int,
    shaded: bool,
) -> list[str]:
    """One environment's lane: its marks, and the rollback arrows over them."""
    import html

    mid = top + 54
    rollbacks = sum(1 for record in records if record["rollback_of"])
    changes = len(records) - rollbacks
    shown_environment = _printable(environment)
    parts = [
        f'<g class="lane" data-environment="{html.escape(shown_environment)}">'
        f'<rect x="0" y="{top}" width="{right}" height="{_TIMELINE_LANE_HEIGHT}"'
        f' fill="{"#f6f8fa" if shaded else "none"}" fill-opacity="0.7"/>'
        f'<text class="lane" x="10" y="{mid - 2}">'
        f"{html.escape(_clipped(shown_environment, 16))}</text>"
        f'<text class="muted" x="10" y="{mid + 14}">{changes} changes, {rollbacks} rollbacks</text>'
        f'<line class="baseline" x1="{left}" y1="{mid}" x2="{right}" y2="{mid}"/>'
    ]
    positions = _stacked_positions(records, x_of, mid)
    for record in records:
        x, y = positions[record["id"]]
        css_class = _status_class(record)
        title = html.escape(_mark_title(record))
        if record["rollback_of"]:
            parts.append(
                f'<path class="mark {css_class}" d="M{x} {y - 8}l8 8l-8 8l-8-8z">'
                f"<title>{title}</title></path>"
            )
        else:
            parts.append(
                f'<circle class="mark {css_class}" cx="{x}" cy="{y}" r="6">'
                f"<title>{title}</title></circle>"
            )
    for record in records:
        target_id = record["rollback_of"]
        if not target_id:
            continue
        from_x, from_y = positions[record["id"]]
        to_x, to_y = positions.get(target_id, (left, mid))
        arc_y = min(from_y, to_y) - 9 - (14 + min(30.0, abs(from_x - to_x) / 8))
        kind = "restore" if target_id in positions else "restore earlier"
        target = earlier.get(target_id)
        when = f", deployed {_short_time(_shown_value(target['deployed_at']))}" if target else ""
        title = html.escape(_printable(f"{record['id']} restored {target_id}{when}"))
        parts.append(
            f'<path class="{kind}" d="M{from_x} {from_y - 9}C{from_x} {arc_y}'
            f' {to_x} {arc_y} {to_x} {to_y - 9}"><title>{title}</title></path>'
        )
    parts.append("</g>")
    return parts


def _html_stats_table(figures: Sequence[Record]) -> list[str]:
    import html

    headers, rows = _stats_rows(figures, _printable)
    parts = ['<table class="stats"><thead><tr>']
    parts.extend(f"<th>{html.escape(header)}</th>" for header in headers)
    parts.append("</tr></thead><tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def _render_timeline_html(
    lanes: Sequence[tuple[str, list[Record]]],
    earlier: dict[str, Record],
    figures: Sequence[Record],
    *,
    since: datetime,
    until: datetime,
    total: int,
) -> str:
    """A self-contained page: the stats, then an SVG lane per environment with a
    mark per deployment coloured by status, and an arrow from each rollback back
    to the deployment it restored. No scripts, no external assets."""
    import html

    width, left, right = _TIMELINE_WIDTH, _TIMELINE_LABEL_WIDTH, _TIMELINE_WIDTH - 24
    shown = sum(len(records) for _, records in lanes)
    start = since
    if shown < total and shown:
        start = min(
            _parse_stored_time(record["deployed_at"]) or since
            for _, records in lanes
            for record in records
        )
    span = max((until - start).total_seconds(), 1.0)

    def x_of(stamp: str) -> float:
        offset = ((_parse_stored_time(stamp) or start) - start).total_seconds() / span
        return round(left + min(max(offset, 0.0), 1.0) * (right - left), 1)

    legend_height = 44
    lanes_bottom = legend_height + max(len(lanes), 1) * _TIMELINE_LANE_HEIGHT
    height = lanes_bottom + 30
    style = _TIMELINE_STYLE.replace("ROLLBACK", ROLLBACK_COLOUR) + "".join(
        f".{status}{{fill:{fill};stroke:{stroke}}}"
        for status, (fill, stroke) in STATUS_COLOURS.items()
    )
    count = f"{total} deployments" if shown == total else f"the newest {shown} of {total}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Defence in depth: nothing on this page may load or run anything.
        '<meta http-equiv="Content-Security-Policy"'
        " content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        "<title>Deployment timeline</title>",
        f"<style>{style}</style></head><body>",
        "<h1>Deployment timeline</h1>",
        f'<p class="window">{html.escape(_window_caption(since, until))}: {count}.</p>',
        *(_html_stats_table(figures) if figures else []),
        f'<div class="chart"><svg xmlns="http://www.w3.org/2000/svg" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="Deployments per environment over time">'
        '<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7"'
        f' markerHeight="7" orient="auto"><path d="M0 0L10 5L0 10z" fill="{ROLLBACK_COLOUR}"/>'
        "</marker></defs>",
        *_svg_legend(left),
    ]
    # The grid first: lanes and marks are drawn over it.
    ticks, tick_format = _timeline_ticks(start, until)
    for tick in ticks:
        x = x_of(iso(tick))
        out.append(
            f'<line class="grid" x1="{x}" y1="{legend_height}" x2="{x}" y2="{lanes_bottom}"/>'
            f'<text class="muted" x="{x}" y="{lanes_bottom + 18}" text-anchor="middle">'
            f"{tick.strftime(tick_format)}</text>"
        )
    for number, (environment, records) in enumerate(lanes):
        top = legend_height + number * _TIMELINE_LANE_HEIGHT
        out += _svg_lane(
            environment,
            records,
            earlier,
            x_of,
            top=top,
            left=left,
            right=right,
            shaded=number % 2 == 0,
        )
    if not lanes:
        out.append(
            f'<text class="muted" x="{(left + right) // 2}" y="{legend_height + 46}"'
            ' text-anchor="middle">No deployments recorded.</text>'
        )
    out += [
        "</svg></div>",
        '<p class="window">Hover over a mark for its id, branch, commit, who and when.'
        f" Made by deployment-tracker {__version__}.</p>",
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


def _timeline_text(
    db: sqlite3.Connection,
    output_format: str,
    *,
    since: datetime,
    environment: Optional[str],
    now: datetime,
) -> str:
    """What `timeline` prints for the window from `since` to `now`. A deployment
    whose stored time is not a time cannot be placed, and is left out."""

    def placeable(records: list[Record]) -> list[Record]:
        return [one for one in records if _parse_stored_time(one["deployed_at"]) is not None]

    names = [environment] if environment else distinct_values(db, "environment", limit=10_000)
    if output_format == "html":
        records, total = timeline_deployments(db, since=since, environment=environment, now=now)
        records = placeable(records)
        lanes = [(name, [one for one in records if one["environment"] == name]) for name in names]
        return _render_timeline_html(
            lanes,
            rollback_targets_outside(db, records),
            deployment_stats(db, since=since, environment=environment, now=now),
            since=since,
            until=now,
            total=total,
        )
    mermaid_lanes = []
    earlier: dict[str, Record] = {}
    for name in names:
        records, total = timeline_deployments(
            db, since=since, environment=name, now=now, limit=MERMAID_MAX_PER_ENVIRONMENT
        )
        mermaid_lanes.append((name, placeable(records), total - len(records)))
        earlier.update(rollback_targets_outside(db, records))
    mermaid = _render_mermaid(mermaid_lanes, earlier)
    if output_format == "mermaid":
        return mermaid
    figures = deployment_stats(db, since=since, environment=environment, now=now)
    return _render_markdown_summary(figures, mermaid, since=since, until=now)


# ==========================================================================
# CLI
# ==========================================================================


def _in_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def _log_line(kind: str, message: str) -> str:
    """One line for stderr; inside GitHub Actions an annotation on the run page.

    The message can hold stored or given values: escaped so that it can't
    start another workflow command (`##[...]` works anywhere in a line)."""
    if not _in_github_actions():
        return f"{kind.capitalize()}: {_printable(' '.join(message.split()))}"
    # The runner decodes %25, %0D and %0A in a command's message (a line break shows as one).
    text = message.strip().replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    text = _printable(text).replace("##[", "#%23[")
    return f"::{kind} title=deployment-tracker::{text}"


def _warn(message: str) -> None:
    click.echo(_log_line("warning", message), err=True)


def _fail(message: str, exit_code: int) -> NoReturn:
    click.echo(_log_line("error", message), err=True)
    sys.exit(exit_code)


class TrackerGroup(click.Group):
    """Turns every failure into one line on stderr and a documented exit code."""

    def main(
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as error:
            hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            _fail(error.format_message() + hint, error.exit_code)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code)
        except TrackerError as error:
            _fail(str(error), error.exit_code)
        except click.Abort:
            _fail("aborted", 1)
        except sqlite3.Error as error:
            if str(error) == "interrupted":
                _fail(f"database error: a query ran past {QUERY_DEADLINE_SECONDS:g} s", 1)
            _fail(f"database error: {error}", 1)
        except BrokenPipeError:
            # The reader (e.g. `| head`) went away; that is not our failure.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as error:
            _fail(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "), 1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[Optional[str], Optional[click.Command], list[str]]:
        """Also keeps the command and its arguments, for `--history` to hand over unparsed."""
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta[_COMMAND_LINE] = [name or args[0], *rest]
        return name, command, rest


_COMMAND_LINE = "deployment_tracker.command_line"


# --- Parameter types: values are checked while click parses them ----------


def _complete_from_db(
    ctx: click.Context,
    lookup: Callable[[sqlite3.Connection], list[str]],
    check: Callable[[str], Any],
) -> list[Any]:
    """Completion candidates read from the database; nothing when it can't be read.
    The shell puts a candidate on the command line as it is, so only values that
    pass their check and need no quoting (`$(...)`, `;`, spaces) are offered."""
    from click.shell_completion import CompletionItem

    def offered(value: str) -> bool:
        if not _SHELL_SAFE.fullmatch(value):
            return False
        try:
            check(value)
        except InvalidInput:
            return False
        return True

    path = ctx.find_root().params.get("db_path") or os.environ.get(DB_ENV_VAR) or DEFAULT_DB
    try:
        db = connect(path, write=False, deadline_seconds=2.0)
    except (TrackerError, sqlite3.Error):
        return []
    try:
        return [CompletionItem(value) for value in lookup(db) if offered(value)]
    except sqlite3.Error:
        return []
    finally:
        db.close()


class _CheckedType(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """A value checked by a validation function; a bad one is a usage error (exit 2).
    With `column`, the shell completes it from the values the database holds."""

    def __init__(
        self, name: str, check: Callable[[str], Any], column: Optional[str] = None
    ) -> None:
        self.name = name
        self._check = check
        self._column = column

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._check(value)
        except InvalidInput as error:
            self.fail(str(error), param, ctx)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[Any]:
        column = self._column
        if column is None:
            return []
        if column == "id":
            return _complete_from_db(ctx, lambda db: newest_ids(db, incomplete), self._check)
        return _complete_from_db(
            ctx, lambda db: distinct_values(db, column, incomplete), self._check
        )


class _OutputFormatType(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """table, json, csv, tsv, or any of tabulate's own formats (read from tabulate,
    and only when one is asked for: importing it costs start-up time)."""

    name = "format"

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> Any:
        if value in BUILTIN_FORMATS:
            return value
        from tabulate import tabulate_formats

        if value not in tabulate_formats:
            self.fail(
                f"{value!r} is not one of {', '.join(BUILTIN_FORMATS)}, or a tabulate format:"
                f" {', '.join(sorted(set(tabulate_formats) - set(BUILTIN_FORMATS)))}",
                param,
                ctx,
            )
        return value

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[Any]:
        from click.shell_completion import CompletionItem
        from tabulate import tabulate_formats

        names = [*BUILTIN_FORMATS, *sorted(set(tabulate_formats) - set(BUILTIN_FORMATS))]
        return [CompletionItem(name) for name in names if name.startswith(incomplete)]


class _ChoiceListType(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    """One choice or several, separated by commas (fields, statuses); `what` names
    one and several of them in errors."""

    def __init__(self, choices: Sequence[str], what: tuple[str, str] = ("field", "fields")) -> None:
        self.choices = tuple(choices)
        self._what = what
        self.name = what[1]

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> Any:
        if isinstance(value, tuple):
            return value
        chosen = tuple(part.strip() for part in str(value).split(",") if part.strip())
        unknown = [choice for choice in chosen if choice not in self.choices]
        if unknown or not chosen:
            one, several = self._what
            self.fail(
                f"unknown {one} {', '.join(map(repr, unknown)) or repr(value)};"
                f" {several} are {', '.join(self.choices)}",
                param,
                ctx,
            )
        return chosen

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[Any]:
        from click.shell_completion import CompletionItem

        done, _, current = incomplete.rpartition(",")
        prefix = f"{done}," if done else ""
        return [
            CompletionItem(prefix + field) for field in self.choices if field.startswith(current)
        ]


_ENVIRONMENT = _CheckedType("environment", check_environment, "environment")
_BRANCH = _CheckedType("branch", check_branch, "branch")
_SHA = _CheckedType("sha", check_sha)
_DEPLOYMENT = _CheckedType("id", check_id_or_prefix, "id")
_FULL_ID = _CheckedType("id", check_id, "id")
_REPOSITORY = _CheckedType("repository", check_repository)
_IMAGE_TAG = _CheckedType("tag", check_image_tag)
_IMAGE_DIGEST = _CheckedType("digest", check_digest)
_RUN_ID = _CheckedType("run id", check_run_id)
_RUN_URL = _CheckedType("url", check_run_url)
_ANY_NOTE = _CheckedType("note", storable_note)
_COMMIT_TIME = _CheckedType("time", lambda value: iso(parse_timestamp(value, name="commit time")))
_SINCE = _CheckedType("since", lambda value: parse_since(value, utc_now()))
_GATES = _CheckedType("gates", parse_gates)


def _text(name: str, *, multiline: bool = False) -> _CheckedType:
    return _CheckedType(name, lambda value: check_text(name, value, multiline=multiline))


def _joined_choices(
    ctx: click.Context, param: click.Parameter, value: tuple[tuple[str, ...], ...]
) -> tuple[str, ...]:
    """A repeated _ChoiceListType option as one tuple, in order, each choice once."""
    return tuple(dict.fromkeys(choice for chosen in value for choice in chosen))


# --- Shared options ---------------------------------------------------------

EXIT_CODES = """\b
Exit codes:
  0  success
  1  nothing found, operation refused, or a database that is missing
     (for reading), unreadable, corrupt, foreign or from a newer version
  2  invalid usage or input
With --history, also those of git and the history branch (see the README).
"""


@click.group(
    cls=TrackerGroup, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--db",
    "db_path",
    envvar=DB_ENV_VAR,
    default=DEFAULT_DB,
    show_default=True,
    metavar="PATH",
    help=f"SQLite database file (env {DB_ENV_VAR}).",
)
@click.option(
    "--history",
    envvar=HISTORY_ENV_VAR,
    metavar="REMOTE",
    help="Run the command on the shared history: the deployment-history branch of REMOTE"
    f" (a git remote, URL or path), from the current git repository (env {HISTORY_ENV_VAR}).",
)
@click.version_option(__version__, prog_name="deployment-tracker")
@click.pass_context
def cli(ctx: click.Context, db_path: str, history: Optional[str]) -> None:
    """Record deployments, verify them, and find what to roll back to.

    \b
    Example:
        deployment-tracker record -e staging --branch main --commit 3f2c9e1d
        deployment-tracker verify 3f2c9e1 -e staging --status verified
        deployment-tracker latest -e staging
        deployment-tracker --history origin list --since 7d
    """
    ctx.obj = db_path
    if history is not None and _history_wins(ctx):
        ctx.exit(_run_on_history(history, ctx.meta[_COMMAND_LINE]))


def _history_wins(ctx: click.Context) -> bool:
    """--history and --db: the command line beats the environment; both in one place is a
    usage error."""
    db_source = ctx.get_parameter_source("db_path")
    if db_source in (None, click.core.ParameterSource.DEFAULT):
        return True
    history_source = ctx.get_parameter_source("history")
    if db_source == history_source:
        both = "--history and --db" if db_source.name == "COMMANDLINE" else None
        raise click.UsageError(
            f"{both or f'{HISTORY_ENV_VAR} and {DB_ENV_VAR}'} don't go together:"
            " the history branch holds its own database"
        )
    return history_source == click.core.ParameterSource.COMMANDLINE


def _run_on_history(remote: str, command_line: list[str]) -> int:
    """Hand the command to the history module (it talks to git; imported only now, so that
    the tracker's start-up never pays for it), which runs this tracker on a fetched copy."""
    import importlib

    for name in HISTORY_MODULES:
        try:
            history = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        return int(history.run_for_tracker(remote, command_line, _this_tracker()))
    raise TrackerError(
        "--history needs the history module, installed with the tracker (pip install"
        " deployment-tracker)"
    )


def _this_tracker() -> list[str]:
    """The command that runs this same tracker: its console script (from cached bytecode),
    else this file."""
    script = os.path.abspath(sys.argv[0])
    if os.path.basename(script) == "deployment-tracker" and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, os.path.abspath(__file__)]


F = TypeVar("F", bound=Callable[..., Any])


_SHARED_OPTIONS: dict[Any, list[click.Parameter]] = {}


def _shared_output_options(fields: tuple[str, ...]) -> list[click.Parameter]:
    """-o/--output/--format, --field, --json and --no-headers, for commands that print `fields`."""
    if fields not in _SHARED_OPTIONS:
        _SHARED_OPTIONS[fields] = [
            click.Option(
                ["-o", "--output", "--format", "output_format"],
                type=_OutputFormatType(),
                help="table (default), json, csv, tsv, or a tabulate format such as github.",
            ),
            click.Option(
                ["--field"],
                type=_ChoiceListType(fields),
                help="Print only these fields' bare values (comma-separated; tab-separated out).",
            ),
            click.Option(
                ["--json", "json_fields"],
                type=_ChoiceListType(fields),
                metavar="FIELDS",
                help="Print JSON with only these fields (comma-separated), like gh.",
            ),
            _shared_flag("--no-headers", "Tables, CSV and TSV without a header."),
        ]
    return _SHARED_OPTIONS[fields]


def _shared_flag(name: str, help_text: str) -> click.Parameter:
    if name not in _SHARED_OPTIONS:
        _SHARED_OPTIONS[name] = [click.Option([name], is_flag=True, help=help_text)]
    return _SHARED_OPTIONS[name][0]


def _output_options(
    *, fields: Sequence[str] = FIELDS, github_output: bool = True, wide: bool = False
) -> Callable[[F], F]:
    """-o/--output, --field, --json, --no-headers (and --wide, --github-output),
    handed to the command as one _OutputRequest named `output`."""

    def decorate(function: F) -> F:
        import functools

        @functools.wraps(function)
        def command(*args: Any, **kwargs: Any) -> Any:
            output = _OutputRequest(
                format=kwargs.pop("output_format"),
                fields=kwargs.pop("field") or (),
                json_fields=kwargs.pop("json_fields") or (),
                headers=not kwargs.pop("no_headers"),
                wide=kwargs.pop("wide", False),
                github_output=_writable_github_output()
                if kwargs.pop("github_output", False)
                else None,
            )
            if output.fields and output.json_fields:
                raise click.UsageError("--field and --json don't go together")
            return function(*args, output=output, **kwargs)

        # The options are made once and shared by the commands that print records: building
        # click options is most of the tracker's import time.
        params = [*_shared_output_options(tuple(fields))]
        if wide:
            params.append(_shared_flag("--wide", "Every column in tables."))
        if github_output:
            params.append(
                _shared_flag(
                    "--github-output", "Also append the fields to the file named by $GITHUB_OUTPUT."
                )
            )
        # click keeps a function's parameters in reverse order until the command is made.
        command.__dict__.setdefault("__click_params__", []).extend(reversed(params))
        return command  # type: ignore[return-value]

    return decorate


def _deployment_argument(*, required: bool = True) -> Callable[[F], F]:
    """The deployment, as an argument (like `helm history NAME`) or as --id."""

    def decorate(function: F) -> F:
        function = click.option(
            "--id",
            "id_option",
            type=_DEPLOYMENT,
            metavar="ID",
            help="Exactly this full id (no prefix, no commit): for scripts.",
        )(function)
        return click.argument(
            "id_argument", required=False, type=_DEPLOYMENT, metavar="ID" if required else "[ID]"
        )(function)

    return decorate


class _GivenId(NamedTuple):
    value: str
    exact: bool  # given as --id: only that full id, never a prefix or a commit


def _given_id(
    argument: Optional[str], option: Optional[str], *, required: bool
) -> Optional[_GivenId]:
    if argument and option and argument != option:
        raise click.UsageError(f"two different deployments given: {argument} and --id {option}")
    if option:
        return _GivenId(option, exact=True)
    if argument:
        return _GivenId(argument, exact=False)
    if required:
        raise click.UsageError(
            "Missing argument 'ID' (a deployment id, a unique start of one, or a commit's sha)"
        )
    return None


def _environment_option(*, required: bool) -> Callable[[F], F]:
    return click.option(
        "--environment",
        "-e",
        type=_ENVIRONMENT,
        required=required,
        envvar=ENVIRONMENT_ENV_VAR,
        show_envvar=True,
        help="Environment name, e.g. staging or production.",
    )


def _gates_option() -> Callable[[F], F]:
    return click.option(
        "--gates",
        type=_GATES,
        envvar=GATES_ENV_VAR,
        show_envvar=True,
        default="",
        metavar="SOURCE:TARGET,...",
        help=f"Promotion gates: TARGET only receives images verified in SOURCE"
        f" ({DEFAULT_GATES} when unset; 'none' turns them off).",
    )


def _since_option(default: Optional[str] = DEFAULT_SINCE) -> Callable[[F], F]:
    """--since, for a window's start (`default`: none, for no window unless given)."""
    return click.option(
        "--since",
        type=_SINCE,
        default=default,
        show_default=default is not None,
        metavar="SPAN|DATE",
        help="Window start: a span back from now (12h, 30d, 2w) or an ISO 8601 date/time (UTC).",
    )


def _open_db(ctx: click.Context, *, write: bool = False) -> sqlite3.Connection:
    db_path: str = ctx.find_root().obj
    db = connect(db_path, write=write)
    ctx.call_on_close(db.close)
    return db


def _named_deployment(
    ctx: click.Context,
    id_argument: Optional[str],
    id_option: Optional[str],
    environment: Optional[str],
    *,
    write: bool = False,
) -> tuple[sqlite3.Connection, str]:
    """The database, and the one deployment that the ID argument (or --id) names."""
    given = _given_id(id_argument, id_option, required=True)
    assert given is not None
    db = _open_db(ctx, write=write)
    return db, resolve_id(db, given.value, environment, exact=given.exact)


def _emit_one(
    record: Record,
    output: _OutputRequest,
    *,
    history: Optional[list[Record]] = None,
    just_the_id: bool = False,
) -> None:
    """Print one record the way the caller asked, and fill $GITHUB_OUTPUT.

    Commands that write (and any command with --github-output) print just the
    id unless a format or fields are asked for: the step's log needs no more,
    and a workflow step pays no table import.
    """
    if output.github_output:
        _write_github_output(output.github_output, record)
    asked = output.format is not None or output.fields or output.json_fields
    if (just_the_id or output.github_output) and not asked:
        click.echo(_printable(record["id"]))
        return
    _echo_details(record, history, output)


# --- Commands: the card's six, then control, then insight -------------------


@cli.command("new-id")
@click.option(
    "--branch", "-b", type=_BRANCH, required=True, help="Branch being deployed (raw name)."
)
@click.option("--commit", "-c", "commit_sha", type=_SHA, required=True, help="Commit _SHA.")
@_output_options(fields=("id", "image_tag", "branch", "commit_sha", "short_sha", "timestamp"))
def new_id_command(branch: str, commit_sha: str, output: _OutputRequest) -> None:
    """Print the id (and image tag) a deployment of this commit gets now.

    Touches no database. The id is `{branch}_{sha7}_{YYYYmmddHHMMSS}` in UTC,
    with the branch made safe for a Docker tag.

    \b
    Example:
        deployment-tracker new-id --branch feature/login --commit 3f2c9e1d
    """
    moment = utc_now()
    deployment_id = make_id(branch, commit_sha, moment)
    values: Record = {
        "id": deployment_id,
        "image_tag": deployment_id,
        "branch": branch,
        "commit_sha": commit_sha,
        "short_sha": commit_sha[:SHORT_SHA_LENGTH],
        "timestamp": moment.strftime(TIMESTAMP_FORMAT),
    }
    if output.github_output:
        _write_github_output(output.github_output, values)
    if output.fields:
        click.echo("\t".join(_tsv_cell(values[field]) for field in output.fields))
    elif output.json_fields or output.format == "json":
        shown = {key: values[key] for key in output.json_fields} if output.json_fields else values
        click.echo(_json_text(shown, indent=2))
    else:
        click.echo(_printable(deployment_id))


@cli.command("record")
@_environment_option(required=True)
@click.option("--branch", "-b", type=_BRANCH, help="Branch deployed (raw name).")
@click.option("--commit", "-c", "commit_sha", type=_SHA, help="Commit _SHA (lowercase hex).")
@click.option("--image-tag", type=_IMAGE_TAG, help="Docker image tag; defaults to the id.")
@click.option(
    "--image-digest",
    type=_IMAGE_DIGEST,
    metavar="sha256:HEX",
    help="Digest of the image pushed (what a tag pointed to when it ran).",
)
@click.option("--id", "deployment_id", type=_FULL_ID, help="Deployment id; defaults to a new one.")
@click.option("--status", type=click.Choice(RECORD_STATUSES), default="deployed", show_default=True)
@click.option("--actor", type=_text("actor"), help="Who deployed it.")
@click.option("--run-id", type=_RUN_ID, help="CI run id.")
@click.option("--run-url", type=_RUN_URL, help="CI run URL.")
@click.option("--rollback-of", type=_FULL_ID, help="Id of the earlier deployment this restores.")
@click.option("--note", type=_text("note", multiline=True), help="Free text.")
@click.option("--committed-at", type=_COMMIT_TIME, help="Commit time (ISO 8601), for lead time.")
@click.option(
    "--promoted-from",
    type=_FULL_ID,
    metavar="ID",
    help="Verified deployment (e.g. in staging) whose image this promotes; see `promote`.",
)
@click.option(
    "--override-gate",
    "gate_reason",
    type=_text("reason"),
    metavar="REASON",
    help="Why this went past a promotion gate; kept with its gate_bypassed event.",
)
@_gates_option()
@_output_options()
@click.pass_context
def record_command(
    ctx: click.Context, /, gates: dict[str, str], output: _OutputRequest, **fields: Any
) -> None:
    """Record a deployment that happened, and print its id.

    Recording the same id again with the same fields succeeds without change,
    so a retried step is safe. With --rollback-of, this is a rollback: branch,
    commit and image (tag and digest) are the target's, and the deployment it
    replaces is marked rolled_back. With --promoted-from, they are the promoted
    deployment's.

    A record is a fact and is never refused by a promotion gate: a deployment
    the gate would have kept out (production receiving an image that was not
    verified in staging) is stored with a gate_bypassed event and a warning.
    Gates are enforced before deploying, by `promote` and the workflow.

    \b
    Example:
        deployment-tracker record -e staging --branch main \\
            --commit 3f2c9e1d4b5a69788796a5b4c3d2e1f0a9b8c7d6 --actor octocat
    """
    request = RecordRequest(**fields).checked()
    db = _open_db(ctx, write=True)
    record, created, objection = record_deployment(db, request, gates=gates)
    if not created:
        click.echo(f"already recorded: {_printable(record['id'])}", err=True)
    if objection is not None:
        reason = f" (reason: {request.gate_reason})" if request.gate_reason else ""
        _warn(f"recorded past the promotion gate{reason}: {objection}")
    _emit_one(record, output, just_the_id=True)


@cli.command("verify")
@_deployment_argument()
@_environment_option(required=False)
@click.option("--status", type=click.Choice(VERIFY_STATUSES), required=True)
@click.option("--by", type=_text("verified_by"), help="Who (or what) verified it.")
@click.option(
    "--note",
    type=_ANY_NOTE,
    help="What was checked and what it answered (stored escaped, whatever it holds).",
)
@_output_options()
@click.pass_context
def verify_command(
    ctx: click.Context,
    id_argument: Optional[str],
    id_option: Optional[str],
    environment: Optional[str],
    status: str,
    by: Optional[str],
    note: Optional[str],
    output: _OutputRequest,
) -> None:
    """Record the verification result of a deployment.

    deployed can become verified or failed; repeating the same result is a
    no-op, a contradicting one is refused. ID may be a unique start of an id,
    or a commit's short sha (with --environment when it ran in several).

    \b
    Example:
        deployment-tracker verify main_3f2c9e1_20260415123456 --status verified --by octocat
    """
    db, deployment_id = _named_deployment(ctx, id_argument, id_option, environment, write=True)
    record, changed = verify_deployment(db, deployment_id, status, by=by, note=note)
    if not changed:
        click.echo(f"already {status}: {_printable(deployment_id)}", err=True)
    _emit_one(record, output, just_the_id=True)


@cli.command("list")
@_environment_option(required=False)
@click.option("--branch", "-b", type=_BRANCH, help="Only this branch (raw name).")
@click.option(
    "--status",
    "statuses",
    type=_ChoiceListType(STATUSES, what=("status", "statuses")),
    multiple=True,
    callback=_joined_choices,
    metavar="STATUS[,STATUS...]",
    help="Only these statuses (repeat --status, or separate them with commas).",
)
@_since_option(default=None)
@click.option(
    "--limit", "-n", type=click.IntRange(min=1), default=DEFAULT_LIST_LIMIT, show_default=True
)
@click.option("--all", "show_all", is_flag=True, help="No limit (JSON, CSV and TSV stream).")
@_output_options(github_output=False, wide=True)
@click.pass_context
def list_command(
    ctx: click.Context,
    environment: Optional[str],
    branch: Optional[str],
    statuses: tuple[str, ...],
    since: Optional[datetime],
    limit: int,
    show_all: bool,
    output: _OutputRequest,
) -> None:
    """List deployments, newest first: id, environment, commit, status, age, who
    verified it, and marks (rollback, promoted, BLOCKED, gate-bypassed).

    \b
    Example:
        deployment-tracker list -e staging --limit 5
        deployment-tracker list --status verified -o json
        deployment-tracker list --status failed,rolled_back --since 2d
    """
    db = _open_db(ctx)
    filters: dict[str, Any] = {
        "environment": environment,
        "branch": branch,
        "status": statuses,
        "since": since,
    }
    records = list_deployments(db, **filters, limit=None if show_all else limit)
    shown = _echo_records(records, output)
    if not show_all and shown == limit and sys.stderr.isatty():
        total = count_deployments(db, **filters)
        if total > shown:
            click.echo(f"{shown} of {total} shown; --all or --limit N for more", err=True)


@cli.command("latest")
@_environment_option(required=True)
@click.option(
    "--status",
    type=click.Choice((*STATUSES, "any")),
    default="verified",
    show_default=True,
    help="Latest with this status; 'any' is what runs now.",
)
@_output_options()
@click.pass_context
def latest_command(
    ctx: click.Context, environment: str, status: str, output: _OutputRequest
) -> None:
    """Show the latest verified deployment in an environment.

    \b
    Example:
        deployment-tracker latest -e production --field image_tag
    """
    _emit_one(latest(_open_db(ctx), environment, status), output)


@cli.command("get")
@_deployment_argument()
@_environment_option(required=False)
@_output_options()
@click.pass_context
def get_command(
    ctx: click.Context,
    id_argument: Optional[str],
    id_option: Optional[str],
    environment: Optional[str],
    output: _OutputRequest,
) -> None:
    """Show one deployment and every status change it went through.

    ID may be a unique start of an id, or a commit's short sha (with
    --environment when it ran in several).

    \b
    Example:
        deployment-tracker get main_3f2c9e1_20260415123456 -o json
        deployment-tracker get 3f2c9e1 -e production
    """
    db, deployment_id = _named_deployment(ctx, id_argument, id_option, environment)
    record = get_deployment(db, deployment_id)
    _emit_one(record, output, history=events(db, record["id"]))


@cli.command("rollback-target")
@_environment_option(required=True)
@_deployment_argument(required=False)
@click.option("--force", is_flag=True, help="Accept an unverified or blocked ID (warns).")
@click.option(
    "--preview",
    is_flag=True,
    help="Say what the rollback undoes: the deployments after it, and their commits.",
)
@_output_options()
@click.pass_context
def rollback_target_command(
    ctx: click.Context,
    environment: str,
    id_argument: Optional[str],
    id_option: Optional[str],
    force: bool,
    preview: bool,
    output: _OutputRequest,
) -> None:
    """Show the deployment to roll back to.

    Without ID: the latest verified, unblocked deployment whose image differs
    from the one running now (the newest deployment in the environment). With
    ID: that deployment, which must be in the environment, verified and not
    blocked (--force accepts it anyway, with a warning). The answer is the
    deployment that first shipped that image there, so rollbacks name it.

    --preview says instead what the rollback undoes: the deployments
    recorded after the last one that ran the target's image (the running one
    first), and the commits between, as `git log` shows them in a clone.

    \b
    Example:
        deployment-tracker rollback-target -e production --field image_tag
        deployment-tracker rollback-target -e production --preview
    """
    given = _given_id(id_argument, id_option, required=False)
    db = _open_db(ctx)
    deployment_id = resolve_id(db, given.value, environment, exact=given.exact) if given else None
    target, problems = rollback_target(db, environment, deployment_id, force=force)
    trusted(target)
    for problem in problems:
        _warn(f"forced: deployment {target['id']} {problem}")
    if preview:
        _echo_preview(target, [trusted(record) for record in rollback_undoes(db, target)], output)
        return
    _emit_one(target, output)


@cli.command("settle")
@_deployment_argument()
@click.option(
    "--stage",
    type=click.Choice(SETTLE_STAGES),
    required=True,
    help="The workflow job asking.",
)
@click.option(
    "--github-output",
    is_flag=True,
    help="Also append action, reason and the fields to act on to $GITHUB_OUTPUT.",
)
@click.pass_context
def settle_command(
    ctx: click.Context,
    /,
    id_argument: Optional[str],
    id_option: Optional[str],
    stage: str,
    github_output: bool,
) -> None:
    """What a workflow job does for its run's deployment, from the history alone.

    Prints the action (deploy, verify, rollback or none) and says why on
    stderr; --github-output also writes `action`, `reason` and, to act on, the
    deployment's fields (for rollback: the release to restore, exactly the one
    this deployment replaced). A job re-run after its run finished finds none.

    \b
    Example:
        deployment-tracker settle --id main_3f2c9e1_20260415123456 --stage rollback
    """
    output_file = _writable_github_output() if github_output else None
    db, deployment_id = _named_deployment(ctx, id_argument, id_option, None)
    target, reason = settle(db, deployment_id, stage)
    action = stage if target is not None else "none"
    click.echo(f"{action}: {_printable(reason)}", err=True)
    if output_file is not None:
        values: Record = target or {}  # checked as it is written
        _write_github_output(output_file, {**values, "action": action, "reason": reason})
    click.echo(action)


@cli.command("plan")
@click.option(
    "--environment",
    "-e",
    type=_ENVIRONMENT,
    default="staging",
    show_default=True,
    help="Where the run deploys.",
)
@click.option("--rollback", is_flag=True, help="Roll back instead of deploying.")
@click.option(
    "--id",
    "deployment_id",
    type=_FULL_ID,
    help="The whole id to restore (--rollback) or to promote; no prefix, no commit.",
)
@click.option("--branch", "-b", type=_BRANCH, required=True, help="The run's branch.")
@click.option("--commit", "-c", "commit_sha", type=_SHA, required=True, help="The run's commit.")
@click.option(
    "--repository",
    type=_REPOSITORY,
    required=True,
    help="The image repository, REGISTRY/NAME, e.g. ghcr.io/acme/app.",
)
@_gates_option()
@click.option("--github-output", is_flag=True, help="Also append the plan to $GITHUB_OUTPUT.")
@click.pass_context
def plan_command(
    ctx: click.Context, /, gates: dict[str, str], github_output: bool, **fields: Any
) -> None:
    """Decide what a workflow run does, before anything changes; print its mode.

    deploy (build the commit), promote (redeploy the verified image of the
    chosen deployment, or of the commit, into an environment promotions
    reach) or rollback (redeploy rollback-target's image). No history yet
    counts as an empty one. --github-output writes mode, case, the new
    deployment's id, branch, commit and image, and the source it redeploys.

    \b
    Example:
        deployment-tracker plan -e production --branch main --commit 3f2c9e1d \\
            --repository ghcr.io/acme/app
    """
    output_file = _writable_github_output() if github_output else None
    request = PlanRequest(**fields)
    db_path: str = ctx.find_root().obj
    db = connect(db_path, write=False) if os.path.exists(db_path) else _empty_history()
    try:
        planned = plan_run(db, request, gates=gates)
    finally:
        db.close()
    if planned["case"] == "ungated":
        _warn(
            f"commit {request.commit_sha} has no verified deployment to promote, and no gate"
            f" guards {request.environment}: it is built and deployed"
        )
    if output_file is not None:
        _write_github_output(output_file, planned)
    click.echo(planned["mode"])


def _empty_history() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    migrate(db)
    return db


@cli.command("block")
@_deployment_argument()
@_environment_option(required=False)
@click.option(
    "--reason", type=_text("reason"), required=True, help="Why it must not be used (kept)."
)
@click.option("--by", type=_text("by"), help="Who blocks it.")
@_output_options()
@click.pass_context
def block_command(
    ctx: click.Context,
    id_argument: Optional[str],
    id_option: Optional[str],
    environment: Optional[str],
    reason: str,
    by: Optional[str],
    output: _OutputRequest,
) -> None:
    """Block a deployment: rollback-target and promote never pick it.

    The block shows in list and get, and is kept as a 'blocked' event with its
    reason. Blocking a blocked deployment succeeds and changes nothing.

    \b
    Example:
        deployment-tracker block main_3f2c9e1_20260415123456 \\
            --reason "corrupts uploads (#123)" --by octocat
    """
    db, deployment_id = _named_deployment(ctx, id_argument, id_option, environment, write=True)
    record, changed = block_deployment(db, deployment_id, reason=reason, by=by)
    if not changed:
        click.echo(
            f"already blocked: {_printable(deployment_id)}"
            f" ({_printable(record['blocked_reason'])})",
            err=True,
        )
    _emit_one(record, output, just_the_id=True)


@cli.command("unblock")
@_deployment_argument()
@_environment_option(required=False)
@click.option("--reason", type=_text("reason"), help="Why it may be used again (kept).")
@click.option("--by", type=_text("by"), help="Who unblocks it.")
@_output_options()
@click.pass_context
def unblock_command(
    ctx: click.Context,
    id_argument: Optional[str],
    id_option: Optional[str],
    environment: Optional[str],
    reason: Optional[str],
    by: Optional[str],
    output: _OutputRequest,
) -> None:
    """Lift a block, recorded as an 'unblocked' event.

    Unblocking a deployment that is not blocked succeeds and changes nothing.

    \b
    Example:
        deployment-tracker unblock main_3f2c9e1_20260415123456 --by octocat
    """
    db, deployment_id = _named_deployment(ctx, id_argument, id_option, environment, write=True)
    record, changed = unblock_deployment(db, deployment_id, by=by, reason=reason)
    if not changed:
        click.echo(f"not blocked: {_printable(deployment_id)}", err=True)
    _emit_one(record, output, just_the_id=True)


@cli.command("promote")
@click.option(
    "--from",
    "source",
    type=_ENVIRONMENT,
    default="staging",
    show_default=True,
    help="Environment to promote from.",
)
@click.option(
    "--to",
    "target",
    type=_ENVIRONMENT,
    default="production",
    show_default=True,
    help="Environment to promote to.",
)
@_deployment_argument(required=False)
@click.option(
    "--commit", "commit_sha", type=_SHA, help="Promote this commit's verified deployment."
)
@click.option(
    "--build-if-ungated",
    is_flag=True,
    help="With --commit: when it has no verified deployment in --from and no gate"
    " guards --to, succeed with mode=build (the caller builds and deploys it).",
)
@_gates_option()
@_output_options()
@click.pass_context
def promote_command(
    ctx: click.Context,
    source: str,
    target: str,
    id_argument: Optional[str],
    id_option: Optional[str],
    commit_sha: Optional[str],
    build_if_ungated: bool,
    gates: dict[str, str],
    output: _OutputRequest,
) -> None:
    """Decide what --to gets from --from: the image of a verified deployment,
    without a rebuild. This is where the promotion gate is enforced.

    With ID: that deployment, which must be in --from, verified and unblocked.
    With --commit: the latest verified, unblocked deployment of that commit in
    --from; when there is none, the gate refuses (exit 1), or, with no gate
    and --build-if-ungated, the answer is mode=build. With neither: the latest
    verified, unblocked deployment in --from. Refused when --to already runs
    the image. Only reads: deploy its image_tag, then record it with
    `record --promoted-from ID`.

    \b
    Example:
        deployment-tracker promote --from staging --to production --field image_tag
        deployment-tracker promote --commit 3f2c9e1 --build-if-ungated --github-output
    """
    given = _given_id(id_argument, id_option, required=False)
    if given and commit_sha:
        raise click.UsageError("give a deployment ID or --commit, not both")
    db = _open_db(ctx)
    deployment_id = resolve_id(db, given.value, source, exact=given.exact) if given else None
    try:
        candidate = promotion_candidate(
            db, source, target, deployment_id=deployment_id, commit_sha=commit_sha
        )
    except NotFound as error:
        if commit_sha is None:
            raise
        gate_source = gates.get(target)
        if gate_source is not None:
            raise gate_refusal(error, gate_source, target, commit_sha) from None
        if not build_if_ungated:
            raise
        _warn(f"{error}; no gate guards {target}: build and deploy commit {commit_sha}")
        decision: Record = {"mode": "build", "commit_sha": commit_sha}
        if output.github_output:
            _write_github_output(output.github_output, decision)
        click.echo("build")
        return
    trusted(candidate)
    _emit_one({**candidate, "mode": "promote"} if output.github_output else candidate, output)


@cli.command("prune")
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    required=True,
    help="How many of the newest deployments stay in each environment.",
)
@_environment_option(required=False)
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@click.option("--by", type=_text("by"), help="Who prunes (kept in the prune log).")
@_output_options(github_output=False, wide=True)
@click.pass_context
def prune_command(
    ctx: click.Context,
    keep: int,
    environment: Optional[str],
    dry_run: bool,
    by: Optional[str],
    output: _OutputRequest,
) -> None:
    """Delete the oldest deployments beyond --keep per environment.

    Never removes the running deployment, the latest verified one, the current
    rollback target, a blocked one, or anything a remaining deployment links
    to (rollback_of, promoted_from). Their events go too. Prints what was
    removed, newest first; one transaction, logged in the database.

    \b
    Example:
        deployment-tracker prune --keep 50 --dry-run
        deployment-tracker prune --keep 50 -e staging --by octocat
    """
    db = _open_db(ctx, write=not dry_run)
    if dry_run:
        removed = plan_prune(db, keep, environment)
        removed_events = count_events(db, removed)
    else:
        removed, removed_events = prune(db, keep, environment, by=by)
    click.echo(
        f"{'would remove' if dry_run else 'removed'} {len(removed)} deployment(s)"
        f" and {removed_events} event(s)",
        err=True,
    )
    _echo_records(removed, output)


@cli.command("status")
@_environment_option(required=False)
@_output_options(fields=ENVIRONMENT_STATUS_FIELDS, github_output=False)
@click.pass_context
def status_command(ctx: click.Context, environment: Optional[str], output: _OutputRequest) -> None:
    """Per environment: what runs there (the newest deployment: id, status,
    branch, image) and since when, the last verified deployment and when it was
    verified, and the rollback target (blank when there is none).

    \b
    Example:
        deployment-tracker status
        deployment-tracker status -e production --field rollback_target
    """
    rows = environment_status(_open_db(ctx), environment)
    _echo_records(rows, output, fields=ENVIRONMENT_STATUS_FIELDS)


@cli.command("stats")
@_environment_option(required=False)
@_since_option()
@click.option(
    "-o",
    "--output",
    "--format",
    "output_format",
    type=_OutputFormatType(),
    default="table",
    help="table (default), json, csv, tsv, or a tabulate format such as github.",
)
@click.option("--no-headers", is_flag=True, help="Tables, CSV and TSV without a header.")
@click.pass_context
def stats_command(
    ctx: click.Context,
    environment: Optional[str],
    since: datetime,
    output_format: str,
    no_headers: bool,
) -> None:
    """DORA figures per environment over the deployments made in a window.

    \b
    Counted over the deployments made in the window; a change is a deployment
    that is not a rollback (no --rollback-of):
    deployment frequency   changes deployed: the count, per day and per week
    change failure rate    changes that failed (verification or deploy) or
                           were rolled back, over all changes
    time to restore        per failed change: from its deployment to the next
                           verified deployment in its environment (rollback
                           or fix-forward); median, worst, and how many
                           failures have no verified deployment after them yet
    lead time for changes  median time from commit (record --committed-at) to
                           verification, over verified changes with a commit
                           time (n)
    Definitions follow DORA's four keys. A figure with nothing to measure
    shows '-' (null in JSON, where durations are whole seconds).

    \b
    Example:
        deployment-tracker stats -e production --since 30d
        deployment-tracker stats --since 2026-01-01 -o json
    """
    now = utc_now()
    figures = deployment_stats(_open_db(ctx), since=since, environment=environment, now=now)
    output = _OutputRequest(format=output_format, headers=not no_headers)
    _echo_stats(figures, output, since=since, until=now)


@cli.command("timeline")
@_environment_option(required=False)
@_since_option()
@click.option(
    "-o",
    "--output",
    "--format",
    "output_format",
    type=click.Choice(TIMELINE_FORMATS),
    default="mermaid",
    show_default=True,
    help="mermaid (a flowchart), markdown (stats and the Mermaid block, for"
    " $GITHUB_STEP_SUMMARY) or html (a self-contained page).",
)
@click.pass_context
def timeline_command(
    ctx: click.Context, environment: Optional[str], since: datetime, output_format: str
) -> None:
    """Draw the deployments in a window: a lane per environment, a mark per
    deployment coloured by status, an arrow from each rollback back to what it
    restored.

    Mermaid shows the newest 20 deployments per environment; the HTML page (an
    inline SVG with hover text, and the stats above it; no scripts, no external
    assets) the newest 1500 in all.

    \b
    Example:
        deployment-tracker timeline --since 14d -o markdown >> "$GITHUB_STEP_SUMMARY"
        deployment-tracker timeline --since 90d -o html > timeline.html
    """
    now = utc_now()
    db = _open_db(ctx)
    text = _timeline_text(db, output_format, since=since, environment=environment, now=now)
    click.echo(text, nl=False)


# ==========================================================================
# main
# ==========================================================================


def main() -> None:
    cli(prog_name="deployment-tracker")


if __name__ == "__main__":
    main()
