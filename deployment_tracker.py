"""Track deployments, verify them, and find what to roll back to.

Every deployment from any branch to any environment is recorded in a SQLite
database with its image tag, verification result and full event history, so a
rollback can always go back to the latest *verified* deployment.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, Optional, TypeVar

import click

__version__ = "0.1.0"

# --------------------------------------------------------------------------
# Constants and SQL
# --------------------------------------------------------------------------

DEFAULT_DB = ".github/deployments.db"
DB_ENV_VAR = "DEPLOYMENT_TRACKER_DB"
APPLICATION_ID = 0x44504C54  # "DPLT": marks the file as ours.
BUSY_TIMEOUT_SECONDS = 30.0
DEFAULT_LIST_LIMIT = 20
# Clock skew tolerated on timestamps that come from other machines.
FUTURE_TOLERANCE = timedelta(minutes=5)

STATUSES = ("deployed", "verified", "failed", "rolled_back")
VERIFY_STATUSES = ("verified", "failed")
RECORD_STATUSES = ("deployed", "failed")
# Allowed status changes; repeating the current status is a no-op.
TRANSITIONS = {
    "deployed": {"verified", "failed", "rolled_back"},
    "verified": {"rolled_back"},
    "failed": set(),
    "rolled_back": set(),
}

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
)
# Fields that a retried `record` must repeat exactly to count as the same call.
IDENTITY_FIELDS = (
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
)
TABLE_COLUMNS = (
    "id",
    "environment",
    "branch",
    "image_tag",
    "status",
    "deployed_at",
    "verified_by",
    "rollback_of",
    "blocked",
)
EVENT_FIELDS = ("at", "status", "by", "note")


class LazyPattern:
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

    def sub(self, replacement: str, text: str) -> str:
        return self.compiled().sub(replacement, text)


# Docker's tag grammar: 128 characters at most, no leading '.' or '-'.
TAG_PATTERN = LazyPattern(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
ID_PATTERN = LazyPattern(r"(?P<branch>.+)_(?P<sha>[0-9a-f]{7})_(?P<timestamp>\d{14})")
SHA_PATTERN = LazyPattern(r"[0-9a-f]{7,40}|[0-9a-f]{64}")
ENVIRONMENT_PATTERN = LazyPattern(r"[a-z][a-z0-9_-]{0,62}")
RUN_ID_PATTERN = LazyPattern(r"[0-9]{1,20}")
URL_PATTERN = LazyPattern(r"https?://[^\s\x00-\x1f\x7f]+")
UNSAFE_TAG_CHARACTERS = LazyPattern(r"[^A-Za-z0-9_.-]+")
# What git check-ref-format refuses in a branch name.
BAD_BRANCH_PATTERN = LazyPattern(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")
CONTROL_CHARACTERS = LazyPattern(r"[\x00-\x1f\x7f-\x9f]")
NOTE_CONTROL_CHARACTERS = LazyPattern(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"
# Bytes a file: URI carries as they are (the rest are %-escaped).
URI_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
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

TABLE_FORMATS = (
    "plain",
    "simple",
    "github",
    "grid",
    "simple_grid",
    "rounded_grid",
    "heavy_grid",
    "mixed_grid",
    "double_grid",
    "fancy_grid",
    "outline",
    "simple_outline",
    "rounded_outline",
    "heavy_outline",
    "mixed_outline",
    "double_outline",
    "fancy_outline",
    "pipe",
    "orgtbl",
    "jira",
    "presto",
    "pretty",
    "psql",
    "rst",
    "mediawiki",
    "moinmoin",
    "youtrack",
    "html",
    "latex",
    "latex_raw",
    "latex_booktabs",
    "latex_longtable",
    "textile",
    "tsv",
)
OUTPUT_FORMATS = ("table", "json", "csv", *TABLE_FORMATS)

SELECT_DEPLOYMENT = "SELECT {columns} FROM deployments".format(  # noqa: S608 (constant columns)
    columns=", ".join(FIELDS)
)
INSERT_DEPLOYMENT = "INSERT INTO deployments ({columns}) VALUES ({names})".format(  # noqa: S608
    columns=", ".join(FIELDS), names=", ".join(f":{field}" for field in FIELDS)
)
INSERT_EVENT = (
    "INSERT INTO events (deployment_id, status, at, by, note)"
    " VALUES (:deployment_id, :status, :at, :by, :note)"
)
SELECT_EVENTS = "SELECT at, status, by, note FROM events WHERE deployment_id = ? ORDER BY seq"
SELECT_FIRST_STATUS = "SELECT status FROM events WHERE deployment_id = ? ORDER BY seq LIMIT 1"
SELECT_SCHEMA_STATE = (
    "SELECT (SELECT * FROM pragma_application_id()), (SELECT * FROM pragma_user_version()),"
    " (SELECT count(*) FROM sqlite_master)"
)
SELECT_RUNNING = SELECT_DEPLOYMENT + " WHERE environment = ? ORDER BY seq DESC LIMIT 1"
SELECT_LATEST_WITH_STATUS = (
    SELECT_DEPLOYMENT + " WHERE environment = ? AND status = ? ORDER BY seq DESC LIMIT 1"
)
SELECT_ROLLBACK_CANDIDATE = (
    SELECT_DEPLOYMENT + " WHERE environment = ? AND status = 'verified' AND image_tag != ?"
    " AND blocked = 0 ORDER BY seq DESC LIMIT 1"
)

# Control: blocking, promotion gates, retention, notifications.
# Events that record an action on a deployment without changing its status.
BLOCKED_EVENT = "blocked"
UNBLOCKED_EVENT = "unblocked"
GATE_OVERRIDE_EVENT = "gate_overridden"
CONTROL_EVENTS = (BLOCKED_EVENT, UNBLOCKED_EVENT, GATE_OVERRIDE_EVENT)
# Promotion gates, SOURCE:TARGET[,...]: TARGET only receives images verified in SOURCE.
GATES_ENV_VAR = "DEPLOYMENT_TRACKER_GATES"
DEFAULT_GATES = "staging:production"
NO_GATES = "none"
WEBHOOK_ENV_VAR = "DEPLOYMENT_TRACKER_WEBHOOK_URL"
NOTIFY_EVENTS = ("verification-failed", "rollback", "rollback-failed")
NOTIFY_TIMEOUT_SECONDS = 10.0
NOTIFY_RETRIES = 3
NOTIFY_RETRY_DELAY_SECONDS = 2.0
SELECT_GATE_PASS = (
    SELECT_DEPLOYMENT + " WHERE environment = ? AND image_tag = ? AND status = 'verified'"
    " AND blocked = 0 ORDER BY seq DESC LIMIT 1"
)
SELECT_GATE_SAME_COMMIT = (
    SELECT_DEPLOYMENT + " WHERE environment = ? AND commit_sha = ? AND status = 'verified'"
    " AND blocked = 0 ORDER BY seq DESC LIMIT 1"
)
SELECT_PROMOTION_CANDIDATE = (
    SELECT_DEPLOYMENT + " WHERE environment = ? AND status = 'verified' AND blocked = 0"
    " ORDER BY seq DESC LIMIT 1"
)
SELECT_PRUNE_ROWS = (
    "SELECT seq, id, environment, status, image_tag, blocked, rollback_of, promoted_from"
    " FROM deployments ORDER BY seq DESC"
)

# Insight: DORA figures (stats) and the timeline picture.
DEFAULT_SINCE = "30d"
SINCE_PATTERN = LazyPattern(r"(?P<amount>[0-9]{1,5})(?P<unit>[hdw])")
SINCE_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
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
TIMELINE_WIDTH = 1200
TIMELINE_LABEL_WIDTH = 175
TIMELINE_LANE_HEIGHT = 100
# Marks closer than the gap (px) stack into rows below one another.
TIMELINE_MARK_GAP = 13
TIMELINE_ROWS = 3
TIMELINE_ROW_HEIGHT = 14
TIMELINE_STYLE = """
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
MERMAID_SAFE_CHARACTER = LazyPattern(r"[A-Za-z0-9 _./:@+,=-]")
SELECT_ENVIRONMENTS = "SELECT DISTINCT environment FROM deployments ORDER BY environment"
# A change is a deployment that is not a rollback; it failed if its
# verification failed or it was rolled back. The window is on deployed_at.
SELECT_STATS_COUNTS = """
    SELECT coalesce(sum(rollback_of IS NULL), 0), coalesce(sum(rollback_of IS NOT NULL), 0),
        coalesce(sum(rollback_of IS NULL AND status IN ('failed', 'rolled_back')), 0)
    FROM deployments
    WHERE environment = :environment AND deployed_at >= :since AND deployed_at <= :until
"""
# Per failed change: seconds until the next deployment in its environment that
# was verified (NULL while there is none).
SELECT_RESTORE_SECONDS = """
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
SELECT_LEAD_SECONDS = """
    SELECT CAST(strftime('%s', verified_at) AS INTEGER)
        - CAST(strftime('%s', committed_at) AS INTEGER)
    FROM deployments
    WHERE environment = :environment AND deployed_at >= :since AND deployed_at <= :until
        AND rollback_of IS NULL AND committed_at IS NOT NULL AND verified_at IS NOT NULL
        AND status IN ('verified', 'rolled_back')
"""

# History on a git branch (with-history).
HISTORY_REMOTE = "origin"
HISTORY_BRANCH = "deployment-history"
HISTORY_FILE = "deployments.db"
HISTORY_ATTEMPTS = 10
HISTORY_BACKOFF_SECONDS = 0.5
HISTORY_MAX_BACKOFF_SECONDS = 8.0
HISTORY_REMOTE_ENV = "DEPLOYMENT_HISTORY_REMOTE"
HISTORY_BRANCH_ENV = "DEPLOYMENT_HISTORY_BRANCH"
# A token for https remotes, sent as an http.extraheader through git's
# GIT_CONFIG_* environment: never written to .git/config nor put on a command line.
HISTORY_TOKEN_ENV = "DEPLOYMENT_HISTORY_TOKEN"  # noqa: S105 (a variable name, not a secret)
# Commands that only read: they never push, and need the branch to exist.
HISTORY_READ_COMMANDS = frozenset(
    {"list", "latest", "get", "rollback-target", "promote", "stats", "timeline"}
)
HISTORY_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "deployment-tracker",
    "GIT_AUTHOR_EMAIL": "deployment-tracker@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "deployment-tracker",
    "GIT_COMMITTER_EMAIL": "deployment-tracker@users.noreply.github.com",
}
HISTORY_README = f"""\
# Deployment history

This branch holds `{HISTORY_FILE}`, the SQLite database of every deployment,
written only by `deployment-tracker with-history`. Each commit is one change.
Read it with:

    git fetch origin {HISTORY_BRANCH}
    git show origin/{HISTORY_BRANCH}:{HISTORY_FILE} > deployments.db
    deployment-tracker --db deployments.db list --all
"""

# --------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------


class TrackerError(Exception):
    """A failure the user can act on; shown as one line with its exit code."""

    exit_code = 1


class NotFound(TrackerError):
    """No such deployment, or nothing matches."""


class Refused(TrackerError):
    """The operation makes no sense for the data as it is."""


class DatabaseProblem(TrackerError):
    """The database is missing, unreadable, corrupt or from a newer version."""


class InvalidInput(TrackerError):
    """A value given by the caller is not acceptable."""

    exit_code = 2


class GitFailure(Exception):
    """A git command failed; worth another attempt after a backoff."""


# --------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------

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


def schema_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(db: sqlite3.Connection) -> None:
    """Apply pending migrations, each with its bookkeeping in one transaction.

    The version is re-read after taking the write lock, so processes racing to
    create the same database apply each migration exactly once.
    """
    for number, step in enumerate(MIGRATIONS, start=1):
        if schema_version(db) >= number:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(db) < number:
                step(db)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


# --------------------------------------------------------------------------
# Data layer
# --------------------------------------------------------------------------

Record = dict[str, Any]


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime(ISO_FORMAT)


def describe(value: str) -> str:
    """Show a rejected value safely: escaped and short."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def check_text(name: str, value: str, *, multiline: bool = False) -> str:
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
    controls = NOTE_CONTROL_CHARACTERS if multiline else CONTROL_CHARACTERS
    if controls.search(value):
        raise InvalidInput(f"{name} must not contain control characters: {describe(value)}")
    return value


def check_environment(value: str) -> str:
    if not ENVIRONMENT_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"environment must be lowercase letters, digits, '-' or '_',"
            f" starting with a letter: {describe(value)}"
        )
    return value


def check_branch(value: str) -> str:
    check_text("branch", value)
    if (
        BAD_BRANCH_PATTERN.search(value)
        or value.startswith(("-", "/", "."))
        or value.endswith(("/", "."))
        or value == "@"
    ):
        raise InvalidInput(f"branch is not a valid git branch name: {describe(value)}")
    return value


def check_sha(value: str) -> str:
    if not SHA_PATTERN.fullmatch(value):
        raise InvalidInput(
            f"commit must be 7 to 40 (or 64) lowercase hex characters: {describe(value)}"
        )
    return value


def check_image_tag(value: str) -> str:
    if not TAG_PATTERN.fullmatch(value):
        raise InvalidInput(f"image tag is not a valid Docker tag: {describe(value)}")
    return value


def check_run_id(value: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(value):
        raise InvalidInput(f"run id must be a number: {describe(value)}")
    return value


def check_run_url(value: str) -> str:
    check_text("run_url", value)
    if not URL_PATTERN.fullmatch(value):
        raise InvalidInput(f"run URL must be an http(s) URL: {describe(value)}")
    return value


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidInput(f"{name} must be one of {', '.join(choices)}: {describe(value)}")
    return value


def check_fields(**values: Optional[str]) -> None:
    """Validate each given field with its rule; None means not given."""
    for name, value in values.items():
        if value is not None:
            FIELD_CHECKS[name](value)


def parse_timestamp(value: str, *, name: str) -> datetime:
    """Parse an ISO 8601 time; a time without a zone is taken as UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{name} is not an ISO 8601 time: {describe(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment > utc_now() + FUTURE_TOLERANCE:
        raise InvalidInput(f"{name} is in the future: {describe(value)}")
    return moment


def sanitise_branch(branch: str) -> str:
    """The branch as it may appear in a Docker tag.

    Unsafe characters become '-'; a name too long for the tag is cut and given
    a hash of the full name, so two long branches never share a prefix tag.
    """
    part = UNSAFE_TAG_CHARACTERS.sub("-", branch)
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
    match = ID_PATTERN.fullmatch(deployment_id)
    if not match or not TAG_PATTERN.fullmatch(deployment_id):
        raise InvalidInput(
            f"deployment id must look like BRANCH_SHA7_YYYYmmddHHMMSS: {describe(deployment_id)}"
        )
    try:
        moment = datetime.strptime(match["timestamp"], TIMESTAMP_FORMAT)
    except ValueError:
        raise InvalidInput(
            f"deployment id has an impossible time: {describe(deployment_id)}"
        ) from None
    moment = moment.replace(tzinfo=timezone.utc)
    if moment > utc_now() + FUTURE_TOLERANCE:
        raise InvalidInput(f"deployment id's time is in the future: {deployment_id}")
    return match["branch"], match["sha"], moment


def check_id(deployment_id: str) -> str:
    """Validate an id given to look something up (its time is not checked)."""
    if not ID_PATTERN.fullmatch(deployment_id) or not TAG_PATTERN.fullmatch(deployment_id):
        raise InvalidInput(
            f"deployment id must look like BRANCH_SHA7_YYYYmmddHHMMSS: {describe(deployment_id)}"
        )
    return deployment_id


FIELD_CHECKS: dict[str, Callable[[str], str]] = {
    "branch": check_branch,
    "commit_sha": check_sha,
    "image_tag": check_image_tag,
    "actor": lambda value: check_text("actor", value),
    "verified_by": lambda value: check_text("verified_by", value),
    "run_id": check_run_id,
    "run_url": check_run_url,
    "rollback_of": check_id,
    "promoted_from": check_id,
    "note": lambda value: check_text("note", value, multiline=True),
}


def connect(path: str, *, write: bool) -> sqlite3.Connection:
    """Open the database, creating and migrating it only for a write.

    Reading never creates a file. A file that is not ours, or comes from a
    newer version of this tool, is refused before anything touches it.
    """
    # The path as pathlib would see it (no trailing '/'; '' is the current
    # folder), without importing pathlib: start-up time counts.
    location = path.rstrip("/" + os.sep) or (path[:1] if path else ".")
    if os.path.isdir(location):
        raise DatabaseProblem(f"database path is a directory: {path}")
    exists = os.path.exists(location)
    if not exists and not write:
        raise DatabaseProblem(f"no database at {path} (record a deployment first, or pass --db)")
    try:
        if write:
            if not exists:
                from pathlib import Path

                Path(location).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        else:
            # mode=rw never creates the file; SQLite falls back to read-only
            # by itself when the file is write-protected.
            db = open_uri(location, "mode=rw")
    except (sqlite3.Error, OSError) as error:
        raise DatabaseProblem(f"cannot open database {path}: {error}") from None
    try:
        check_schema(db, path, write=write)
    except DatabaseProblem:
        db.close()
        if (
            write
            or not os.path.exists(location)
            or os.access(os.path.dirname(location) or ".", os.W_OK)
        ):
            raise
        # A WAL database in a read-only folder cannot get its -shm file; as
        # nobody can write there either, reading it as immutable is safe...
        wal = f"{location}-wal"
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            # ...unless commits still sit in the -wal file: immutable skips them.
            raise DatabaseProblem(
                f"{wal} holds commits not yet in {path} and the folder is read-only;"
                " open it once where it is writable"
            ) from None
        db = open_uri(location, "mode=ro&immutable=1")
        try:
            check_schema(db, path, write=False)
        except BaseException:
            db.close()
            raise
    except BaseException:
        db.close()
        raise
    return db


def open_uri(location: str, query: str) -> sqlite3.Connection:
    """Open `location` by a file: URI, as pathlib's resolve().as_uri() would spell it."""
    if os.name == "nt":
        from pathlib import Path

        address = Path(location).resolve().as_uri()
    else:
        absolute = os.fsencode(os.path.realpath(location))
        address = "file://" + "".join(
            chr(byte) if byte in URI_SAFE_BYTES else f"%{byte:02X}" for byte in absolute
        )
    uri = f"{address}?{query}"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)


def check_schema(db: sqlite3.Connection, path: str, *, write: bool) -> None:
    try:
        # One statement, so one snapshot: another process may be creating the
        # schema between two separate reads.
        application_id, version, has_tables = db.execute(SELECT_SCHEMA_STATE).fetchone()
    except sqlite3.OperationalError as error:
        # I/O, permissions or a full disk: the file may be fine, so don't call it broken.
        raise DatabaseProblem(f"cannot use database {path}: {error}") from None
    except sqlite3.DatabaseError as error:
        raise DatabaseProblem(f"{path} is not a readable deployment database ({error})") from None
    if application_id not in (0, APPLICATION_ID) or (
        application_id == 0 and version == 0 and has_tables
    ):
        raise DatabaseProblem(f"{path} is a SQLite database, but not a deployment database")
    if version > len(MIGRATIONS):
        raise DatabaseProblem(
            f"{path} has schema version {version}, newer than this tool knows"
            f" ({len(MIGRATIONS)}); upgrade deployment-tracker"
        )
    if version == len(MIGRATIONS):
        if write:
            prepare_for_writes(db, path)
        return
    if not write:
        raise DatabaseProblem(
            f"{path} has schema version {version}; any write command"
            f" (e.g. record) upgrades it to {len(MIGRATIONS)}"
        )
    prepare_for_writes(db, path)
    try:
        migrate(db)
    except sqlite3.Error as error:
        raise DatabaseProblem(f"cannot upgrade {path}: {error}") from None


def prepare_for_writes(db: sqlite3.Connection, path: str) -> None:
    """WAL with a busy timeout lets writers queue instead of failing."""
    try:
        if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            switch_to_wal(db)
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as error:
        raise DatabaseProblem(f"cannot write to {path}: {error}") from None


def switch_to_wal(db: sqlite3.Connection) -> None:
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


T = TypeVar("T")


def write_transaction(db: sqlite3.Connection, action: Callable[[], T]) -> T:
    """Run `action` in one BEGIN IMMEDIATE transaction: all of it or none."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = action()
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def row_to_record(row: Sequence[Any]) -> Record:
    record = dict(zip(FIELDS, row))
    record["blocked"] = bool(record["blocked"])
    return record


def find(db: sqlite3.Connection, deployment_id: str) -> Optional[Record]:
    row = db.execute(SELECT_DEPLOYMENT + " WHERE id = ?", (deployment_id,)).fetchone()
    return row_to_record(row) if row else None


def get_deployment(db: sqlite3.Connection, deployment_id: str) -> Record:
    record = find(db, check_id(deployment_id))
    if record is None:
        raise NotFound(f"no deployment with id {deployment_id}")
    return record


def events(db: sqlite3.Connection, deployment_id: str) -> list[Record]:
    return [dict(zip(EVENT_FIELDS, row)) for row in db.execute(SELECT_EVENTS, (deployment_id,))]


def add_event(
    db: sqlite3.Connection,
    deployment_id: str,
    status: str,
    at: str,
    by: Optional[str],
    note: Optional[str],
) -> None:
    db.execute(
        INSERT_EVENT,
        {"deployment_id": deployment_id, "status": status, "at": at, "by": by, "note": note},
    )


def running(db: sqlite3.Connection, environment: str) -> Optional[Record]:
    """The deployment running in an environment: the newest one recorded."""
    row = db.execute(SELECT_RUNNING, (environment,)).fetchone()
    return row_to_record(row) if row else None


def check_record_input(
    *,
    environment: str,
    branch: Optional[str] = None,
    commit_sha: Optional[str] = None,
    image_tag: Optional[str] = None,
    deployment_id: Optional[str] = None,
    status: str = "deployed",
    actor: Optional[str] = None,
    run_id: Optional[str] = None,
    run_url: Optional[str] = None,
    rollback_of: Optional[str] = None,
    note: Optional[str] = None,
    committed_at: Optional[str] = None,
    promoted_from: Optional[str] = None,
    override_gate: Optional[str] = None,
) -> Optional[str]:
    """Validate what `record` was given, before any file is touched.

    Returns the commit time normalised to ISO 8601 UTC.
    """
    check_environment(environment)
    check_choice("status", status, RECORD_STATUSES)
    check_fields(
        branch=branch,
        commit_sha=commit_sha,
        image_tag=image_tag,
        actor=actor,
        run_id=run_id,
        run_url=run_url,
        rollback_of=rollback_of,
        note=note,
        promoted_from=promoted_from,
    )
    if override_gate is not None:
        check_text("reason", override_gate)
    if rollback_of is not None and promoted_from is not None:
        raise InvalidInput("a deployment is a rollback or a promotion, not both")
    if rollback_of is None and promoted_from is None and (branch is None or commit_sha is None):
        raise InvalidInput(
            "--branch and --commit are required (unless --rollback-of or --promoted-from is given)"
        )
    if deployment_id is not None:
        _, id_sha, _ = parse_id(deployment_id)
        if commit_sha is not None and not commit_sha.startswith(id_sha):
            raise InvalidInput(
                f"deployment id {deployment_id} names commit {id_sha},"
                f" not {commit_sha[:SHORT_SHA_LENGTH]}"
            )
    if committed_at is None:
        return None
    return iso(parse_timestamp(committed_at, name="commit time"))


def record_deployment(
    db: sqlite3.Connection,
    *,
    environment: str,
    branch: Optional[str] = None,
    commit_sha: Optional[str] = None,
    image_tag: Optional[str] = None,
    deployment_id: Optional[str] = None,
    status: str = "deployed",
    actor: Optional[str] = None,
    run_id: Optional[str] = None,
    run_url: Optional[str] = None,
    rollback_of: Optional[str] = None,
    note: Optional[str] = None,
    committed_at: Optional[str] = None,
    now: Optional[datetime] = None,
    promoted_from: Optional[str] = None,
    override_gate: Optional[str] = None,
    gates: Optional[dict[str, str]] = None,
    warn: Callable[[str], None] = lambda message: None,
) -> tuple[Record, bool]:
    """Record a deployment; returns it and whether it was new.

    Recording the same id again with the same fields is a success that changes
    nothing, so a retried CI step is safe. A rollback (`rollback_of`) takes the
    target's branch, commit and image unless given, and marks the deployment it
    replaces as rolled back. A promotion (`promoted_from`) takes them from the
    verified deployment it promotes. Outside rollbacks, a gated environment
    (`gates`, target -> source; default from $DEPLOYMENT_TRACKER_GATES) only
    takes an image verified in its source, unless `override_gate` gives a reason.
    """
    gates = promotion_gates(os.environ.get(GATES_ENV_VAR)) if gates is None else gates
    committed_at = check_record_input(
        environment=environment,
        branch=branch,
        commit_sha=commit_sha,
        image_tag=image_tag,
        deployment_id=deployment_id,
        status=status,
        actor=actor,
        run_id=run_id,
        run_url=run_url,
        rollback_of=rollback_of,
        note=note,
        committed_at=committed_at,
        promoted_from=promoted_from,
        override_gate=override_gate,
    )
    moment = now or utc_now()

    def insert() -> tuple[Record, bool]:
        nonlocal branch, commit_sha, image_tag, deployment_id
        target = None
        if rollback_of is not None:
            target = find(db, rollback_of)
            if target is None:
                raise NotFound(f"rollback target {rollback_of} does not exist")
            if target["environment"] != environment:
                raise Refused(
                    f"rollback target {rollback_of} is in {target['environment']},"
                    f" not {environment}"
                )
            if image_tag is not None and image_tag != target["image_tag"]:
                raise InvalidInput(
                    f"a rollback redeploys the target's image {target['image_tag']},"
                    f" not {image_tag}"
                )
            branch = branch or target["branch"]
            commit_sha = commit_sha or target["commit_sha"]
            image_tag = target["image_tag"]
        if promoted_from is not None:
            source = promotion_source(db, promoted_from, environment, image_tag)
            branch = branch or source["branch"]
            commit_sha = commit_sha or source["commit_sha"]
            image_tag = source["image_tag"]
        assert branch is not None and commit_sha is not None
        if deployment_id is None:
            deployment_id = make_id(branch, commit_sha, moment)
        record: Record = {
            "id": deployment_id,
            "environment": environment,
            "branch": branch,
            "commit_sha": commit_sha,
            "image_tag": image_tag or deployment_id,
            "status": status,
            "deployed_at": iso(moment),
            "verified_at": None,
            "verified_by": None,
            "actor": actor,
            "run_id": run_id,
            "run_url": run_url,
            "rollback_of": rollback_of,
            "note": note,
            "committed_at": committed_at,
            "promoted_from": promoted_from,
            "blocked": False,
            "blocked_at": None,
            "blocked_by": None,
            "blocked_reason": None,
        }
        existing = find(db, deployment_id)
        if existing is not None:
            first_status = db.execute(SELECT_FIRST_STATUS, (deployment_id,)).fetchone()
            differing = [field for field in IDENTITY_FIELDS if existing[field] != record[field]]
            if first_status and first_status[0] != status:
                differing.append("status")
            if differing:
                raise Refused(
                    f"deployment {deployment_id} is already recorded with a different"
                    f" {', '.join(differing)}"
                )
            return existing, False
        replaced = running(db, environment) if target is not None else None
        if replaced is not None and replaced["id"] == rollback_of:
            raise Refused(f"{rollback_of} is what is running in {environment} now")
        # A rollback redeploys what this environment already ran: no gate.
        gate_problem = None if target is not None else pass_gate(db, record, gates, override_gate)
        db.execute(INSERT_DEPLOYMENT, record)
        add_event(db, deployment_id, status, record["deployed_at"], actor, note)
        if gate_problem is not None:
            record_gate_override(db, record, gate_problem, override_gate, warn)
        if replaced is not None and replaced["status"] in ("deployed", "verified"):
            db.execute(
                "UPDATE deployments SET status = 'rolled_back' WHERE id = ?",
                (replaced["id"],),
            )
            add_event(
                db,
                replaced["id"],
                "rolled_back",
                record["deployed_at"],
                actor,
                f"replaced by rollback {deployment_id} to {rollback_of}",
            )
        return record, True

    return write_transaction(db, insert)


def check_verify_input(
    deployment_id: str, status: str, *, by: Optional[str] = None, note: Optional[str] = None
) -> None:
    check_id(deployment_id)
    check_choice("status", status, VERIFY_STATUSES)
    check_fields(verified_by=by, note=note)


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
    check_verify_input(deployment_id, status, by=by, note=note)
    at = iso(now or utc_now())

    def update() -> tuple[Record, bool]:
        record = get_deployment(db, deployment_id)
        if record["status"] == status:
            return record, False
        if status not in TRANSITIONS[record["status"]]:
            raise Refused(
                f"deployment {deployment_id} is {record['status']}; it cannot become {status}"
            )
        db.execute(
            "UPDATE deployments SET status = ?, verified_at = ?, verified_by = ? WHERE id = ?",
            (status, at, by, deployment_id),
        )
        add_event(db, deployment_id, status, at, by, note)
        record.update(status=status, verified_at=at, verified_by=by)
        return record, True

    return write_transaction(db, update)


def list_deployments(
    db: sqlite3.Connection,
    *,
    environment: Optional[str] = None,
    branch: Optional[str] = None,
    status: Optional[str] = None,
    limit: Optional[int] = DEFAULT_LIST_LIMIT,
) -> Iterator[Record]:
    """Deployments newest first, streamed from the database."""
    conditions = []
    parameters: list[Any] = []
    for column, value in (("environment", environment), ("branch", branch), ("status", status)):
        if value is not None:
            conditions.append(f"{column} = ?")
            parameters.append(value)
    sql = SELECT_DEPLOYMENT
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += " ORDER BY seq DESC"
    if limit is not None:
        sql += " LIMIT ?"
        parameters.append(limit)
    for row in db.execute(sql, parameters):
        yield row_to_record(row)


def latest(db: sqlite3.Connection, environment: str, status: str = "verified") -> Record:
    check_environment(environment)
    if status == "any":
        record = running(db, environment)
    else:
        row = db.execute(SELECT_LATEST_WITH_STATUS, (environment, status)).fetchone()
        record = row_to_record(row) if row else None
    if record is None:
        qualifier = "" if status == "any" else f"{status} "
        raise NotFound(f"no {qualifier}deployment in {environment}")
    return record


def rollback_target(
    db: sqlite3.Connection,
    environment: str,
    deployment_id: Optional[str] = None,
    *,
    force: bool = False,
    warn: Callable[[str], None] = lambda message: None,
) -> Record:
    """The deployment to roll back to; never the one being rolled back from.

    Without an id: the latest verified, unblocked deployment whose image
    differs from the running one. With an id: that deployment, which must be in
    the environment, have been verified and not be blocked (`force` overrides
    these checks, loudly).
    """
    check_environment(environment)
    current = running(db, environment)
    if current is None:
        raise NotFound(f"no deployments in {environment}")
    if deployment_id is None:
        row = db.execute(SELECT_ROLLBACK_CANDIDATE, (environment, current["image_tag"])).fetchone()
        if row is None:
            raise NotFound(
                f"no verified deployment in {environment} to roll back to"
                f" (running: {current['id']})"
            )
        return row_to_record(row)
    target = get_deployment(db, deployment_id)
    if target["environment"] != environment:
        raise Refused(
            f"deployment {deployment_id} is in {target['environment']}, not {environment}"
        )
    if target["id"] == current["id"]:
        raise Refused(f"deployment {deployment_id} is what is running in {environment} now")
    problems = []
    was_verified = target["verified_at"] is not None and target["status"] in (
        "verified",
        "rolled_back",
    )
    if not was_verified:
        problems.append(f"was never verified (status {target['status']})")
    if target["image_tag"] == current["image_tag"]:
        problems.append(f"runs the same image as now ({target['image_tag']})")
    if target["blocked"]:
        problems.append(f"is blocked ({target['blocked_reason']})")
    if problems and not force:
        raise Refused(
            f"deployment {deployment_id} {' and '.join(problems)}; --force to use it anyway"
        )
    for problem in problems:
        warn(f"WARNING: forced: deployment {deployment_id} {problem}")
    return target


def promotion_gates(text: Optional[str]) -> dict[str, str]:
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
            ENVIRONMENT_PATTERN.fullmatch(source)
            and ENVIRONMENT_PATTERN.fullmatch(target)
            and source != target
            and target not in gates
        ):
            raise InvalidInput(
                f"{GATES_ENV_VAR} must be SOURCE:TARGET pairs of different environments,"
                f" one source per target, separated by commas (or 'none'): {describe(text)}"
            )
        gates[target] = source
    return gates


def gate_refusal(db: sqlite3.Connection, record: Record, gates: dict[str, str]) -> Optional[str]:
    """Why the gate keeps `record` out of its environment; None if it may enter."""
    source = gates.get(record["environment"])
    if source is None or db.execute(SELECT_GATE_PASS, (source, record["image_tag"])).fetchone():
        return None
    problem = (
        f"{record['environment']} only receives images verified in {source}:"
        f" image {record['image_tag']} has no verified, unblocked {source} deployment"
    )
    row = db.execute(SELECT_GATE_SAME_COMMIT, (source, record["commit_sha"])).fetchone()
    if row is not None:
        problem += (
            f" (commit {record['commit_sha'][:SHORT_SHA_LENGTH]} was verified there"
            f" as image {row_to_record(row)['image_tag']})"
        )
    return problem


def pass_gate(
    db: sqlite3.Connection, record: Record, gates: dict[str, str], override: Optional[str]
) -> Optional[str]:
    """Refuse `record` at its gate unless overridden; returns the overridden problem."""
    problem = gate_refusal(db, record, gates)
    if problem is not None and override is None:
        raise Refused(f"{problem}; promote a verified image, or --override-gate REASON")
    return problem


def record_gate_override(
    db: sqlite3.Connection,
    record: Record,
    problem: str,
    reason: Optional[str],
    warn: Callable[[str], None],
) -> None:
    note = f"{problem}; overridden: {reason}"
    add_event(db, record["id"], GATE_OVERRIDE_EVENT, record["deployed_at"], record["actor"], note)
    warn(f"WARNING: promotion gate overridden: {problem} (reason: {reason})")


def promotion_source(
    db: sqlite3.Connection, source_id: str, environment: str, image_tag: Optional[str] = None
) -> Record:
    """The deployment a promotion into `environment` reuses: verified and not blocked."""
    source = find(db, check_id(source_id))
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
    if image_tag is not None and image_tag != source["image_tag"]:
        raise InvalidInput(
            f"a promotion deploys the image of {source_id} ({source['image_tag']}), not {image_tag}"
        )
    return source


def promotion_candidate(
    db: sqlite3.Connection,
    source: str,
    target: str,
    deployment_id: Optional[str] = None,
) -> Record:
    """What to promote from `source` to `target`, reusing its image.

    Without an id: the latest verified, unblocked deployment in `source`. With
    an id: that deployment, which must be in `source`, verified and unblocked.
    Either way its image must not be what `target` runs now.
    """
    check_environment(source)
    check_environment(target)
    if source == target:
        raise InvalidInput(f"--from and --to must be different environments: {source}")
    if deployment_id is None:
        row = db.execute(SELECT_PROMOTION_CANDIDATE, (source,)).fetchone()
        if row is None:
            raise NotFound(f"no verified, unblocked deployment in {source} to promote")
        candidate = row_to_record(row)
    else:
        candidate = get_deployment(db, deployment_id)
        if candidate["environment"] != source:
            raise Refused(
                f"deployment {deployment_id} is in {candidate['environment']}, not {source}"
            )
        candidate = promotion_source(db, deployment_id, target)
    current = running(db, target)
    if current is not None and current["image_tag"] == candidate["image_tag"]:
        raise Refused(
            f"{target} already runs image {candidate['image_tag']} (deployment {current['id']})"
        )
    return candidate


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
    check_id(deployment_id)
    check_text("reason", reason)
    if by is not None:
        check_text("by", by)
    at = iso(now or utc_now())

    def update() -> tuple[Record, bool]:
        record = get_deployment(db, deployment_id)
        if record["blocked"]:
            return record, False
        db.execute(
            "UPDATE deployments SET blocked = 1, blocked_at = ?, blocked_by = ?,"
            " blocked_reason = ? WHERE id = ?",
            (at, by, reason, deployment_id),
        )
        add_event(db, deployment_id, BLOCKED_EVENT, at, by, reason)
        record.update(blocked=True, blocked_at=at, blocked_by=by, blocked_reason=reason)
        return record, True

    return write_transaction(db, update)


def unblock_deployment(
    db: sqlite3.Connection,
    deployment_id: str,
    *,
    by: Optional[str] = None,
    reason: Optional[str] = None,
    now: Optional[datetime] = None,
) -> tuple[Record, bool]:
    """Lift a block; unblocking a deployment that is not blocked changes nothing."""
    check_id(deployment_id)
    if reason is not None:
        check_text("reason", reason)
    if by is not None:
        check_text("by", by)
    at = iso(now or utc_now())

    def update() -> tuple[Record, bool]:
        record = get_deployment(db, deployment_id)
        if not record["blocked"]:
            return record, False
        db.execute(
            "UPDATE deployments SET blocked = 0, blocked_at = NULL, blocked_by = NULL,"
            " blocked_reason = NULL WHERE id = ?",
            (deployment_id,),
        )
        add_event(db, deployment_id, UNBLOCKED_EVENT, at, by, reason)
        record.update(blocked=False, blocked_at=None, blocked_by=None, blocked_reason=None)
        return record, True

    return write_transaction(db, update)


def plan_prune(
    db: sqlite3.Connection, keep: int, environment: Optional[str] = None
) -> list[Record]:
    """The deployments a prune removes, newest first.

    In each environment (or only `environment`) the newest `keep` stay, and so
    do: the running deployment, the latest verified one, the rollback
    candidate, every blocked one, and everything a staying deployment links to
    through rollback_of or promoted_from, in any environment. Links always
    point to older deployments, so one pass from the newest finds them all.
    """
    if keep < 0:
        raise InvalidInput(f"keep must be 0 or more: {keep}")
    if environment is not None:
        check_environment(environment)
    seen: dict[str, int] = {}
    running_image: dict[str, str] = {}
    latest_verified: set[str] = set()
    rollback_candidate: set[str] = set()
    linked: set[str] = set()
    doomed: list[Record] = []
    for row in db.execute(SELECT_DEPLOYMENT + " ORDER BY seq DESC"):
        record = row_to_record(row)
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
    dry_run: bool = False,
    now: Optional[datetime] = None,
) -> tuple[list[Record], int]:
    """Delete what `plan_prune` selects, with its events, in one transaction.

    Returns the removed deployments and how many events went with them. A
    prune that removes something is logged in the prunes table. A dry run
    only reads.
    """
    if by is not None:
        check_text("by", by)
    at = iso(now or utc_now())

    def count_events(doomed: list[Record]) -> int:
        sql = "SELECT count(*) FROM events WHERE deployment_id = ?"
        return sum(db.execute(sql, (record["id"],)).fetchone()[0] for record in doomed)

    if dry_run:
        doomed = plan_prune(db, keep, environment)
        return doomed, count_events(doomed)

    def apply() -> tuple[list[Record], int]:
        import json

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

    return write_transaction(db, apply)


def prunes(db: sqlite3.Connection) -> list[Record]:
    """The log of prunes, oldest first."""
    columns = ("at", "by", "environment", "keep", "removed", "removed_events", "removed_ids")
    sql = f"SELECT {', '.join(columns)} FROM prunes ORDER BY seq"  # noqa: S608 (constant columns)
    return [dict(zip(columns, row)) for row in db.execute(sql)]


def notification_text(
    event: str, deployment_id: str, record: Optional[Record], message: Optional[str]
) -> str:
    """A Slack-style (mrkdwn) message about a deployment event."""

    def safe(value: Any) -> str:
        return shown_value(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    where = f" in *{safe(record['environment'])}*" if record else ""
    headline = {
        "verification-failed": f":x: Verification failed{where}: {safe(deployment_id)}",
        "rollback": f":rewind: Automatic rollback{where}: now running {safe(deployment_id)}",
        "rollback-failed": (
            f":rotating_light: Rollback failed{where} after {safe(deployment_id)};"
            " manual action needed"
        ),
    }[event]
    lines = [headline]
    if record is not None:
        details = [
            f"image {safe(record['image_tag'])}",
            f"branch {safe(record['branch'])}",
            f"commit {safe(record['commit_sha'][:SHORT_SHA_LENGTH])}",
            f"status {safe(record['status'])}",
        ]
        if record["rollback_of"]:
            details.append(f"restores {safe(record['rollback_of'])}")
        lines.append(" | ".join(details))
        if record["run_url"]:
            lines.append(f"<{safe(record['run_url'])}|CI run {safe(record['run_id'] or '')}>")
    if message:
        lines.append(safe(message))
    return "\n".join(lines)


def send_webhook(
    url: str,
    payload: Record,
    *,
    timeout: float = NOTIFY_TIMEOUT_SECONDS,
    retries: int = NOTIFY_RETRIES,
    retry_delay: float = NOTIFY_RETRY_DELAY_SECONDS,
    say: Callable[[str], None] = lambda message: None,
) -> bool:
    """POST `payload` as JSON; retry on timeouts, network errors, 429 and 5xx.

    Returns whether it was delivered. Never raises for a delivery problem, and
    never shows the URL, which is a secret for Slack-style webhooks.
    """
    import http.client
    import json
    import time
    import urllib.error
    import urllib.request

    if not URL_PATTERN.fullmatch(url):
        say("WARNING: notification not sent: the webhook URL is not an http(s) URL")
        return False
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"deployment-tracker/{__version__}",
    }
    attempts = retries + 1
    problem = ""
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, body, headers, method="POST")  # noqa: S310
        retryable = True
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                response.read()
            return True
        except urllib.error.HTTPError as error:
            problem = f"HTTP {error.code}"
            retryable = error.code == 429 or error.code >= 500
        except urllib.error.URLError as error:
            problem = str(error.reason)
        except (OSError, http.client.HTTPException) as error:
            problem = str(error) or type(error).__name__
        if not retryable or attempt == attempts:
            break
        delay = retry_delay * 2 ** (attempt - 1)
        say(f"notification attempt {attempt}/{attempts} failed ({problem}); retrying in {delay:g}s")
        time.sleep(delay)
    say(f"WARNING: notification not sent: {problem} (the deployment is not affected)")
    return False


def parse_since(value: str, now: datetime) -> datetime:
    """A window's start: a span back from now (`12h`, `30d`, `2w`) or an ISO 8601 date/time."""
    text = value.strip()
    match = SINCE_PATTERN.fullmatch(text)
    if match:
        amount = int(match["amount"])
        if amount == 0:
            raise InvalidInput(f"since must be a span longer than zero: {describe(value)}")
        return now - amount * SINCE_UNITS[match["unit"]]
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        start = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"since must be a span such as 30d, 12h or 2w, or an ISO 8601 date or time:"
            f" {describe(value)}"
        ) from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    if start >= now:
        raise InvalidInput(f"since must be before now ({iso(now)}): {describe(value)}")
    return start


def deployment_environments(db: sqlite3.Connection) -> list[str]:
    """Every environment that has a deployment, in name order."""
    return [row[0] for row in db.execute(SELECT_ENVIRONMENTS)]


def median_seconds(values: Sequence[int]) -> Optional[int]:
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
    names = [check_environment(environment)] if environment else deployment_environments(db)
    days = (until - since).total_seconds() / 86400
    figures = []
    for name in names:
        window = {"environment": name, "since": iso(since), "until": iso(until)}
        changes, rollbacks, failures = db.execute(SELECT_STATS_COUNTS, window).fetchone()
        restores = [row[0] for row in db.execute(SELECT_RESTORE_SECONDS, window)]
        restored = [seconds for seconds in restores if seconds is not None]
        lead_times = [row[0] for row in db.execute(SELECT_LEAD_SECONDS, window)]
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
                "time_to_restore_median_seconds": median_seconds(restored),
                "time_to_restore_worst_seconds": max(restored) if restored else None,
                "lead_time_changes": len(lead_times),
                "lead_time_median_seconds": median_seconds(lead_times),
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
        parameters.append(check_environment(environment))
    where = " WHERE " + " AND ".join(conditions)
    count_sql = "SELECT count(*) FROM deployments" + where  # noqa: S608 (constant conditions)
    total: int = db.execute(count_sql, parameters).fetchone()[0]
    rows = db.execute(
        SELECT_DEPLOYMENT + where + " ORDER BY seq DESC LIMIT ?", [*parameters, limit]
    )
    return [row_to_record(row) for row in rows][::-1], total


def rollback_targets_outside(
    db: sqlite3.Connection, records: Sequence[Record]
) -> dict[str, Record]:
    """The deployments that rollbacks among `records` restored, when not among them."""
    shown = {record["id"] for record in records}
    targets = {}
    for record in records:
        target_id = record["rollback_of"]
        if target_id and target_id not in shown and target_id not in targets:
            target = find(db, target_id)
            if target is not None:
                targets[target_id] = target
    return targets


# --------------------------------------------------------------------------
# Data layer: the history on a git branch (with-history)
# --------------------------------------------------------------------------
# CI runners are ephemeral, and runs from any branch and for any environment
# may write at the same moment. The shared history is therefore the database
# file committed on a dedicated branch of a git remote. `with-history` fetches
# that branch's tip, runs one tracker command against a private copy of the
# file, checkpoints it into a self-contained file and pushes a commit whose
# parent is the tip it started from. A push that loses a race is rejected (it
# is never forced), and the whole operation is redone on the newer tip after a
# randomised exponential backoff. Only git plumbing is used: the work tree, the
# index and HEAD of the local repository are never touched.


class GitResult:
    """What a git command returned."""

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def problem(self, what: str) -> str:
        lines = [line.strip() for line in self.stderr.decode("utf-8", "replace").splitlines()]
        lines = [line for line in lines if line]
        errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
        detail = (errors or lines or [f"exit status {self.returncode}"])[0]
        return f"{what}: {CONTROL_CHARACTERS.sub(' ', detail)}"


def run_git(
    repo: str,
    args: Sequence[str],
    env: dict[str, str],
    *,
    stdin: Optional[bytes] = None,
) -> GitResult:
    """Run git with an argument list (never a shell) in `repo`."""
    import subprocess

    try:
        completed = subprocess.run(
            ["git", "-C", repo, *args],
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env=env,
            check=False,
        )
    except OSError as error:
        raise DatabaseProblem(f"cannot run git: {error.strerror or error}") from None
    return GitResult(completed.returncode, completed.stdout, completed.stderr)


def git_checked(
    repo: str, args: Sequence[str], env: dict[str, str], *, stdin: Optional[bytes] = None
) -> bytes:
    result = run_git(repo, args, env, stdin=stdin)
    if result.returncode != 0:
        raise GitFailure(result.problem(f"git {args[0]} failed"))
    return result.stdout


def check_history_remote(remote: str) -> str:
    """A remote name, URL or path; never something git could read as an option."""
    if not remote.strip() or remote.startswith("-") or CONTROL_CHARACTERS.search(remote):
        raise InvalidInput(f"invalid history remote: {describe(remote)}")
    return remote


def check_history_branch(branch: str) -> str:
    try:
        return check_branch(branch)
    except InvalidInput:
        raise InvalidInput(f"invalid history branch: {describe(branch)}") from None


def history_git_environment(repo: str) -> dict[str, str]:
    """The environment for git: no prompts, the token as a header, an identity."""
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    token = env.pop(HISTORY_TOKEN_ENV, "")
    if token:
        import base64

        try:
            count = int(env.get("GIT_CONFIG_COUNT") or "0")
        except ValueError:
            count = 0
        server = env.get("GITHUB_SERVER_URL") or "https://github.com"
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode("ascii")
        env[f"GIT_CONFIG_KEY_{count}"] = f"http.{server.rstrip('/')}/.extraheader"
        env[f"GIT_CONFIG_VALUE_{count}"] = f"AUTHORIZATION: basic {basic}"
        env["GIT_CONFIG_COUNT"] = str(count + 1)
    if run_git(repo, ["var", "GIT_COMMITTER_IDENT"], env).returncode != 0:
        for name, value in HISTORY_FALLBACK_IDENTITY.items():
            env.setdefault(name, value)
    return env


def fetch_history_tip(
    repo: str, remote: str, branch: str, env: dict[str, str], *, shallow: bool
) -> Optional[str]:
    """Fetch the history branch; its tip commit, or None when it does not exist yet."""
    import secrets

    listed = run_git(
        repo, ["ls-remote", "--exit-code", "--heads", "--", remote, f"refs/heads/{branch}"], env
    )
    if listed.returncode == 2:
        return None
    if listed.returncode != 0:
        raise GitFailure(listed.problem(f"cannot reach {remote}"))
    # A private ref per call: concurrent calls in one repository do not meet.
    private_ref = f"refs/deployment-tracker/fetch-{os.getpid()}-{secrets.token_hex(4)}"
    fetch = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"]
    if shallow:
        # A shallow CI checkout only needs the tip, not every earlier copy of the file.
        fetch.append("--depth=1")
    git_checked(repo, [*fetch, "--", remote, f"+refs/heads/{branch}:{private_ref}"], env)
    try:
        tip = git_checked(repo, ["rev-parse", "--verify", f"{private_ref}^{{commit}}"], env)
    finally:
        run_git(repo, ["update-ref", "-d", private_ref], env)
    return tip.decode("ascii").strip()


def read_history_file(repo: str, commit: str, env: dict[str, str]) -> Optional[bytes]:
    listing = git_checked(repo, ["ls-tree", "-z", commit, "--", HISTORY_FILE], env)
    if not listing:
        return None
    blob = listing.split(b"\t", 1)[0].split()[2].decode("ascii")
    return git_checked(repo, ["cat-file", "blob", blob], env)


def make_self_contained(path: str) -> None:
    """Checkpoint the WAL into the file and leave it in rollback-journal mode."""
    from pathlib import Path

    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode = DELETE")
        result = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as error:
        raise DatabaseProblem(f"history database cannot be checkpointed: {error}") from None
    finally:
        db.close()
    if result != "ok":
        raise DatabaseProblem(f"history database failed its integrity check: {result}")
    for suffix in ("-wal", "-shm", "-journal"):
        Path(path + suffix).unlink(missing_ok=True)


def content_digest(path: str) -> Optional[str]:
    """A digest of the database's content (not its bytes); None when there is no file."""
    from pathlib import Path

    if not Path(path).exists():
        return None
    import hashlib

    digest = hashlib.sha256()
    db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        for pragma in ("user_version", "application_id"):
            digest.update(f"{pragma}={db.execute(f'PRAGMA {pragma}').fetchone()[0]}\n".encode())
        for statement in db.iterdump():
            digest.update(statement.encode("utf-8", "surrogatepass") + b"\n")
    except sqlite3.Error as error:
        raise DatabaseProblem(f"history database is unreadable: {error}") from None
    finally:
        db.close()
    return digest.hexdigest()


def commit_history_file(
    repo: str, path: str, parent: Optional[str], message: str, env: dict[str, str]
) -> str:
    """Write the file as the only content of a new commit on top of `parent`."""
    database = git_checked(repo, ["hash-object", "-w", "--", path], env).decode().strip()
    readme = (
        git_checked(repo, ["hash-object", "-w", "--stdin"], env, stdin=HISTORY_README.encode())
        .decode()
        .strip()
    )
    tree_listing = f"100644 blob {readme}\tREADME.md\n100644 blob {database}\t{HISTORY_FILE}\n"
    tree = git_checked(repo, ["mktree"], env, stdin=tree_listing.encode()).decode().strip()
    parents = ["-p", parent] if parent else []
    commit = git_checked(
        repo, ["commit-tree", tree, *parents, "-F", "-"], env, stdin=message.encode()
    )
    return commit.decode().strip()


def history_commit_message(args: Sequence[str]) -> str:
    import shlex

    line = "deployment-tracker " + " ".join(shlex.quote(arg) for arg in args)
    line = CONTROL_CHARACTERS.sub(" ", line)
    return (line if len(line) <= 200 else line[:197] + "...") + "\n"


def push_history(repo: str, remote: str, branch: str, commit: str, env: dict[str, str]) -> None:
    """Push without force: a push based on an outdated tip is rejected."""
    result = run_git(
        repo,
        [
            "push",
            "--quiet",
            "--no-verify",
            "--porcelain",
            "--",
            remote,
            f"{commit}:refs/heads/{branch}",
        ],
        env,
    )
    if result.returncode != 0:
        rejected = b"[rejected]" in result.stdout or b"[remote rejected]" in result.stdout
        raise GitFailure(
            f"push to {remote} rejected (the history moved on)"
            if rejected
            else result.problem(f"cannot push to {remote}")
        )


def run_tracker_command(
    args: Sequence[str], db_path: str, github_output: Optional[str]
) -> GitResult:
    """Run one tracker command in a child process against `db_path`."""
    import subprocess
    from pathlib import Path

    env = dict(os.environ)
    env.pop(HISTORY_TOKEN_ENV, None)
    env.pop(DB_ENV_VAR, None)
    env.pop("GITHUB_OUTPUT", None)
    if github_output is not None:
        env["GITHUB_OUTPUT"] = github_output
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--db", db_path, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        check=False,
    )
    return GitResult(completed.returncode, completed.stdout, completed.stderr)


def pass_on(result: GitResult, github_output: Optional[str], target: Optional[str]) -> None:
    """Hand the chosen attempt's output to our caller."""
    from pathlib import Path

    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    if github_output and target and Path(github_output).exists():
        content = Path(github_output).read_bytes()
        if content:
            try:
                with open(target, "ab") as output:
                    output.write(content)
            except OSError as error:
                raise TrackerError(
                    f"cannot write GITHUB_OUTPUT file {target}: {error.strerror}"
                ) from None


def run_with_history(  # noqa: PLR0915 (its imports are local: start-up time)
    args: Sequence[str],
    *,
    repo: str,
    remote: str,
    branch: str,
    attempts: int,
    backoff: float,
    say: Callable[[str], None],
) -> int:
    """Fetch, apply `args` to a fresh copy, commit and push; redo when the push is rejected.

    Returns the tracker command's exit code. Only the final attempt's output
    (stdout, stderr and $GITHUB_OUTPUT lines) reaches the caller.
    """
    import random
    import tempfile
    import time
    from pathlib import Path

    check_history_remote(remote)
    check_history_branch(branch)
    env = history_git_environment(repo)
    inside = run_git(repo, ["rev-parse", "--is-shallow-repository"], env)
    if inside.returncode != 0:
        raise DatabaseProblem(inside.problem(f"{repo} is not a usable git repository"))
    shallow = inside.stdout.strip() == b"true"
    target = os.environ.get("GITHUB_OUTPUT") or None
    jitter = random.SystemRandom()
    last_problem = ""
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            ceiling = min(HISTORY_MAX_BACKOFF_SECONDS, backoff * 2 ** (attempt - 2))
            delay = jitter.uniform(0, ceiling)
            say(f"history: {last_problem}; attempt {attempt}/{attempts} in {delay:.1f}s")
            time.sleep(delay)
        with tempfile.TemporaryDirectory(prefix="deployment-history-") as scratch:
            db_path = os.path.join(scratch, HISTORY_FILE)
            github_output = os.path.join(scratch, "github_output") if target else None
            try:
                tip = fetch_history_tip(repo, remote, branch, env, shallow=shallow)
                content = read_history_file(repo, tip, env) if tip else None
            except GitFailure as error:
                last_problem = str(error)
                continue
            if content is None and args[0] in HISTORY_READ_COMMANDS:
                raise NotFound(f"no deployment history yet: {remote} has no branch {branch}")
            if content is not None:
                Path(db_path).write_bytes(content)
                make_self_contained(db_path)
            before = content_digest(db_path)
            result = run_tracker_command(args, db_path, github_output)
            if result.returncode != 0:
                pass_on(result, None, None)
                return result.returncode
            if Path(db_path).exists():
                make_self_contained(db_path)
            after = content_digest(db_path)
            if after is None or after == before:
                pass_on(result, github_output, target)
                return 0
            try:
                commit = commit_history_file(repo, db_path, tip, history_commit_message(args), env)
                push_history(repo, remote, branch, commit, env)
            except GitFailure as error:
                last_problem = str(error)
                continue
            pass_on(result, github_output, target)
            return 0
    raise TrackerError(
        f"could not update the deployment history on {remote} {branch}"
        f" after {attempts} attempts: {last_problem}"
    )


# --------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------


def shown_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def table_cell(column: str, value: Any) -> str:
    """A value as a table shows it: a block stands out, its absence is blank."""
    if column == "blocked":
        return "BLOCKED" if value else ""
    return shown_value(value)


def echo_records(
    records: Iterable[Record], output_format: str, *, columns: Sequence[str] = FIELDS
) -> None:
    """Print records as a JSON array, CSV or a table; JSON and CSV stream."""
    out = sys.stdout
    if output_format == "json":
        import json

        # Streamed so that an unlimited list needs no more memory than a page.
        separator = "[\n  "
        for record in records:
            out.write(separator + json.dumps(record, ensure_ascii=False))
            separator = ",\n  "
        out.write("[]\n" if separator.startswith("[") else "\n]\n")
        return
    if output_format == "csv":
        import csv

        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        for record in records:
            writer.writerow([shown_value(record[field]) for field in FIELDS])
        return
    rows = [[table_cell(column, record[column]) for column in columns] for record in records]
    out.write(render_table(rows, list(columns), output_format) + "\n")


def render_table(rows: list[list[str]], headers: list[str], output_format: str) -> str:
    table_format = "simple" if output_format == "table" else output_format
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt=table_format, disable_numparse=True)


def echo_details(record: Record, history: Optional[list[Record]], output_format: str) -> None:
    """One deployment, as an object or a two-column table, with its events if given."""
    if output_format == "json":
        import json

        shown = record if history is None else {**record, "events": history}
        click.echo(json.dumps(shown, ensure_ascii=False, indent=2))
        return
    if output_format == "csv":
        echo_records([record], "csv")
        return
    pairs = [[field, shown_value(record[field])] for field in FIELDS]
    click.echo(render_table(pairs, ["field", "value"], output_format))
    if history is not None:
        click.echo()
        rows = [[shown_value(event[field]) for field in EVENT_FIELDS] for event in history]
        click.echo(render_table(rows, list(EVENT_FIELDS), output_format))


def echo_field(records: Iterable[Record], field: str) -> None:
    for record in records:
        click.echo(shown_value(record[field]))


def github_output_path() -> str:
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        raise InvalidInput("--github-output needs the GITHUB_OUTPUT environment variable")
    return path


def write_github_output(path: str, values: Record) -> None:
    """Append values as `name<<DELIMITER` blocks, which no value can break out of."""
    lines = []
    for name, value in values.items():
        text = shown_value(value)
        # os.urandom is what secrets.token_hex reads; importing secrets costs
        # more start-up time than the whole tracker.
        delimiter = f"ghadelimiter_{os.urandom(16).hex()}"
        while delimiter in text:
            delimiter = f"ghadelimiter_{os.urandom(16).hex()}"
        lines.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
    try:
        with open(path, "a", encoding="utf-8") as output:
            output.write("".join(lines))
    except OSError as error:
        raise TrackerError(f"cannot write GITHUB_OUTPUT file {path}: {error.strerror}") from None


def from_iso(stamp: str) -> datetime:
    return datetime.strptime(stamp, ISO_FORMAT).replace(tzinfo=timezone.utc)


def format_duration(seconds: Optional[int]) -> str:
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


def stats_rows(figures: Sequence[Record]) -> tuple[list[str], list[list[str]]]:
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
        return f"{format_duration(median)} (n={figure['lead_time_changes']})"

    shown: tuple[tuple[str, Callable[[Record], str]], ...] = (
        ("deployments", lambda figure: str(figure["deployments"])),
        ("per day", lambda figure: f"{figure['deployments_per_day']:.2f}"),
        ("per week", lambda figure: f"{figure['deployments_per_week']:.1f}"),
        ("rollbacks", lambda figure: str(figure["rollbacks"])),
        ("change failure rate", failure_rate),
        (
            "time to restore, median",
            lambda figure: format_duration(figure["time_to_restore_median_seconds"]),
        ),
        (
            "time to restore, worst",
            lambda figure: format_duration(figure["time_to_restore_worst_seconds"]),
        ),
        ("unrestored failures", lambda figure: str(figure["unrestored"])),
        ("lead time, median", lead_time),
    )
    headers = ["figure", *(figure["environment"] for figure in figures)]
    return headers, [[label, *(show(figure) for figure in figures)] for label, show in shown]


def window_caption(since: datetime, until: datetime) -> str:
    days = f"{(until - since).total_seconds() / 86400:.1f}".removesuffix(".0")
    unit = "day" if days == "1" else "days"
    return (
        f"Deployments from {short_time(iso(since))} to {short_time(iso(until))} UTC ({days} {unit})"
    )


def echo_stats(
    figures: Sequence[Record], output_format: str, *, since: datetime, until: datetime
) -> None:
    if output_format == "json":
        import json

        click.echo(json.dumps(list(figures), indent=2))
        return
    if output_format == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(STATS_FIELDS)
        for figure in figures:
            writer.writerow([shown_value(figure[field]) for field in STATS_FIELDS])
        return
    click.echo(window_caption(since, until))
    if not figures:
        click.echo("No deployments recorded.")
        return
    headers, rows = stats_rows(figures)
    click.echo()
    click.echo(render_table(rows, headers, output_format))


def short_time(stamp: str) -> str:
    """`2026-04-15T12:34:56Z` as `2026-04-15 12:34`."""
    return stamp[:16].replace("T", " ")


def clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def status_label(record: Record) -> str:
    status = str(record["status"]).replace("_", " ")
    return f"rollback, {status}" if record["rollback_of"] else status


def mermaid_text(value: str) -> str:
    """Text that cannot break out of a quoted Mermaid label: every character
    that could mean something to Mermaid, Markdown or HTML becomes an entity code."""
    return "".join(
        character if MERMAID_SAFE_CHARACTER.fullmatch(character) else f"#{ord(character)};"
        for character in value
    )


def mermaid_node(node: str, record: Record, css_class: str) -> str:
    label = "<br/>".join(
        (
            mermaid_text(clipped(record["branch"], 40)),
            f"{record['commit_sha'][:SHORT_SHA_LENGTH]} {short_time(record['deployed_at'])}",
            mermaid_text(status_label(record)),
        )
    )
    # A rollback is drawn as a stadium, a change as a box.
    opening, closing = ('(["', '"])') if record["rollback_of"] else ('["', '"]')
    return f"{node}{opening}{label}{closing}:::{css_class}"


def render_mermaid(
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
    if not lanes:
        lines.append('  none["no deployments"]:::earlier')
    link_count = 0
    rollback_links = []
    for number, (environment, records, left_out) in enumerate(lanes, start=1):
        lane = f"lane{number}"
        lines.append(f'  subgraph {lane}["{mermaid_text(environment)}"]')
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
            lines.append(f"    {mermaid_node(node, earlier[target_id], 'earlier')}")
            chain.insert(len(nodes) - 1, node)
        for index, record in enumerate(records, start=1):
            node = f"{lane}_{index}"
            nodes[record["id"]] = node
            lines.append(f"    {mermaid_node(node, record, record['status'])}")
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


def render_markdown_summary(
    figures: Sequence[Record], mermaid: str, *, since: datetime, until: datetime
) -> str:
    """The stats table and the Mermaid timeline as Markdown, for $GITHUB_STEP_SUMMARY."""
    parts = [f"### {window_caption(since, until)}\n"]
    if figures:
        headers, rows = stats_rows(figures)
        parts.append(render_table(rows, headers, "github") + "\n")
    parts.append(f"```mermaid\n{mermaid}```\n")
    return "\n".join(parts)


def timeline_ticks(start: datetime, end: datetime) -> tuple[list[datetime], str]:
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


def mark_title(record: Record) -> str:
    lines = [
        f"{record['id']} ({status_label(record)})",
        f"branch {clipped(record['branch'], 80)}, commit {record['commit_sha'][:12]}",
        f"deployed {short_time(record['deployed_at'])} by {clipped(record['actor'] or '?', 40)}",
    ]
    if record["verified_at"]:
        checker = record["verified_by"]
        lines.append(
            f"checked {short_time(record['verified_at'])}"
            + (f" by {clipped(checker, 40)}" if checker else "")
        )
    if record["rollback_of"]:
        lines.append(f"restores {record['rollback_of']}")
    return "\n".join(lines)


def svg_legend(left: int) -> list[str]:
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


def stacked_positions(
    records: Sequence[Record], x_of: Callable[[str], float], mid: int
) -> dict[str, tuple[float, int]]:
    """Each mark's (x, y): x by time; a mark that would overlap the one before
    it in its row goes down a row (or to the row with the most room)."""
    last_x = [float("-inf")] * TIMELINE_ROWS
    positions = {}
    for record in records:
        x = x_of(record["deployed_at"])
        row = next(
            (row for row, previous in enumerate(last_x) if x - previous >= TIMELINE_MARK_GAP),
            min(range(TIMELINE_ROWS), key=last_x.__getitem__),
        )
        last_x[row] = x
        positions[record["id"]] = (x, mid + row * TIMELINE_ROW_HEIGHT)
    return positions


def svg_lane(
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
    parts = [
        f'<g class="lane" data-environment="{html.escape(environment)}">'
        f'<rect x="0" y="{top}" width="{right}" height="{TIMELINE_LANE_HEIGHT}"'
        f' fill="{"#f6f8fa" if shaded else "none"}" fill-opacity="0.7"/>'
        f'<text class="lane" x="10" y="{mid - 2}">{html.escape(clipped(environment, 16))}</text>'
        f'<text class="muted" x="10" y="{mid + 14}">{changes} changes, {rollbacks} rollbacks</text>'
        f'<line class="baseline" x1="{left}" y1="{mid}" x2="{right}" y2="{mid}"/>'
    ]
    positions = stacked_positions(records, x_of, mid)
    for record in records:
        x, y = positions[record["id"]]
        status = record["status"]
        title = html.escape(mark_title(record))
        if record["rollback_of"]:
            parts.append(
                f'<path class="mark {status}" d="M{x} {y - 8}l8 8l-8 8l-8-8z">'
                f"<title>{title}</title></path>"
            )
        else:
            parts.append(
                f'<circle class="mark {status}" cx="{x}" cy="{y}" r="6">'
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
        when = f", deployed {short_time(target['deployed_at'])}" if target else ""
        title = html.escape(f"{record['id']} restored {target_id}{when}")
        parts.append(
            f'<path class="{kind}" d="M{from_x} {from_y - 9}C{from_x} {arc_y}'
            f' {to_x} {arc_y} {to_x} {to_y - 9}"><title>{title}</title></path>'
        )
    parts.append("</g>")
    return parts


def html_stats_table(figures: Sequence[Record]) -> list[str]:
    import html

    headers, rows = stats_rows(figures)
    parts = ['<table class="stats"><thead><tr>']
    parts.extend(f"<th>{html.escape(header)}</th>" for header in headers)
    parts.append("</tr></thead><tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>")
    parts.append("</tbody></table>")
    return parts


def render_timeline_html(
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

    width, left, right = TIMELINE_WIDTH, TIMELINE_LABEL_WIDTH, TIMELINE_WIDTH - 24
    shown = sum(len(records) for _, records in lanes)
    start = since
    if shown < total:
        start = min(from_iso(record["deployed_at"]) for _, records in lanes for record in records)
    span = max((until - start).total_seconds(), 1.0)

    def x_of(stamp: str) -> float:
        offset = (from_iso(stamp) - start).total_seconds() / span
        return round(left + min(max(offset, 0.0), 1.0) * (right - left), 1)

    legend_height = 44
    lanes_bottom = legend_height + max(len(lanes), 1) * TIMELINE_LANE_HEIGHT
    height = lanes_bottom + 30
    style = TIMELINE_STYLE.replace("ROLLBACK", ROLLBACK_COLOUR) + "".join(
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
        f'<p class="window">{html.escape(window_caption(since, until))}: {count}.</p>',
        *(html_stats_table(figures) if figures else []),
        f'<div class="chart"><svg xmlns="http://www.w3.org/2000/svg" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="Deployments per environment over time">'
        '<defs><marker id="arrowhead" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7"'
        f' markerHeight="7" orient="auto"><path d="M0 0L10 5L0 10z" fill="{ROLLBACK_COLOUR}"/>'
        "</marker></defs>",
        *svg_legend(left),
    ]
    # The grid first: lanes and marks are drawn over it.
    ticks, tick_format = timeline_ticks(start, until)
    for tick in ticks:
        x = x_of(iso(tick))
        out.append(
            f'<line class="grid" x1="{x}" y1="{legend_height}" x2="{x}" y2="{lanes_bottom}"/>'
            f'<text class="muted" x="{x}" y="{lanes_bottom + 18}" text-anchor="middle">'
            f"{tick.strftime(tick_format)}</text>"
        )
    for number, (environment, records) in enumerate(lanes):
        top = legend_height + number * TIMELINE_LANE_HEIGHT
        out += svg_lane(
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


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


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
            fail(error.format_message() + hint, error.exit_code)
        except click.ClickException as error:
            fail(error.format_message(), error.exit_code)
        except TrackerError as error:
            fail(str(error), error.exit_code)
        except click.Abort:
            fail("aborted", 1)
        except sqlite3.Error as error:
            fail(f"database error: {error}", 1)
        except BrokenPipeError:
            # The reader (e.g. `| head`) went away; that is not our failure.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as error:
            fail(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "), 1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def fail(message: str, exit_code: int) -> NoReturn:
    one_line = " ".join(message.split())
    click.echo(f"Error: {one_line}", err=True)
    sys.exit(exit_code)


EXIT_CODES = """\b
Exit codes:
  0  success
  1  nothing found, operation refused, or a database that is missing
     (for reading), unreadable, corrupt or from a newer version
  2  invalid usage or input
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
@click.version_option(__version__, prog_name="deployment-tracker")
@click.pass_context
def cli(ctx: click.Context, db_path: str) -> None:
    """Record deployments, verify them, and find what to roll back to.

    \b
    Example:
        deployment-tracker record --environment staging --branch main --commit abc1234
        deployment-tracker latest --environment staging
    """
    ctx.obj = db_path


F = TypeVar("F", bound=Callable[..., Any])


def output_options(*, github_output: bool = True) -> Callable[[F], F]:
    """--format, --field and --github-output, shared by every command that prints records."""

    def decorate(function: F) -> F:
        if github_output:
            function = click.option(
                "--github-output",
                is_flag=True,
                help="Also append the fields to the file named by $GITHUB_OUTPUT.",
            )(function)
        function = click.option(
            "--field",
            type=click.Choice(FIELDS),
            metavar="FIELD",
            help="Print only this field's bare value (e.g. image_tag).",
        )(function)
        function = click.option(
            "--format",
            "output_format",
            type=click.Choice(OUTPUT_FORMATS),
            metavar="FORMAT",
            help="table (default), json, csv, or a tabulate format such as github.",
        )(function)
        return function

    return decorate


def open_db(ctx: click.Context, *, write: bool = False) -> sqlite3.Connection:
    db_path: str = ctx.find_root().obj
    db = connect(db_path, write=write)
    ctx.call_on_close(db.close)
    return db


def emit_one(
    record: Record,
    output_format: Optional[str],
    field: Optional[str],
    github_output: Optional[str],
    *,
    default_field: Optional[str] = None,
) -> None:
    """Print one record the way the caller asked, and fill $GITHUB_OUTPUT.

    With --github-output the step's log gets the id unless a format is asked
    for: the fields are in the file, and a workflow step pays no table import.
    """
    if github_output:
        write_github_output(github_output, record)
        default_field = default_field or "id"
    chosen = field or (default_field if output_format is None else None)
    if chosen:
        echo_field([record], chosen)
    else:
        echo_details(record, None, output_format or "table")


def environment_option(required: bool) -> Callable[[F], F]:
    return click.option(
        "--environment",
        "-e",
        required=required,
        help="Environment name, e.g. staging or production.",
    )


@cli.command("new-id")
@click.option("--branch", "-b", required=True, help="Branch being deployed (raw name).")
@click.option("--commit", "-c", "commit_sha", required=True, help="Commit SHA.")
@output_options()
def new_id_command(
    branch: str,
    commit_sha: str,
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Print the id (and image tag) a deployment of this commit gets now.

    Touches no database. The id is `{branch}_{sha7}_{YYYYmmddHHMMSS}` in UTC,
    with the branch made safe for a Docker tag.

    \b
    Example:
        deployment-tracker new-id --branch feature/login --commit 3f2c9e1d
        feature-login_3f2c9e1_20260415123456
    """
    path = github_output_path() if github_output else None
    check_branch(branch)
    check_sha(commit_sha)
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
    if path:
        write_github_output(path, values)
    if field:
        click.echo(shown_value(values.get(field)))
    elif output_format == "json":
        import json

        click.echo(json.dumps(values, ensure_ascii=False, indent=2))
    else:
        click.echo(deployment_id)


@cli.command("record")
@environment_option(required=True)
@click.option("--branch", "-b", help="Branch deployed (raw name).")
@click.option("--commit", "-c", "commit_sha", help="Commit SHA (lowercase hex).")
@click.option("--image-tag", help="Docker image tag; defaults to the id.")
@click.option("--id", "deployment_id", help="Deployment id; defaults to a new one.")
@click.option("--status", type=click.Choice(RECORD_STATUSES), default="deployed", show_default=True)
@click.option("--actor", help="Who deployed it.")
@click.option("--run-id", help="CI run id.")
@click.option("--run-url", help="CI run URL.")
@click.option("--rollback-of", help="Id of the earlier deployment this rollback restores.")
@click.option("--note", help="Free text.")
@click.option("--committed-at", help="Commit time (ISO 8601), for lead time.")
@click.option(
    "--promoted-from",
    metavar="ID",
    help="Verified deployment (e.g. in staging) whose image this promotes; see `promote`.",
)
@click.option(
    "--override-gate",
    metavar="REASON",
    help=f"Record despite the promotion gate (env {GATES_ENV_VAR}); kept as an event.",
)
@output_options()
@click.pass_context
def record_command(
    ctx: click.Context,
    environment: str,
    branch: Optional[str],
    commit_sha: Optional[str],
    image_tag: Optional[str],
    deployment_id: Optional[str],
    status: str,
    actor: Optional[str],
    run_id: Optional[str],
    run_url: Optional[str],
    rollback_of: Optional[str],
    note: Optional[str],
    committed_at: Optional[str],
    promoted_from: Optional[str],
    override_gate: Optional[str],
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Record a deployment and print its id.

    Recording the same id again with the same fields succeeds without change,
    so a retried step is safe. With --rollback-of, this is a rollback: branch,
    commit and image default to the target's, and the deployment it replaces
    is marked rolled_back. With --promoted-from, they default to the promoted
    deployment's.

    Promotion gate: production only receives an image that has a verified,
    unblocked staging deployment (configure with DEPLOYMENT_TRACKER_GATES, e.g.
    'staging:production,qa:staging', or 'none'). Rollbacks pass; anything else
    is refused unless --override-gate gives a reason.

    \b
    Example:
        deployment-tracker record --environment staging --branch main \\
            --commit 3f2c9e1d4b5a69788796a5b4c3d2e1f0a9b8c7d6 \\
            --id main_3f2c9e1_20260415123456 --actor octocat
    """
    path = github_output_path() if github_output else None
    given: dict[str, Any] = {
        "environment": environment,
        "branch": branch,
        "commit_sha": commit_sha,
        "image_tag": image_tag,
        "deployment_id": deployment_id,
        "status": status,
        "actor": actor,
        "run_id": run_id,
        "run_url": run_url,
        "rollback_of": rollback_of,
        "note": note,
        "committed_at": committed_at,
        "promoted_from": promoted_from,
        "override_gate": override_gate,
    }
    check_record_input(**given)
    gates = promotion_gates(os.environ.get(GATES_ENV_VAR))
    db = open_db(ctx, write=True)
    record, created = record_deployment(
        db, **given, gates=gates, warn=lambda text: click.echo(text, err=True)
    )
    if not created:
        click.echo(f"already recorded: {record['id']}", err=True)
    emit_one(record, output_format, field, path, default_field="id")


@cli.command("verify")
@click.option("--id", "deployment_id", required=True, help="Deployment id.")
@click.option("--status", type=click.Choice(VERIFY_STATUSES), required=True)
@click.option("--by", help="Who (or what) verified it.")
@click.option("--note", help="What was checked and what it answered.")
@output_options()
@click.pass_context
def verify_command(
    ctx: click.Context,
    deployment_id: str,
    status: str,
    by: Optional[str],
    note: Optional[str],
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Record the verification result of a deployment.

    deployed can become verified or failed; repeating the same result is a
    no-op, a contradicting one is refused.

    \b
    Example:
        deployment-tracker verify --id main_3f2c9e1_20260415123456 --status verified --by octocat
    """
    path = github_output_path() if github_output else None
    check_verify_input(deployment_id, status, by=by, note=note)
    db = open_db(ctx, write=True)
    record, changed = verify_deployment(db, deployment_id, status, by=by, note=note)
    if not changed:
        click.echo(f"already {status}: {deployment_id}", err=True)
    emit_one(record, output_format, field, path, default_field="id")


@cli.command("list")
@environment_option(required=False)
@click.option("--branch", "-b", help="Only this branch (raw name).")
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option(
    "--limit", "-n", type=click.IntRange(min=1), default=DEFAULT_LIST_LIMIT, show_default=True
)
@click.option("--all", "show_all", is_flag=True, help="No limit (JSON and CSV stream).")
@output_options(github_output=False)
@click.pass_context
def list_command(
    ctx: click.Context,
    environment: Optional[str],
    branch: Optional[str],
    status: Optional[str],
    limit: int,
    show_all: bool,
    output_format: Optional[str],
    field: Optional[str],
) -> None:
    """List deployments, newest first.

    \b
    Example:
        deployment-tracker list --environment staging --limit 5
        deployment-tracker list --status verified --format json
    """
    if environment is not None:
        check_environment(environment)
    if branch is not None:
        check_branch(branch)
    db = open_db(ctx)
    records = list_deployments(
        db,
        environment=environment,
        branch=branch,
        status=status,
        limit=None if show_all else limit,
    )
    if field:
        echo_field(records, field)
    else:
        echo_records(records, output_format or "table", columns=TABLE_COLUMNS)


@cli.command("latest")
@environment_option(required=True)
@click.option(
    "--status",
    type=click.Choice((*STATUSES, "any")),
    default="verified",
    show_default=True,
    help="Latest with this status; 'any' is what runs now.",
)
@output_options()
@click.pass_context
def latest_command(
    ctx: click.Context,
    environment: str,
    status: str,
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Show the latest verified deployment in an environment.

    \b
    Example:
        deployment-tracker latest --environment production --field image_tag
    """
    path = github_output_path() if github_output else None
    check_environment(environment)
    db = open_db(ctx)
    emit_one(latest(db, environment, status), output_format, field, path)


@cli.command("get")
@click.option("--id", "deployment_id", required=True, help="Deployment id.")
@output_options()
@click.pass_context
def get_command(
    ctx: click.Context,
    deployment_id: str,
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Show one deployment and every status change it went through.

    \b
    Example:
        deployment-tracker get --id branch_1_abc1234_20230415123456 --format json
    """
    path = github_output_path() if github_output else None
    check_id(deployment_id)
    db = open_db(ctx)
    record = get_deployment(db, deployment_id)
    if path:
        write_github_output(path, record)
    if field or (path and output_format is None):
        echo_field([record], field or "id")
    else:
        echo_details(record, events(db, deployment_id), output_format or "table")


@cli.command("rollback-target")
@environment_option(required=True)
@click.option("--id", "deployment_id", help="Roll back to this deployment.")
@click.option("--force", is_flag=True, help="Accept an unverified or blocked --id target (warns).")
@output_options()
@click.pass_context
def rollback_target_command(
    ctx: click.Context,
    environment: str,
    deployment_id: Optional[str],
    force: bool,
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Show the deployment to roll back to.

    Without --id: the latest verified, unblocked deployment whose image
    differs from the one running now (the newest deployment in the
    environment). With --id: that deployment, which must be in the environment,
    verified and not blocked (--force accepts it anyway, with a warning).

    \b
    Example:
        deployment-tracker rollback-target --environment production --field image_tag
    """
    path = github_output_path() if github_output else None
    check_environment(environment)
    if deployment_id is not None:
        check_id(deployment_id)
    db = open_db(ctx)
    target = rollback_target(
        db, environment, deployment_id, force=force, warn=lambda text: click.echo(text, err=True)
    )
    emit_one(target, output_format, field, path)


@cli.command("block")
@click.option("--id", "deployment_id", required=True, help="Deployment id.")
@click.option("--reason", required=True, help="Why it must not be used (kept as an event).")
@click.option("--by", help="Who blocks it.")
@output_options()
@click.pass_context
def block_command(
    ctx: click.Context,
    deployment_id: str,
    reason: str,
    by: Optional[str],
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Block a deployment: rollback-target and promote never pick it.

    The block shows in list and get, and is kept as a 'blocked' event with its
    reason. Blocking a blocked deployment succeeds and changes nothing.

    \b
    Example:
        deployment-tracker block --id main_3f2c9e1_20260415123456 \\
            --reason "corrupts uploads (#123)" --by octocat
    """
    path = github_output_path() if github_output else None
    check_id(deployment_id)
    check_text("reason", reason)
    if by is not None:
        check_text("by", by)
    db = open_db(ctx, write=True)
    record, changed = block_deployment(db, deployment_id, reason=reason, by=by)
    if not changed:
        click.echo(f"already blocked: {deployment_id} ({record['blocked_reason']})", err=True)
    emit_one(record, output_format, field, path, default_field="id")


@cli.command("unblock")
@click.option("--id", "deployment_id", required=True, help="Deployment id.")
@click.option("--reason", help="Why it may be used again (kept as an event).")
@click.option("--by", help="Who unblocks it.")
@output_options()
@click.pass_context
def unblock_command(
    ctx: click.Context,
    deployment_id: str,
    reason: Optional[str],
    by: Optional[str],
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Lift a block, recorded as an 'unblocked' event.

    Unblocking a deployment that is not blocked succeeds and changes nothing.

    \b
    Example:
        deployment-tracker unblock --id main_3f2c9e1_20260415123456 --by octocat
    """
    path = github_output_path() if github_output else None
    check_id(deployment_id)
    if reason is not None:
        check_text("reason", reason)
    if by is not None:
        check_text("by", by)
    db = open_db(ctx, write=True)
    record, changed = unblock_deployment(db, deployment_id, by=by, reason=reason)
    if not changed:
        click.echo(f"not blocked: {deployment_id}", err=True)
    emit_one(record, output_format, field, path, default_field="id")


@cli.command("promote")
@click.option(
    "--from", "source", default="staging", show_default=True, help="Environment to promote from."
)
@click.option(
    "--to", "target", default="production", show_default=True, help="Environment to promote to."
)
@click.option("--id", "deployment_id", help="Promote this deployment, not the latest verified.")
@output_options()
@click.pass_context
def promote_command(
    ctx: click.Context,
    source: str,
    target: str,
    deployment_id: Optional[str],
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Show the deployment to promote; its image goes on without a rebuild.

    Without --id: the latest verified, unblocked deployment in --from. With
    --id: that deployment, which must be in --from, verified and unblocked.
    Refused when --to already runs its image. Only reads: deploy its
    image_tag, then record the promotion with `record --promoted-from ID`.

    \b
    Example:
        deployment-tracker promote --from staging --to production --field image_tag
        deployment-tracker record --environment production \\
            --promoted-from main_3f2c9e1_20260415123456
    """
    path = github_output_path() if github_output else None
    check_environment(source)
    check_environment(target)
    if deployment_id is not None:
        check_id(deployment_id)
    db = open_db(ctx)
    emit_one(promotion_candidate(db, source, target, deployment_id), output_format, field, path)


@cli.command("prune")
@click.option(
    "--keep",
    type=click.IntRange(min=0),
    required=True,
    help="How many of the newest deployments stay in each environment.",
)
@environment_option(required=False)
@click.option("--dry-run", is_flag=True, help="Show what would be removed; change nothing.")
@click.option("--by", help="Who prunes (kept in the prune log).")
@output_options(github_output=False)
@click.pass_context
def prune_command(
    ctx: click.Context,
    keep: int,
    environment: Optional[str],
    dry_run: bool,
    by: Optional[str],
    output_format: Optional[str],
    field: Optional[str],
) -> None:
    """Delete the oldest deployments beyond --keep per environment.

    Never removes the running deployment, the latest verified one, the current
    rollback target, a blocked one, or anything a remaining deployment links
    to (rollback_of, promoted_from). Their events go too. Prints what was
    removed, newest first; one transaction, logged in the database.

    \b
    Example:
        deployment-tracker prune --keep 50 --dry-run
        deployment-tracker prune --keep 50 --environment staging --by octocat
    """
    if environment is not None:
        check_environment(environment)
    if by is not None:
        check_text("by", by)
    db = open_db(ctx, write=not dry_run)
    removed, removed_events = prune(db, keep, environment, by=by, dry_run=dry_run)
    click.echo(
        f"{'would remove' if dry_run else 'removed'} {len(removed)} deployment(s)"
        f" and {removed_events} event(s)",
        err=True,
    )
    if field:
        echo_field(removed, field)
    else:
        echo_records(removed, output_format or "table", columns=TABLE_COLUMNS)


@cli.command("notify")
@click.option("--event", type=click.Choice(NOTIFY_EVENTS), required=True, help="What happened.")
@click.option("--id", "deployment_id", required=True, help="The deployment it happened to.")
@click.option("--message", help="An extra line, e.g. what the check answered.")
@click.option(
    "--webhook-url-env",
    default=WEBHOOK_ENV_VAR,
    show_default=True,
    metavar="NAME",
    help="Environment variable holding the webhook URL.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=300),
    default=NOTIFY_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds to wait for each attempt.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0, max=10),
    default=NOTIFY_RETRIES,
    show_default=True,
    help="Further attempts after a timeout, network error, 429 or 5xx.",
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0, max=60),
    default=NOTIFY_RETRY_DELAY_SECONDS,
    show_default=True,
    help="Seconds before the first retry; doubles each time.",
)
@click.pass_context
def notify_command(
    ctx: click.Context,
    event: str,
    deployment_id: str,
    message: Optional[str],
    webhook_url_env: str,
    timeout: float,
    retries: int,
    retry_delay: float,
) -> None:
    """Post a Slack-compatible webhook message about a deployment.

    The URL comes from an environment variable (a CI secret); when it is unset
    this does nothing. A notification that cannot be delivered prints a
    warning and still exits 0: it never fails the deployment.

    \b
    Example:
        DEPLOYMENT_TRACKER_WEBHOOK_URL=https://hooks.slack.com/services/... \\
            deployment-tracker notify --event verification-failed \\
            --id main_3f2c9e1_20260415123456 --message "GET /health answered 500"
    """
    check_id(deployment_id)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", webhook_url_env):
        raise InvalidInput(
            f"--webhook-url-env must be a variable name: {describe(webhook_url_env)}"
        )
    if message is not None:
        check_text("note", message, multiline=True)
    url = os.environ.get(webhook_url_env, "").strip()
    if not url:
        click.echo(f"note: {webhook_url_env} is not set; no notification sent", err=True)
        return
    record: Optional[Record] = None
    try:
        record = get_deployment(open_db(ctx), deployment_id)
    except TrackerError as error:
        click.echo(f"note: sending without deployment details: {error}", err=True)
    payload = {"text": notification_text(event, deployment_id, record, message)}
    delivered = send_webhook(
        url,
        payload,
        timeout=timeout,
        retries=retries,
        retry_delay=retry_delay,
        say=lambda text: click.echo(text, err=True),
    )
    if delivered:
        click.echo(f"notified: {event} {deployment_id}", err=True)


@cli.command(
    "with-history",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "--remote",
    envvar=HISTORY_REMOTE_ENV,
    default=HISTORY_REMOTE,
    show_default=True,
    help=f"Git remote (name, URL or path) holding the history (env {HISTORY_REMOTE_ENV}).",
)
@click.option(
    "--branch",
    "history_branch",
    envvar=HISTORY_BRANCH_ENV,
    default=HISTORY_BRANCH,
    show_default=True,
    help=f"Branch holding {HISTORY_FILE} (env {HISTORY_BRANCH_ENV}).",
)
@click.option(
    "--repo",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Local git repository to work from (its work tree is never touched).",
)
@click.option(
    "--attempts",
    type=click.IntRange(1, 100),
    default=HISTORY_ATTEMPTS,
    show_default=True,
    help="How often to fetch, apply and push before giving up.",
)
@click.option(
    "--backoff",
    type=click.FloatRange(0, 60),
    default=HISTORY_BACKOFF_SECONDS,
    show_default=True,
    help="Base of the randomised exponential backoff between attempts, in seconds.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def with_history_command(
    ctx: click.Context,
    remote: str,
    history_branch: str,
    repo: str,
    attempts: int,
    backoff: float,
    command: tuple[str, ...],
) -> None:
    """Run a tracker command against the history kept on a git branch.

    Fetches the branch, runs COMMAND on a fresh copy of its database and, if
    the command changed anything, commits the checkpointed file on top of the
    fetched tip and pushes it (never forced). A rejected push is redone on the
    newer tip after a randomised backoff. Reading commands just fetch and read.
    The branch is created (without history) on first write. The global --db is
    ignored; the command's exit code is passed on.

    \b
    Example:
        deployment-tracker with-history -- record --environment staging \\
            --branch main --commit 3f2c9e1d --id main_3f2c9e1_20260415123456
        deployment-tracker with-history -- rollback-target --environment staging
    """
    name = command[0]
    if name not in cli.commands or name == "with-history":
        known = ", ".join(sorted(set(cli.commands) - {"with-history"}))
        raise click.UsageError(f"with-history runs a tracker command ({known}), not {name!r}")
    exit_code = run_with_history(
        command,
        repo=repo,
        remote=remote,
        branch=history_branch,
        attempts=attempts,
        backoff=backoff,
        say=lambda text: click.echo(text, err=True),
    )
    ctx.exit(exit_code)


def since_option() -> Callable[[F], F]:
    return click.option(
        "--since",
        default=DEFAULT_SINCE,
        show_default=True,
        metavar="SPAN|DATE",
        help="Window start: a span back from now (12h, 30d, 2w) or an ISO 8601 date/time (UTC).",
    )


@cli.command("stats")
@environment_option(required=False)
@since_option()
@click.option(
    "--format",
    "output_format",
    type=click.Choice(OUTPUT_FORMATS),
    default="table",
    metavar="FORMAT",
    help="table (default), json, csv, or a tabulate format such as github.",
)
@click.pass_context
def stats_command(
    ctx: click.Context, environment: Optional[str], since: str, output_format: str
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
        deployment-tracker stats --environment production --since 30d
        deployment-tracker stats --since 2026-01-01 --format json
    """
    now = utc_now()
    start = parse_since(since, now)
    if environment is not None:
        check_environment(environment)
    db = open_db(ctx)
    figures = deployment_stats(db, since=start, environment=environment, now=now)
    echo_stats(figures, output_format, since=start, until=now)


def timeline_text(
    db: sqlite3.Connection,
    output_format: str,
    *,
    since: datetime,
    environment: Optional[str],
    now: datetime,
) -> str:
    """What `timeline` prints for the window from `since` to `now`."""
    names = [environment] if environment else deployment_environments(db)
    if output_format == "html":
        records, total = timeline_deployments(db, since=since, environment=environment, now=now)
        lanes = [(name, [one for one in records if one["environment"] == name]) for name in names]
        return render_timeline_html(
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
        mermaid_lanes.append((name, records, total - len(records)))
        earlier.update(rollback_targets_outside(db, records))
    mermaid = render_mermaid(mermaid_lanes, earlier)
    if output_format == "mermaid":
        return mermaid
    figures = deployment_stats(db, since=since, environment=environment, now=now)
    return render_markdown_summary(figures, mermaid, since=since, until=now)


@cli.command("timeline")
@environment_option(required=False)
@since_option()
@click.option(
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
    ctx: click.Context, environment: Optional[str], since: str, output_format: str
) -> None:
    """Draw the deployments in a window: a lane per environment, a mark per
    deployment coloured by status, an arrow from each rollback back to what it
    restored.

    Mermaid shows the newest 20 deployments per environment; the HTML page (an
    inline SVG with hover text, and the stats above it; no scripts, no external
    assets) the newest 1500 in all.

    \b
    Example:
        deployment-tracker timeline --since 14d --format markdown >> "$GITHUB_STEP_SUMMARY"
        deployment-tracker timeline --since 90d --format html > timeline.html
    """
    now = utc_now()
    start = parse_since(since, now)
    if environment is not None:
        check_environment(environment)
    db = open_db(ctx)
    text = timeline_text(db, output_format, since=start, environment=environment, now=now)
    click.echo(text, nl=False)


def main() -> None:
    cli(prog_name="deployment-tracker")


if __name__ == "__main__":
    main()
