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
from pathlib import Path
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
)
EVENT_FIELDS = ("at", "status", "by", "note")

# Docker's tag grammar: 128 characters at most, no leading '.' or '-'.
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
ID_PATTERN = re.compile(r"(?P<branch>.+)_(?P<sha>[0-9a-f]{7})_(?P<timestamp>\d{14})")
SHA_PATTERN = re.compile(r"[0-9a-f]{7,40}|[0-9a-f]{64}")
ENVIRONMENT_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,62}")
RUN_ID_PATTERN = re.compile(r"[0-9]{1,20}")
URL_PATTERN = re.compile(r"https?://[^\s\x00-\x1f\x7f]+")
UNSAFE_TAG_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
# What git check-ref-format refuses in a branch name.
BAD_BRANCH_PATTERN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
NOTE_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
SHORT_SHA_LENGTH = 7
# 128 - len("_") - 7 (short sha) - len("_") - 14 (timestamp)
MAX_BRANCH_PART = 105
BRANCH_HASH_LENGTH = 8
MAX_LENGTHS = {
    "branch": 255,
    "actor": 100,
    "verified_by": 100,
    "run_url": 2048,
    "note": 4000,
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
SELECT_RUNNING = SELECT_DEPLOYMENT + " WHERE environment = ? ORDER BY seq DESC LIMIT 1"
SELECT_LATEST_WITH_STATUS = (
    SELECT_DEPLOYMENT + " WHERE environment = ? AND status = ? ORDER BY seq DESC LIMIT 1"
)
SELECT_ROLLBACK_CANDIDATE = (
    SELECT_DEPLOYMENT + " WHERE environment = ? AND status = 'verified' AND image_tag != ?"
    " ORDER BY seq DESC LIMIT 1"
)

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
    if part and len(part) <= MAX_BRANCH_PART:
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
    "note": lambda value: check_text("note", value, multiline=True),
}


def connect(path: str, *, write: bool) -> sqlite3.Connection:
    """Open the database, creating and migrating it only for a write.

    Reading never creates a file. A file that is not ours, or comes from a
    newer version of this tool, is refused before anything touches it.
    """
    location = Path(path)
    if location.is_dir():
        raise DatabaseProblem(f"database path is a directory: {path}")
    exists = location.exists()
    if not exists and not write:
        raise DatabaseProblem(f"no database at {path} (record a deployment first, or pass --db)")
    try:
        if write:
            if not exists:
                location.parent.mkdir(parents=True, exist_ok=True)
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
        if write or not location.exists() or os.access(location.parent, os.W_OK):
            raise
        # A WAL database in a read-only folder cannot get its -shm file; as
        # nobody can write there either, reading it as immutable is safe.
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


def open_uri(location: Path, query: str) -> sqlite3.Connection:
    uri = f"{location.resolve().as_uri()}?{query}"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)


def check_schema(db: sqlite3.Connection, path: str, *, write: bool) -> None:
    try:
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = schema_version(db)
        has_tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
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
            db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as error:
        raise DatabaseProblem(f"cannot write to {path}: {error}") from None


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
    return dict(zip(FIELDS, row))


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
) -> tuple[Record, bool]:
    """Record a deployment; returns it and whether it was new.

    Recording the same id again with the same fields is a success that changes
    nothing, so a retried CI step is safe. A rollback (`rollback_of`) takes the
    target's branch, commit and image unless given, and marks the deployment it
    replaces as rolled back.
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
    )
    if committed_at is not None:
        committed_at = iso(parse_timestamp(committed_at, name="commit time"))
    if rollback_of is None and (branch is None or commit_sha is None):
        raise InvalidInput("--branch and --commit are required (unless --rollback-of is given)")
    moment = now or utc_now()
    if deployment_id is not None:
        _, id_sha, _ = parse_id(deployment_id)
        if commit_sha is not None and not commit_sha.startswith(id_sha):
            raise InvalidInput(
                f"deployment id {deployment_id} names commit {id_sha},"
                f" not {commit_sha[:SHORT_SHA_LENGTH]}"
            )

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
        db.execute(INSERT_DEPLOYMENT, record)
        add_event(db, deployment_id, status, record["deployed_at"], actor, note)
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
    check_id(deployment_id)
    check_choice("status", status, VERIFY_STATUSES)
    check_fields(verified_by=by, note=note)
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

    Without an id: the latest verified deployment whose image differs from the
    running one. With an id: that deployment, which must be in the environment
    and have been verified (`force` overrides the verification check, loudly).
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
    if problems and not force:
        raise Refused(
            f"deployment {deployment_id} {' and '.join(problems)}; --force to use it anyway"
        )
    for problem in problems:
        warn(f"WARNING: forced: deployment {deployment_id} {problem}")
    return target


# --------------------------------------------------------------------------
# History on a git branch (with-history)
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


class GitFailure(Exception):
    """A git command failed; worth another attempt after a backoff."""


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


def run_with_history(
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
    return "" if value is None else str(value)


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
    rows = [[shown_value(record[column]) for column in columns] for record in records]
    out.write(render_table(rows, list(columns), output_format) + "\n")


def render_table(rows: list[list[str]], headers: list[str], output_format: str) -> str:
    from tabulate import tabulate

    table_format = "simple" if output_format == "table" else output_format
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
    import secrets

    lines = []
    for name, value in values.items():
        text = shown_value(value)
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        while delimiter in text:
            delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        lines.append(f"{name}<<{delimiter}\n{text}\n{delimiter}\n")
    try:
        with open(path, "a", encoding="utf-8") as output:
            output.write("".join(lines))
    except OSError as error:
        raise TrackerError(f"cannot write GITHUB_OUTPUT file {path}: {error.strerror}") from None


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
    """Print one record the way the caller asked, and fill $GITHUB_OUTPUT."""
    if github_output:
        write_github_output(github_output, record)
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
    output_format: Optional[str],
    field: Optional[str],
    github_output: bool,
) -> None:
    """Record a deployment and print its id.

    Recording the same id again with the same fields succeeds without change,
    so a retried step is safe. With --rollback-of, this is a rollback: branch,
    commit and image default to the target's, and the deployment it replaces
    is marked rolled_back.

    \b
    Example:
        deployment-tracker record --environment staging --branch main \\
            --commit 3f2c9e1d4b5a69788796a5b4c3d2e1f0a9b8c7d6 \\
            --id main_3f2c9e1_20260415123456 --actor octocat
    """
    path = github_output_path() if github_output else None
    if deployment_id is not None:
        parse_id(deployment_id)
    db = open_db(ctx, write=True)
    record, created = record_deployment(
        db,
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
    check_id(deployment_id)
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
    if field:
        echo_field([record], field)
    else:
        echo_details(record, events(db, deployment_id), output_format or "table")


@cli.command("rollback-target")
@environment_option(required=True)
@click.option("--id", "deployment_id", help="Roll back to this deployment.")
@click.option("--force", is_flag=True, help="Accept an unverified --id target (warns).")
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

    Without --id: the latest verified deployment whose image differs from the
    one running now (the newest deployment in the environment). With --id:
    that deployment, which must be in the environment and verified.

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


def main() -> None:
    cli(prog_name="deployment-tracker")


if __name__ == "__main__":
    main()
