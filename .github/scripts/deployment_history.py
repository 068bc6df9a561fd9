#!/usr/bin/env python3
"""deployment-history: run one deployment-tracker command against the history on a git branch.

CI runners are ephemeral, and runs from any branch and for any environment may write at the same
moment, so the shared history is the SQLite file `deployments.db` committed on a dedicated branch
of a git remote. This script fetches that branch's tip, runs one tracker command against a private
copy of the file, checkpoints it and pushes a commit whose parent is the tip it started from. A
rejected push (the branch moved on) is never forced: the whole operation is redone on the newer tip
after a randomised exponential backoff, until $DEPLOYMENT_HISTORY_WRITE_DEADLINE (600 s) rather
than a fixed number of times (--attempts caps it). Only git plumbing is used; the work tree, the
index and HEAD are never touched. The file is stored and read byte for byte (no .gitattributes
filters); after a write that freed a quarter of its pages (a prune) it is vacuumed.
A fetched file is untrusted: its schema is checked (only the tracker's tables and indexes) before
any statement runs on it, then integrity_check, all under a deadline
($DEPLOYMENT_HISTORY_SQL_DEADLINE, 120 s).

It lives with the workflow, not in the tracker: it talks to git for the workflow and drives the
tracker only through its command line (`deployment-tracker --db FILE ARGS...`). Standard library
only, Python 3.9+, so any runner's python3 can run it.

Usage: deployment_history.py [OPTIONS] -- TRACKER-SUBCOMMAND ARGS...
       deployment-tracker --history REMOTE TRACKER-SUBCOMMAND ARGS... (from a clone of the app
       repository) calls run_for_tracker(): the same, one attempt for a read, and a line on
       stderr saying which commit of the history a read saw and how old it is.
Credentials: an http(s) remote URL may hold them (raw or percent-encoded); they travel only as
       an http.extraheader in git's environment. Give such a URL in $DEPLOYMENT_HISTORY_REMOTE,
       not --remote: our own command line shows in the process list.
Exit:  the tracker command's own exit code, stdout, stderr and $GITHUB_OUTPUT lines (of the final
       attempt); 1 for an operational error of ours or a history database refused (corrupt,
       an index that disagrees with its table), 2 for a usage error (one line on stderr).

Sections: settings and errors | messages | remote and credentials | git | the database file |
the tracker | attempts | command line
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Callable, NamedTuple, NoReturn, Optional, Union

# --------------------------------------------------------------------------
# Settings and errors
# --------------------------------------------------------------------------

PROG = "deployment-history"
HISTORY_FILE = "deployments.db"
REMOTE_ENV = "DEPLOYMENT_HISTORY_REMOTE"
BRANCH_ENV = "DEPLOYMENT_HISTORY_BRANCH"
# A token for https remotes, sent as an http.extraheader through git's GIT_CONFIG_*
# environment: never written to .git/config nor put on a command line.
TOKEN_ENV = "DEPLOYMENT_HISTORY_TOKEN"  # noqa: S105 (a variable name, not a secret)
MAX_BYTES_ENV = "DEPLOYMENT_HISTORY_MAX_BYTES"
TRACKER_ENV = "DEPLOYMENT_TRACKER_COMMAND"
TRACKER_DB_ENV = "DEPLOYMENT_TRACKER_DB"
# `deployment-tracker --history`'s default remote: it may hold credentials, and a tracker run
# against the fetched copy must not hand the command back to the history again.
TRACKER_HISTORY_ENV = "DEPLOYMENT_TRACKER_HISTORY"
DEFAULT_REMOTE = "origin"
DEFAULT_BRANCH = "deployment-history"
# A write lost to a faster one is redone until this deadline, not a fixed number of times: a
# write never fails while the others are merely making progress (--attempts caps it too).
WRITE_DEADLINE_ENV = "DEPLOYMENT_HISTORY_WRITE_DEADLINE"
DEFAULT_WRITE_DEADLINE_SECONDS = 600.0
DEFAULT_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
CHUNK = 1024 * 1024
FREE_AND_ALL = ("freelist_count", "page_count")
SESSION_ENV = "DEPLOYMENT_HISTORY_SESSION"
# Ours, not the tracker's: start or replace the history from a database file.
IMPORT = "import"
IMPORT_USAGE = f"usage: {PROG} -- import FILE [--replace]"
IMPORT_HELP = """\
Start the shared history from a database file (a team's own .github/deployments.db), or
replace it with --replace (not forced: the history it replaces stays in the branch's log).
The file is checked as a fetched history is (only the tracker's tables, integrity, a version
this tracker reads) and vacuumed; nothing is pushed if any check fails."""
# How the branch stores the history: 1, one deployments.db (and a README.md) per commit.
LAYOUT = 1
# Work on a fetched (untrusted) file is interrupted past this deadline, per connection.
SQL_DEADLINE_ENV = "DEPLOYMENT_HISTORY_SQL_DEADLINE"
DEFAULT_SQL_DEADLINE_SECONDS = 120.0
# What the tracker's migrations (any version) put in sqlite_master: tables, and each index
# with its table. No views and no triggers: anything else is refused before any SQL runs.
EXPECTED_TABLES = frozenset({"deployments", "events", "prunes"})
EXPECTED_INDEXES = {
    **dict.fromkeys(
        [
            "sqlite_autoindex_deployments_1",
            "deployments_by_branch",
            "deployments_by_branch_status",
            "deployments_by_commit",
            "deployments_by_environment",
            "deployments_by_environment_branch",
            "deployments_by_environment_branch_status",
            "deployments_by_environment_image",
            "deployments_by_environment_status",
            "deployments_by_status",
            "verified_deployments_by_image",
        ],
        "deployments",
    ),
    "events_by_deployment": "events",
}
# Commands that only read: they never push, and need the branch to exist.
READ_COMMANDS = frozenset(
    {"list", "latest", "get", "rollback-target", "promote", "settle", "status", "stats", "timeline"}
)
FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "deployment-tracker",
    "GIT_AUTHOR_EMAIL": "deployment-tracker@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "deployment-tracker",
    "GIT_COMMITTER_EMAIL": "deployment-tracker@users.noreply.github.com",
}
README = f"""\
# Deployment history

This branch holds `{HISTORY_FILE}`, the SQLite database of every deployment,
written only by `.github/scripts/deployment_history.py`. Each commit is one change.
Read it with:

    git fetch origin {DEFAULT_BRANCH}
    git cat-file blob origin/{DEFAULT_BRANCH}:{HISTORY_FILE} > deployments.db
    deployment-tracker --db deployments.db list --all
"""


class HistoryError(Exception):
    """A failure of ours: one line on stderr, exit 1."""

    exit_code = 1


class UsageError(HistoryError):
    exit_code = 2


class GitFailure(HistoryError):
    """A git step failed (unreachable remote, rejected push): the attempt is redone."""


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Up to the last '@' of a word: a password may hold raw '/', '@', ':', '#' or '?'.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)\S*@")
# The remote's credentials (as given and decoded), blanked wherever they would show.
_SECRETS: list[str] = []
SHORTEST_SECRET = 4  # shorter ones can't be told from ordinary text (they never leave git's header)


def _shown(text: str) -> str:
    """Text fit for a log line: URL credentials redacted, control characters blanked."""
    text = _USERINFO.sub(r"\1***@", text)
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return _CONTROL.sub(" ", text)


def _say(text: str) -> None:
    print(f"{PROG}: {_shown(text)}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Remote and credentials
# --------------------------------------------------------------------------


class Remote(NamedTuple):
    target: str  # what git is given: a remote name, a path, or a URL without userinfo
    shown: str  # what messages show
    header: Optional[tuple[str, str]]  # (URL prefix, Authorization header) from the userinfo


_SCHEME = re.compile(r"(?i)([a-z][a-z0-9+.-]*)://")
# A host (an IP literal or a registered name) and its port, ending the authority.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(:[0-9]*)?(?=[/?#]|\Z)")
_PATH_START = re.compile(r"[/?#]")


def _looks_like_userinfo(text: str) -> bool:
    """No '/', '?' or '#' before a ':' (those end the host): 'user:pa/ss' is, 'host/a' is not."""
    special = _PATH_START.search(text)
    return special is None or ":" in text[: special.start()]


def _split_credentials(value: str) -> Optional[tuple[str, str, str, str]]:
    """(scheme, userinfo, host, the rest) of a URL with credentials; None for one without.

    Credentials may be percent-encoded or raw: the userinfo ends at the one '@' followed by a
    host that ends the authority. A URL that can be read two ways is refused.
    """
    scheme = _SCHEME.match(value)
    if scheme is None:
        return None
    start = scheme.end()
    ats = [at for at in range(start, len(value)) if value[at] == "@"]
    candidates = [at for at in ats if _looks_like_userinfo(value[start:at])]
    if not candidates:
        return None
    readings = [(at, host) for at in candidates if (host := _HOST.match(value, at + 1))]
    if len(readings) != 1:
        how = "two ways" if readings else "without a host after them"
        raise UsageError(
            f"the credentials in the history remote {scheme.group(1)}://*** read {how};"
            " percent-encode their '@', '/', ':', '?' and '#' (%40, %2F, %3A, %3F, %23)"
        )
    at, host = readings[0]
    return scheme.group(1).lower(), value[start:at], host.group(), value[host.end() :]


def _parse_remote(value: str) -> Remote:
    split = _split_credentials(value) if value.strip() else None
    if split is None:
        if not value.strip() or value.startswith("-") or _CONTROL.search(value):
            raise UsageError(f"invalid history remote: '{_shown(value)}'")
        return Remote(value, value, None)
    scheme, userinfo, host, rest = split
    user, colon, password = userinfo.partition(":")
    shown = f"{scheme}://***@{host}{rest}"
    if _CONTROL.search(value):
        raise UsageError(f"invalid history remote: '{_shown(shown)}'")
    if scheme not in ("http", "https"):
        if colon:
            raise UsageError(f"a password in the history remote {shown} works only over http(s)")
        return Remote(value, value, None)  # ssh://git@host/...: a user name, no secret
    secrets = [userinfo, password, urllib.parse.unquote(password)] if colon else [userinfo]
    _SECRETS.extend(s for s in secrets if len(s) >= SHORTEST_SECRET and s not in _SECRETS)
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    basic = base64.b64encode(pair.encode("utf-8")).decode("ascii")
    header = (f"{scheme}://{host}/", f"Authorization: Basic {basic}")
    return Remote(f"{scheme}://{host}{rest}", shown, header)


def _add_git_config(env: dict[str, str], key: str, value: str) -> None:
    """Add one setting through GIT_CONFIG_COUNT/KEY/VALUE, keeping the caller's."""
    try:
        count = int(env.get("GIT_CONFIG_COUNT") or "0")
    except ValueError:
        count = 0
    env[f"GIT_CONFIG_KEY_{count}"] = key
    env[f"GIT_CONFIG_VALUE_{count}"] = value
    env["GIT_CONFIG_COUNT"] = str(count + 1)


def _git_environment(remote: Remote) -> dict[str, str]:
    """No prompts; credentials (URL userinfo, else the token) as a header in the environment."""
    # Either may hold credentials.
    env = {k: v for k, v in os.environ.items() if k not in (REMOTE_ENV, TRACKER_HISTORY_ENV)}
    env["GIT_TERMINAL_PROMPT"] = "0"
    token = env.pop(TOKEN_ENV, "")
    if remote.header is not None:
        prefix, header = remote.header
        _add_git_config(env, f"http.{prefix}.extraheader", header)
    elif token:
        server = (env.get("GITHUB_SERVER_URL") or "https://github.com").rstrip("/")
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode("ascii")
        _add_git_config(env, f"http.{server}/.extraheader", f"AUTHORIZATION: basic {basic}")
    return env


# --------------------------------------------------------------------------
# Git
# --------------------------------------------------------------------------


class Completed(NamedTuple):
    returncode: int
    stdout: bytes
    stderr: bytes

    def problem(self, what: str) -> str:
        lines = [line.strip() for line in self.stderr.decode("utf-8", "replace").splitlines()]
        lines = [line for line in lines if line]
        errors = [line for line in lines if line.startswith(("fatal:", "error:"))]
        return f"{what}: {(errors or lines or [f'exit status {self.returncode}'])[0]}"


class Git:
    """git with an argument list (never a shell) in one repository and environment."""

    def __init__(self, repo: str, env: dict[str, str]) -> None:
        self.repo = repo
        self.env = env

    def _popen(self, args: Sequence[str], stdout: Union[int, IO[bytes]]) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                ["git", "-C", self.repo, *args],
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=self.env,
            )
        except OSError as error:
            raise HistoryError(f"cannot run git: {error.strerror or error}") from None

    def run(self, args: Sequence[str], *, stdin: bytes = b"") -> Completed:
        process = self._popen(args, subprocess.PIPE)
        out, err = process.communicate(stdin)
        return Completed(process.returncode, out, err)

    def checked(self, args: Sequence[str], *, stdin: bytes = b"") -> bytes:
        result = self.run(args, stdin=stdin)
        if result.returncode != 0:
            raise GitFailure(result.problem(f"git {args[0]} failed"))
        return result.stdout

    def read_blob(self, blob: str, sink: Callable[[bytes], object]) -> None:
        """Stream a blob's exact bytes (cat-file applies no filters) into `sink`, by chunks."""
        process = self._popen(["cat-file", "blob", blob], subprocess.PIPE)
        stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
        assert stdin and stdout and stderr  # all three are pipes
        stdin.close()
        for chunk in iter(lambda: stdout.read(CHUNK), b""):
            sink(chunk)
        err = stderr.read()
        if process.wait() != 0:
            raise GitFailure(Completed(process.returncode, b"", err).problem("git cat-file failed"))


def _listed_tip(git: Git, remote: str, branch: str) -> Optional[str]:
    """The history branch's tip as the remote lists it (one small round trip, no fetch)."""
    ref = f"refs/heads/{branch}"
    listed = git.run(["ls-remote", "--exit-code", "--heads", "--", remote, ref])
    if listed.returncode == 2:
        return None
    if listed.returncode != 0:
        raise GitFailure(listed.problem(f"cannot reach {remote}"))
    return listed.stdout.split(b"\t", 1)[0].decode("ascii", "replace").strip()


def _fetch_tip(
    git: Git, remote: str, branch: str, *, shallow: bool, listed: bool = False
) -> Optional[str]:
    """Fetch the history branch; its tip commit, or None when it does not exist yet
    (`listed`: the caller's ls-remote just found it)."""
    if not listed and _listed_tip(git, remote, branch) is None:
        return None
    ref = f"refs/heads/{branch}"
    # A private ref per call: concurrent calls in one repository do not meet.
    private = f"refs/deployment-history/fetch-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fetch = ["fetch", "--quiet", "--no-tags", "--no-write-fetch-head"]
    # A shallow CI checkout only needs the tip, not every earlier copy of the file.
    fetch += ["--depth=1"] if shallow else []
    git.checked([*fetch, "--", remote, f"+{ref}:{private}"])
    try:
        return git.checked(["rev-parse", "--verify", f"{private}^{{commit}}"]).decode().strip()
    finally:
        git.run(["update-ref", "-d", private])


def _commit(git: Git, path: str, parent: Optional[str], message: str) -> str:
    """Store the file byte for byte as the content of a new commit on top of `parent`."""
    database = git.checked(["hash-object", "-w", "--no-filters", "--", path]).decode().strip()
    stored = hashlib.sha256()
    git.read_blob(database, stored.update)
    if stored.hexdigest() != _file_digest(path):
        raise HistoryError("git stored the history database with different bytes; not pushed")
    readme = git.checked(["hash-object", "-w", "--stdin"], stdin=README.encode()).decode().strip()
    listing = f"100644 blob {readme}\tREADME.md\n100644 blob {database}\t{HISTORY_FILE}\n"
    tree = git.checked(["mktree"], stdin=listing.encode()).decode().strip()
    parents = ["-p", parent] if parent else []
    commit = git.checked(["commit-tree", tree, *parents, "-F", "-"], stdin=message.encode())
    return commit.decode().strip()


def _commit_message(args: Sequence[str]) -> str:
    line = _CONTROL.sub(" ", "deployment-tracker " + shlex.join(args))
    return (line if len(line) <= 200 else line[:197] + "...") + "\n"


_LOST_RACE = re.compile(
    rb"\[remote rejected\].*(cannot lock ref|failed to update ref|incorrect old)"
)


def _push(git: Git, remote: Remote, branch: str, commit: str) -> None:
    """Push without force: a push based on an outdated tip is rejected."""
    refspec = f"{commit}:refs/heads/{branch}"
    result = git.run(
        ["push", "--quiet", "--no-verify", "--porcelain", "--", remote.target, refspec]
    )
    if result.returncode != 0:
        # (fetch first), (non-fast-forward), or another push updating the ref meanwhile: a race.
        if b"[rejected]" in result.stdout or _LOST_RACE.search(result.stdout):
            raise GitFailure(f"push to {remote.shown} rejected (the history moved on)")
        if b"[remote rejected]" in result.stdout:
            # A hook or a ruleset refused it: trying again can't help, and the server said why.
            raise HistoryError(
                f"the server refused the push to {remote.shown} {branch}: {_server_says(result)}"
            )
        raise GitFailure(result.problem(f"cannot push to {remote.shown}"))


def _server_says(result: Completed) -> str:
    """What the server gave as its reason: its `remote:` lines, else the porcelain reason."""
    said = []
    for line in result.stderr.decode("utf-8", "replace").splitlines():
        text = line.strip()
        if text.startswith("remote:") and text[7:].strip():
            said.append(text[7:].strip())
    if not said:
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            if "[remote rejected]" in line:
                said.append(line.split("[remote rejected]", 1)[1].strip())
    shown = _shown(" / ".join(said)) or "no reason given"
    return shown if len(shown) <= 300 else shown[:297] + "..."


# --------------------------------------------------------------------------
# The database file
# --------------------------------------------------------------------------


def _fetch_database(git: Git, commit: str, path: str, limit: int) -> bool:
    """Copy the history file of `commit` to `path`; False when the commit has none."""
    listing = git.checked(["ls-tree", "-z", commit, "--", HISTORY_FILE])
    if not listing:
        return False
    mode, kind, blob = listing.split(b"\t", 1)[0].decode("ascii").split()
    if kind != "blob" or mode not in ("100644", "100755"):
        raise HistoryError(f"{HISTORY_FILE} on the history branch is not a regular file")
    size = int(git.checked(["cat-file", "-s", blob]))
    if size > limit:
        raise HistoryError(
            f"the history database is {size} bytes, over the limit of {limit} ({MAX_BYTES_ENV})"
        )
    with open(path, "wb") as copy:
        git.read_blob(blob, copy.write)
    if os.path.getsize(path) != size:
        raise GitFailure(f"git cat-file gave {os.path.getsize(path)} of {size} bytes")
    return True


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _open(path: str, deadline: float, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection whose statements stop `deadline` seconds after it opened; no schema
    function (views, triggers, defaults) may call a non-innocuous function."""
    location = Path(path).resolve().as_uri() + ("?mode=ro" if read_only else "")
    db = sqlite3.connect(location, uri=True, isolation_level=None)
    limit = time.monotonic() + deadline
    db.set_progress_handler(lambda: int(time.monotonic() > limit), 10_000)
    db.execute("PRAGMA trusted_schema = OFF")
    return db


def _refused(step: str, error: sqlite3.Error, deadline: float) -> HistoryError:
    if "interrupted" in str(error):
        return HistoryError(
            f"the history database took over {deadline:g} s to be {step} ({SQL_DEADLINE_ENV});"
            " refusing to use it"
        )
    return HistoryError(f"the history database cannot be {step}: {error}")


def _check_schema(db: sqlite3.Connection) -> None:
    """Only the tables and indexes the tracker makes: a view, a trigger or any other object
    of a crafted file is refused by name before any statement could run its SQL."""
    rows = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
    for kind, name, table, sql in rows:
        expected = (
            name in EXPECTED_TABLES and table == name and str(sql).startswith("CREATE TABLE ")
            if kind == "table"
            else kind == "index" and EXPECTED_INDEXES.get(name) == table
        )
        if not expected:
            shown = _shown(str(name))
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise HistoryError(
                f"history database holds an unexpected {_shown(str(kind))} '{shown}'"
                " (not one of the tracker's tables or indexes); refusing to use it"
            )


def _make_self_contained(path: str, deadline: float, *, fetched: bool) -> None:
    """Checkpoint the WAL into the file and leave it in rollback-journal mode, checked.

    A fetched file's schema is checked first. It then gets integrity_check, which also
    matches every index with its table: an index that disagrees with its table changes what
    queries through it answer (quick_check misses that). After the tracker's own write to a
    checked file, quick_check is enough.
    """
    check = "integrity_check(1)" if fetched else "quick_check(1)"
    try:
        db = _open(path, deadline)
    except sqlite3.Error as error:
        raise _refused("opened", error, deadline) from None
    try:
        if fetched:
            _check_schema(db)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("PRAGMA journal_mode = DELETE")
        result = str(db.execute(f"PRAGMA {check}").fetchone()[0])
        # After a write that freed much (a prune), the stored file shrinks with it.
        free, pages = (db.execute(f"PRAGMA {name}").fetchone()[0] for name in FREE_AND_ALL)
        if not fetched and result == "ok" and free * 4 > pages:
            db.execute("VACUUM")
    except sqlite3.Error as error:
        raise _refused("checked", error, deadline) from None
    finally:
        db.close()
    if result != "ok":
        raise HistoryError(
            f"history database failed its integrity check ({result}); refusing to use it"
            " (restore the history branch to an earlier commit)"
        )
    for suffix in ("-wal", "-shm", "-journal"):
        Path(path + suffix).unlink(missing_ok=True)


def _content_digest(path: str, deadline: float) -> Optional[str]:
    """A digest of the database's content (not its bytes); None when there is no file."""
    if not os.path.exists(path):
        return None
    digest = hashlib.sha256()
    try:
        db = _open(path, deadline, read_only=True)
    except sqlite3.Error as error:
        raise _refused("read", error, deadline) from None
    try:
        for pragma in ("user_version", "application_id"):
            digest.update(f"{pragma}={db.execute(f'PRAGMA {pragma}').fetchone()[0]}\n".encode())
        for statement in db.iterdump():
            digest.update(statement.encode("utf-8", "surrogatepass") + b"\n")
    except sqlite3.Error as error:
        raise _refused("read", error, deadline) from None
    finally:
        db.close()
    return digest.hexdigest()


# --------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------


def _tracker_command(option: Optional[str]) -> list[str]:
    """The tracker's command words: --tracker, else $DEPLOYMENT_TRACKER_COMMAND, else PATH."""
    text = option if option is not None else os.environ.get(TRACKER_ENV, "")
    if text.strip():
        try:
            return shlex.split(text)
        except ValueError as error:
            raise UsageError(f"invalid tracker command '{_shown(text)}': {error}") from None
    found = shutil.which("deployment-tracker")
    if found is None:
        raise HistoryError(f"deployment-tracker is not on PATH (install it, or set {TRACKER_ENV})")
    return [found]


def _run_tracker(
    tracker: Sequence[str], args: Sequence[str], db_path: str, github_output: Optional[str]
) -> Completed:
    hidden = (TOKEN_ENV, REMOTE_ENV, TRACKER_DB_ENV, TRACKER_HISTORY_ENV)
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    env.pop("GITHUB_OUTPUT", None)
    if github_output is not None:
        env["GITHUB_OUTPUT"] = github_output
    try:
        completed = subprocess.run(
            [*tracker, "--db", db_path, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            check=False,
        )
    except OSError as error:
        raise HistoryError(f"cannot run {tracker[0]}: {error.strerror or error}") from None
    return Completed(completed.returncode, completed.stdout, completed.stderr)


def _pass_on(result: Completed, github_output: Optional[str], target: Optional[str]) -> None:
    """Hand the chosen attempt's output to our caller."""
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    sys.stderr.flush()
    if not (github_output and target and os.path.exists(github_output)):
        return
    content = Path(github_output).read_bytes()
    try:
        with open(target, "ab") as output:
            output.write(content)
    except OSError as error:
        raise HistoryError(f"cannot write GITHUB_OUTPUT file {target}: {error.strerror}") from None


# --------------------------------------------------------------------------
# Attempts
# --------------------------------------------------------------------------


class Settings(NamedTuple):
    remote: Remote
    branch: str
    repo: str
    attempts: Optional[int]  # None: until the write deadline
    backoff: float
    tracker: list[str]
    max_bytes: int
    deadline: float
    command: list[str]
    write_deadline: float = DEFAULT_WRITE_DEADLINE_SECONDS
    session: str = ""  # $DEPLOYMENT_HISTORY_SESSION: a job's calls share one fetch
    announce: bool = False  # say which history a read saw, and what a write pushed
    show_commits: bool = False  # list the commits a `rollback-target --preview` names


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size * (2 if unit == "days" else 1):
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _announce_read(git: Git, s: Settings, tip: str) -> None:
    """Which commit of the history a read saw, and when it was written (its committer time)."""
    written = int(git.checked(["show", "-s", "--format=%ct", tip, "--"]).decode().strip())
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(written))
    ago = _ago(time.time() - written)
    line = f"history: {s.remote.shown} {s.branch} at {tip[:7]}, last written {at} ({ago})"
    print(_shown(line), file=sys.stderr, flush=True)


def _import(s: Settings, git: Git, shallow: bool, scratch: str) -> int:
    """`import FILE [--replace]`: FILE, checked as a fetched file is, becomes the history."""
    args = s.command[1:]
    replace = "--replace" in args
    files = [arg for arg in args if arg != "--replace"]
    if len(files) != 1 or files[0].startswith("-"):
        raise UsageError(IMPORT_USAGE)
    source = files[0]
    if not os.path.isfile(source):
        raise UsageError(f"no such database file: '{_shown(source)}'")
    if os.path.getsize(source) > s.max_bytes:
        raise HistoryError(f"{_shown(source)} is over the limit of {s.max_bytes} bytes")
    db_path = os.path.join(scratch, HISTORY_FILE)
    shutil.copyfile(source, db_path)
    _make_self_contained(db_path, s.deadline, fetched=True)
    db = _open(db_path, s.deadline)
    try:
        db.execute("VACUUM")
        count = int(db.execute("SELECT count(*) FROM deployments").fetchone()[0])
    except sqlite3.Error as error:
        raise _refused("read", error, s.deadline) from None
    finally:
        db.close()
    # The tracker must read it as it is (a file from a newer tracker is refused here, not later).
    check = _run_tracker(s.tracker, ["list", "--limit", "1"], db_path, None)
    if check.returncode != 0:
        said = check.stderr.decode("utf-8", "replace").strip().splitlines() or ["no reason"]
        raise HistoryError(f"the tracker refuses {_shown(source)}: {_shown(said[-1])}")
    tip = _fetch_tip(git, s.remote.target, s.branch, shallow=shallow)
    if tip is not None and not replace:
        raise HistoryError(
            f"{s.remote.shown} already has a history on {s.branch} (at {tip[:7]}):"
            " add --replace to replace it (its earlier commits stay on the branch)"
        )
    deployments = f"{count} deployment{'' if count == 1 else 's'}"
    message = f"deployment-history import: {deployments}\n"
    commit = _commit(git, db_path, tip, message)
    _push(git, s.remote, s.branch, commit)
    done = f"history: imported {deployments} as {commit[:7]} to {s.remote.shown} {s.branch}"
    print(_shown(done), file=sys.stderr, flush=True)
    return 0


class _Session:
    """A job's copy of the history, kept between its calls ($DEPLOYMENT_HISTORY_SESSION=DIR):
    a call whose remote still lists the tip it holds takes the checked file from there instead
    of fetching, extracting and checking it again, so a job fetches the history once and each
    further call costs one `ls-remote`. Only what this process fetched and checked, or wrote and
    pushed, is kept; any other tip means a fetch."""

    def __init__(self, folder: str, remote: str, branch: str) -> None:
        key = hashlib.sha256(f"{remote}\0{branch}".encode()).hexdigest()[:16]
        self.base = os.path.join(folder, key)

    def take(self, git: Git, tip: str, db_path: str) -> Optional[str]:
        """Copy the kept file to `db_path` when it is `tip`'s; its content digest, or None."""
        try:
            with open(self.base + ".tip", encoding="ascii") as file:
                kept_tip, digest = file.read().split()
        except (OSError, ValueError):
            return None
        if kept_tip != tip or git.run(["cat-file", "-e", f"{tip}^{{commit}}"]).returncode:
            return None
        shutil.copyfile(self.base + ".db", db_path)
        return digest

    def keep(self, tip: str, db_path: str, digest: str) -> None:
        os.makedirs(os.path.dirname(self.base), exist_ok=True)
        shutil.copyfile(db_path, self.base + ".db.new")
        os.replace(self.base + ".db.new", self.base + ".db")
        with open(self.base + ".tip.new", "w", encoding="ascii") as file:
            file.write(f"{tip} {digest}\n")
        os.replace(self.base + ".tip.new", self.base + ".tip")


class _Loaded(NamedTuple):
    tip: Optional[str]  # None: no history yet
    digest: Optional[str]  # of its content, when known (a write needs it)


def _load(s: Settings, git: Git, shallow: bool, db_path: str) -> _Loaded:
    """The history at the remote's tip, checked, as `db_path` (absent if there is none)."""
    reads = s.command[0] in READ_COMMANDS
    session = _Session(s.session, s.remote.target, s.branch) if s.session else None
    listed = _listed_tip(git, s.remote.target, s.branch) if session else None
    kept = session.take(git, listed, db_path) if session and listed else None
    if kept is not None:
        return _Loaded(listed, kept)
    if session and listed is None:
        tip = None
    else:
        tip = _fetch_tip(git, s.remote.target, s.branch, shallow=shallow, listed=bool(listed))
    if tip is None or not _fetch_database(git, tip, db_path, s.max_bytes):
        if reads:
            raise HistoryError(
                f"no deployment history yet: {s.remote.shown} has no branch {s.branch}"
            )
        return _Loaded(tip, None if reads else _content_digest(db_path, s.deadline))
    _make_self_contained(db_path, s.deadline, fetched=True)
    # A read never pushes, so it needs no digest (each reads the whole history), unless the
    # session keeps the file for the job's next calls.
    digest = None if reads and not session else _content_digest(db_path, s.deadline)
    if session and digest:
        session.keep(tip, db_path, digest)
    return _Loaded(tip, digest)


def _attempt(s: Settings, git: Git, shallow: bool, scratch: str, target: Optional[str]) -> int:
    """Fetch, apply the command to a fresh copy, commit and push; its exit code."""
    if s.command[0] == IMPORT:
        return _import(s, git, shallow, scratch)
    db_path = os.path.join(scratch, HISTORY_FILE)
    github_output = os.path.join(scratch, "github_output") if target else None
    reads = s.command[0] in READ_COMMANDS
    tip, before = _load(s, git, shallow, db_path)
    if s.announce and tip is not None and reads:
        _announce_read(git, s, tip)
    result = _run_tracker(s.tracker, s.command, db_path, github_output)
    if result.returncode != 0:
        _pass_on(result, None, None)
        return result.returncode
    if os.path.exists(db_path) and not reads:
        _make_self_contained(db_path, s.deadline, fetched=False)
    after = None if reads else _content_digest(db_path, s.deadline)
    if after is not None and after != before:
        commit = _commit(git, db_path, tip, _commit_message(s.command))
        _push(git, s.remote, s.branch, commit)
        if s.session:
            _Session(s.session, s.remote.target, s.branch).keep(commit, db_path, after)
        pushed = f"history: pushed {commit[:7]} to {s.remote.shown} {s.branch}"
    else:
        pushed = ""
    _pass_on(result, github_output, target)
    if s.show_commits:
        _show_commits(git, result.stdout)
    if s.announce and pushed:
        print(_shown(pushed), file=sys.stderr, flush=True)
    return 0


def _run(s: Settings) -> int:
    """Attempt until one lands; only the final attempt's output reaches the caller."""
    git = Git(s.repo, _git_environment(s.remote))
    inside = git.run(["rev-parse", "--is-shallow-repository"])
    if inside.returncode != 0:
        where = "the current directory" if s.repo == "." else s.repo
        raise HistoryError(inside.problem(f"{where} is not a usable git repository"))
    if git.run(["var", "GIT_COMMITTER_IDENT"]).returncode != 0:
        for name, value in FALLBACK_IDENTITY.items():
            git.env.setdefault(name, value)
    shallow = inside.stdout.strip() == b"true"
    target = os.environ.get("GITHUB_OUTPUT") or None
    jitter = random.SystemRandom()
    problem = ""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        if attempt > 1:
            left = s.write_deadline - (time.monotonic() - started)
            if left <= 0 or (s.attempts is not None and attempt > s.attempts):
                break
            delay = jitter.uniform(0, min(MAX_BACKOFF_SECONDS, s.backoff * 2 ** (attempt - 2)))
            wait = min(delay, left)
            if s.attempts is not None:
                _say(f"{problem}; attempt {attempt}/{s.attempts} in {wait:.1f}s")
            else:
                _say(f"{problem}; attempt {attempt} in {wait:.1f}s ({left:.0f}s left)")
            time.sleep(wait)
        with tempfile.TemporaryDirectory(prefix="deployment-history-") as scratch:
            try:
                return _attempt(s, git, shallow, scratch, target)
            except GitFailure as error:
                problem = str(error)
    verb = "read" if s.command[0] in READ_COMMANDS else "update"
    made = attempt - 1
    tries = f" after {made} attempts in {time.monotonic() - started:.0f}s" if made > 1 else ""
    raise HistoryError(
        f"could not {verb} the deployment history on {s.remote.shown} {s.branch}{tries}: {problem}"
    )


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _number_in(kind: type[float], low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in {low:g}..{high:g}")
        return value

    return convert


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        usage="%(prog)s [OPTIONS] -- TRACKER-SUBCOMMAND ARGS...",
        description="Run a deployment-tracker command against the history on a git branch.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    remote_help = f"name, URL or path (one with credentials: in ${REMOTE_ENV})"
    add("--remote", default=os.environ.get(REMOTE_ENV) or DEFAULT_REMOTE, help=remote_help)
    add("--branch", default=os.environ.get(BRANCH_ENV) or DEFAULT_BRANCH, help="history branch")
    add("--repo", default=".", help="local git repository to work from (default: .)")
    add(
        "--attempts",
        type=_number_in(int, 1, 1000),
        default=None,
        help=f"at most this many attempts (default: until ${WRITE_DEADLINE_ENV}, 600 s)",
    )
    add("--backoff", type=_number_in(float, 0, 60), default=DEFAULT_BACKOFF_SECONDS)
    add("--tracker", help=f"tracker command (env {TRACKER_ENV}; default: on PATH)")
    add("command", nargs=argparse.REMAINDER, help="the tracker subcommand and its arguments")
    return parser


def _check_branch(branch: str) -> str:
    valid = not branch.startswith("-") and not _CONTROL.search(branch)
    if valid:
        check = subprocess.run(["git", "check-ref-format", f"refs/heads/{branch}"], check=False)
        valid = check.returncode == 0
    if not valid:
        raise UsageError(f"invalid history branch: '{_shown(branch)}'")
    return branch


def _max_bytes() -> int:
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    if not text.isdigit():
        raise UsageError(f"{MAX_BYTES_ENV} must be a number of bytes, not '{_shown(text)}'")
    return int(text)


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(_number_in(float, 0.001, 3600)(text))
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"{name} must be seconds: {_shown(str(error))}") from None


def _settings(argv: list[str]) -> Settings:
    if "--" in argv:
        split = argv.index("--")
        options, command = _parser().parse_args(argv[:split]), argv[split + 1 :]
        if options.command:
            raise UsageError(f"unexpected argument before --: '{_shown(options.command[0])}'")
    else:
        options = _parser().parse_args(argv)
        command = list(options.command)
    if not command or command[0].startswith("-") or command[0] == "with-history":
        shown = f"'{_shown(command[0])}'" if command else "nothing"
        raise UsageError(f"expected -- and a tracker subcommand (e.g. -- record ...), not {shown}")
    if command[0] == IMPORT and {"-h", "--help"} & set(command[1:]):
        print(f"{IMPORT_USAGE}\n\n{IMPORT_HELP}")
        raise SystemExit(0)
    return Settings(
        remote=_parse_remote(options.remote),
        branch=_check_branch(options.branch),
        repo=options.repo,
        attempts=None if options.attempts is None else int(options.attempts),
        backoff=float(options.backoff),
        tracker=_tracker_command(options.tracker),
        max_bytes=_max_bytes(),
        deadline=_seconds(SQL_DEADLINE_ENV, DEFAULT_SQL_DEADLINE_SECONDS),
        command=command,
        write_deadline=_seconds(WRITE_DEADLINE_ENV, DEFAULT_WRITE_DEADLINE_SECONDS),
        session=os.environ.get(SESSION_ENV, ""),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    return _guarded(lambda: _run(_settings(list(sys.argv[1:] if argv is None else argv))))


# The last line of the tracker's `rollback-target --preview`: the commits the rollback undoes.
_PREVIEW_RANGE = re.compile(
    rb"(?m)^Commits between \(in a clone\): git log --oneline"
    rb" ([0-9a-f]{7,64})\.\.([0-9a-f]{7,64})$"
)


def _show_commits(git: Git, stdout: bytes) -> None:
    """The commits of a rollback preview, from the clone this runs in."""
    found = _PREVIEW_RANGE.search(stdout)
    if found is None:
        return
    span = f"{found[1].decode()}..{found[2].decode()}"
    listed = git.run(["log", "--oneline", "--no-decorate", "--no-color", span, "--"])
    if listed.returncode != 0:
        print(f"(those commits are not in this clone: git fetch, then git log {span})")
        return
    lines = listed.stdout.decode("utf-8", "replace").splitlines()
    print(f"{len(lines)} commit{'s' * (len(lines) != 1)} undone:")
    for line in lines:
        print(f"  {_shown(line)}")


def run_for_tracker(remote: str, command: Sequence[str], tracker: Sequence[str]) -> int:
    """`deployment-tracker --history REMOTE COMMAND...`: COMMAND, run by `tracker`, against
    REMOTE's history branch from the current git repository; its exit code.

    A read is one attempt (it has no race to lose, and a person is waiting) and says on stderr
    which commit it read and how old that is; a write retries as the workflow's do."""
    argv = [f"--remote={remote}", f"--tracker={shlex.join(tracker)}", "--", *command]

    def run() -> int:
        preview = command[:1] == ["rollback-target"] and "--preview" in command
        s = _settings(argv)._replace(announce=True, show_commits=preview)
        return _run(s._replace(attempts=1) if s.command[0] in READ_COMMANDS else s)

    return _guarded(run)


def _guarded(run: Callable[[], int]) -> int:
    """`run`'s exit code; a failure of ours is one line on stderr and its exit code."""
    try:
        return run()
    except HistoryError as error:
        _report(str(error))
        return error.exit_code
    except OSError as error:
        _report(str(error))
        return 1


def _report(problem: str) -> None:
    """One line on stderr; inside GitHub Actions, one error annotation."""
    text = _shown(problem)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        print(f"::error title={PROG}::{text.replace('%', '%25')}", file=sys.stderr)
    else:
        print(f"{PROG}: error: {text}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
