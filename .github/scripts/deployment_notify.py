#!/usr/bin/env python3
"""deployment-notify: post a Slack-style webhook message about a deployment event.

It lives with the workflow, not in the tracker: it talks HTTP for the workflow and reads the
deployment as `deployment-tracker get --id ID --format json` printed it. Standard library only,
Python 3.9+; delivery is by curl (on every runner) with one overall deadline, no redirects, a
capped answer, and the URL (a secret) and the body kept off the command line.

Usage: deployment_notify.py --event EVENT --record FILE|- [--message TEXT]
The URL comes from $DEPLOYMENT_TRACKER_WEBHOOK_URL (unset or empty: nothing is sent, exit 0).
A notification never fails a deployment: any delivery problem is one line
`::warning::notification not sent: REASON` on stdout and exit 0. Usage errors exit 2.

Sections: settings | the message | delivery by curl | command line
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from typing import Any, NoReturn, Optional

# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------

PROG = "deployment-notify"
URL_ENV = "DEPLOYMENT_TRACKER_WEBHOOK_URL"
MAX_TIME_ENV = "DEPLOYMENT_NOTIFY_MAX_TIME"
DEFAULT_MAX_TIME = 30.0
RETRIES = 2
MAX_ANSWER_BYTES = 64 * 1024
MAX_RECORD_BYTES = 1024 * 1024
FIELD_LIMIT = 200
MESSAGE_LIMIT = 1500
EVENTS = ("verification-failed", "rollback", "rollback-failed")
# C0/C1 controls, line separators and the Unicode bidi controls (which reorder displayed text).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_LINK = re.compile(r"https?://[^\s<>|]+")


class NotSent(Exception):
    """Why the notification was not delivered."""


# --------------------------------------------------------------------------
# The message
# --------------------------------------------------------------------------


def _safe(value: Any, limit: int = FIELD_LIMIT, *, keep_newlines: bool = False) -> str:
    """Untrusted text for Slack mrkdwn: capped, controls shown escaped, &, < and > escaped."""
    text = "true" if value is True else "false" if value is False else str(value or "")
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"

    def shown(match: re.Match[str]) -> str:
        char = match.group()
        return char if keep_newlines and char == "\n" else f"\\u{ord(char):04x}"

    text = _UNSAFE.sub(shown, text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _headline(event: str, record: dict[str, Any]) -> str:
    where = f" in *{_safe(record['environment'])}*" if record.get("environment") else ""
    deployment = _safe(record.get("id") or "an unknown deployment")
    return {
        "verification-failed": f":x: Verification failed{where}: {deployment}",
        "rollback": f":rewind: Automatic rollback{where}: now running {deployment}",
        "rollback-failed": (
            f":rotating_light: Rollback failed{where} after {deployment}; manual action needed"
        ),
    }[event]


def _details(record: dict[str, Any]) -> list[str]:
    if not record.get("id"):
        return []
    details = [
        f"image {_safe(record.get('image_tag'))}",
        f"branch {_safe(record.get('branch'))}",
        f"commit {_safe(str(record.get('commit_sha') or '')[:7])}",
        f"status {_safe(record.get('status'))}",
    ]
    if record.get("rollback_of"):
        details.append(f"restores {_safe(record['rollback_of'])}")
    lines = [" | ".join(details)]
    run_url = str(record.get("run_url") or "")
    if _LINK.fullmatch(run_url) and len(run_url) <= FIELD_LIMIT:
        lines.append(f"<{_safe(run_url)}|CI run {_safe(record.get('run_id'))}>")
    return lines


def notification_text(event: str, record: dict[str, Any], message: Optional[str]) -> str:
    """The Slack-style (mrkdwn) text; every value from the record or message is escaped."""
    lines = [_headline(event, record), *_details(record)]
    if message:
        lines.append(_safe(message, MESSAGE_LIMIT, keep_newlines=True))
    return "\n".join(lines)


def _read_record(path: str) -> dict[str, Any]:
    """The deployment as `get --format json` printed it; {} (no details) when unusable."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(MAX_RECORD_BYTES + 1)
        else:
            with open(path, "rb") as source:
                raw = source.read(MAX_RECORD_BYTES + 1)
        record = json.loads(raw) if len(raw) <= MAX_RECORD_BYTES else None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        print(f"{PROG}: note: sending without deployment details", file=sys.stderr)
        return {}
    return record


# --------------------------------------------------------------------------
# Delivery by curl
# --------------------------------------------------------------------------


def _redact(text: str, url: str) -> str:
    text = text.replace(url, "<webhook URL>") if url else text
    return re.sub(r"(?i)\b[a-z][a-z0-9+.-]*://\S+", "<URL>", text)


def _checked_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotSent("the webhook URL is not a valid http(s) URL")
    if re.search(r"[\s\x00-\x1f\x7f\"\\]", url):
        raise NotSent("the webhook URL is not a valid http(s) URL")
    return url


def _max_time() -> float:
    text = os.environ.get(MAX_TIME_ENV, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_MAX_TIME
    except ValueError:
        seconds = 0
    if not 1 <= seconds <= 600:
        raise NotSent(f"{MAX_TIME_ENV} must be 1 to 600 seconds")
    return seconds


def _curl_arguments(body_path: str, deadline: float) -> list[str]:
    per_attempt = max(1.0, (deadline - RETRIES) / (RETRIES + 1))
    return [
        "curl", "-q", "--config", "-", "--silent", "--show-error", "--fail",
        "--proto", "=https,http", "--max-time", f"{per_attempt:g}",
        "--retry", str(RETRIES), "--retry-all-errors", "--retry-delay", "1",
        "--retry-max-time", f"{deadline:g}", "--max-filesize", str(MAX_ANSWER_BYTES),
        "--output", "/dev/null", "--write-out", "%{http_code}\\n",
        "--header", "Content-Type: application/json", "--user-agent", PROG,
        "--data-binary", f"@{body_path}",
    ]  # fmt: skip


def send(url: str, payload: dict[str, str], deadline: float) -> None:
    """POST the payload with curl within `deadline` seconds; NotSent says why it failed."""
    with tempfile.TemporaryDirectory(prefix="deployment-notify-") as scratch:
        body_path = os.path.join(scratch, "payload.json")
        with open(body_path, "w", encoding="utf-8") as body:
            json.dump(payload, body, ensure_ascii=False)
        config = f'url = "{_checked_url(url)}"\n'
        try:
            done = subprocess.run(
                _curl_arguments(body_path, deadline),
                input=config.encode(),
                capture_output=True,
                timeout=deadline,
                check=False,
            )
        except FileNotFoundError:
            raise NotSent("curl is not installed") from None
        except subprocess.TimeoutExpired:
            raise NotSent(f"no answer within {deadline:g}s") from None
    codes = done.stdout.decode("ascii", "replace").split()
    status = codes[-1] if codes else "000"
    if done.returncode == 0 and status.startswith("2"):
        return
    if status.startswith("3"):
        raise NotSent(f"HTTP {status} redirect (not followed)")
    errors = done.stderr.decode("utf-8", "replace").strip().splitlines()
    # The first error says why; a retry after a partial answer adds "Failed to truncate file".
    problem = errors[0] if errors else f"curl exit status {done.returncode}"
    raise NotSent(f"HTTP {status}" if status[:1] in ("4", "5") else _redact(problem, url))


def _warning(reason: str) -> None:
    escaped = reason.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    print(f"::warning::notification not sent: {escaped}", flush=True)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--event", choices=EVENTS, required=True, help="what happened")
    parser.add_argument("--record", required=True, metavar="FILE", help="get --format json; -")
    parser.add_argument("--message", help="an extra line, e.g. what the check answered")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    options = _parser().parse_args(argv)
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        return 0
    record = _read_record(options.record)
    payload = {"text": notification_text(options.event, record, options.message)}
    try:
        send(url, payload, _max_time())
    except NotSent as problem:
        _warning(str(problem))
        return 0
    print(f"notified: {options.event} {_safe(record.get('id') or '')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
