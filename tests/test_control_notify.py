"""`.github/scripts/deployment_notify.py`: webhook notifications, against real HTTP servers on
127.0.0.1, with the real curl and the installed `deployment-tracker` printing the record."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from history_helpers import Loopback, answer, notify_script, tracker

SECRET_PATH = "/services/T000/B000/s3cr3t-token"
WARNING = "::warning::notification not sent: "
SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
ID = "main_a1b2c3d_20260101100000"
HOSTILE = {
    "id": "main_a1b2c3d_20260101100000",
    "environment": "prod<https://evil|click>",
    "branch": "main\u202eevil\u2066",
    "commit_sha": "a1b2c3d\x1b[31m",
    "image_tag": "tag & <!channel>",
    "status": "failed\x1b]8;;https://evil\x07",
    "rollback_of": None,
    "run_id": "77>",
    "run_url": "https://evil.example/x|fake>",
}


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Loopback]]:
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    started: list[Loopback] = []

    def start(*answers: Callable[[BaseHTTPRequestHandler], None]) -> Loopback:
        """A server answering with `answers` in turn (the last one repeats)."""

        def respond(handler: BaseHTTPRequestHandler) -> None:
            answers[min(len(server.requests), len(answers)) - 1](handler)

        server = Loopback(respond)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def notify(
    url: str | None,
    *args: str,
    record: dict[str, object] | str = HOSTILE,
    env: dict[str, str] | None = None,
    cwd: Path,
) -> subprocess.CompletedProcess[str]:
    stdin = record if isinstance(record, str) else json.dumps(record)
    env = {"DEPLOYMENT_TRACKER_WEBHOOK_URL": url or "", **(env or {})}
    return notify_script("--record", "-", *args, cwd=cwd, env=env, stdin=stdin)


def warned(result: subprocess.CompletedProcess[str]) -> str:
    """The one warning line a failed delivery gives (and exit 0)."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(WARNING), result.stdout
    assert SECRET_PATH not in result.stdout + result.stderr
    return lines[0][len(WARNING) :]


def payload(server: Loopback, index: int = 0) -> str:
    request = server.requests[index]
    assert request.path == SECRET_PATH
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert set(body) == {"text"}
    return str(body["text"])


# --------------------------------------------------------------------------
# Delivered
# --------------------------------------------------------------------------


def test_a_tracker_record_is_posted_as_slack_json(
    tmp_path: Path, servers: Callable[..., Loopback]
) -> None:
    server = servers(answer(200))
    db = str(tmp_path / "d.db")
    extra = ["--run-id", "77", "--run-url", "https://ci.x/r/77", "--id", ID]
    for args in (
        ["record", "-e", "staging", "-b", "main", "-c", SHA, *extra],
        ["verify", "--id", ID, "--status", "failed"],
    ):
        assert tracker("--db", db, *args, cwd=tmp_path).returncode == 0
    printed = tracker("--db", db, "get", "--id", ID, "--format", "json", cwd=tmp_path).stdout
    message = "GET /health -> 500 <boom> & more"
    args = ["--event", "verification-failed", "--message", message]
    result = notify(server.url + SECRET_PATH, *args, record=printed, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "", result.stdout
    assert result.stderr == f"notified: verification-failed {ID}\n"
    text = payload(server)
    assert text.startswith(f":x: Verification failed in *staging*: {ID}\n")
    assert f"image {ID} | branch main | commit a1b2c3d | status failed" in text
    assert "<https://ci.x/r/77|CI run 77>" in text
    assert text.endswith("GET /health -&gt; 500 &lt;boom&gt; &amp; more")


def test_rollback_and_rollback_failed_messages(
    tmp_path: Path, servers: Callable[..., Loopback]
) -> None:
    server = servers(answer(204, b""))
    record = {**HOSTILE, "environment": "staging", "rollback_of": "main_0000000_20250101000000"}
    for event in ("rollback", "rollback-failed"):
        result = notify(server.url + SECRET_PATH, "--event", event, record=record, cwd=tmp_path)
        assert result.stdout == ""
    first, second = payload(server, 0), payload(server, 1)
    assert first.startswith(f":rewind: Automatic rollback in *staging*: now running {ID}")
    assert "restores main_0000000_20250101000000" in first
    assert second.startswith(f":rotating_light: Rollback failed in *staging* after {ID};")
    assert "manual action needed" in second


def test_hostile_values_are_escaped_capped_and_shown(
    tmp_path: Path, servers: Callable[..., Loopback]
) -> None:
    server = servers(answer(200))
    message = "see <https://evil|click> \u202e\u200f\x1b[2J" + "x" * 5000
    result = notify(
        server.url + SECRET_PATH, "--event", "rollback", "--message", message, cwd=tmp_path
    )
    assert result.returncode == 0 and result.stdout == ""
    text = payload(server)
    assert "*prod&lt;https://evil|click&gt;*" in text
    assert "see &lt;https://evil|click&gt; \\u202e\\u200f\\u001b[2J" in text
    assert "branch main\\u202eevil\\u2066" in text
    assert "commit a1b2c3d" in text
    assert "image tag &amp; &lt;!channel&gt;" in text
    assert "status failed\\u001b]8;;https://evil\\u0007" in text
    assert "<https://evil" not in text and "|fake" not in text  # no link from a bad run_url
    assert not any(char in text for char in "\x1b\x07\u202e\u2066\u200f")
    assert len(text) < 2500


def test_a_5xx_is_retried_until_delivered(tmp_path: Path, servers: Callable[..., Loopback]) -> None:
    server = servers(answer(500), answer(503), answer(200))
    result = notify(server.url + SECRET_PATH, "--event", "rollback-failed", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == "", result.stdout
    assert len(server.requests) == 3
    assert server.requests[0].body == server.requests[2].body


def test_no_url_is_a_quiet_no_op(tmp_path: Path) -> None:
    for url in (None, "  "):
        result = notify(url, "--event", "rollback", cwd=tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_an_unusable_record_still_notifies(
    tmp_path: Path, servers: Callable[..., Loopback]
) -> None:
    server = servers(answer(200))
    for record in ("", "not json", "[1, 2]"):
        result = notify(
            server.url + SECRET_PATH, "--event", "rollback-failed", record=record, cwd=tmp_path
        )
        assert result.returncode == 0 and result.stdout == ""
        assert "sending without deployment details" in result.stderr
    assert payload(server).startswith(
        ":rotating_light: Rollback failed after an unknown deployment;"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--event", "deployed"],
        ["--event", "rollback", "--bogus"],
        ["--record", "-"],
    ],
)
def test_invalid_usage_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    env = {"DEPLOYMENT_TRACKER_WEBHOOK_URL": "http://127.0.0.1:9/"}
    result = notify_script(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("deployment-notify: error: ")


# --------------------------------------------------------------------------
# Not delivered: one warning line, exit 0 (each of these fails on `deployment-tracker notify`)
# --------------------------------------------------------------------------


def dripping(release: threading.Event) -> Callable[[BaseHTTPRequestHandler], None]:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        try:
            for _ in range(100):
                handler.wfile.write(b".")
                handler.wfile.flush()
                if release.wait(1):
                    return
        except OSError:
            return

    return respond


def endless(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(2**31))
    handler.end_headers()
    chunk = b"x" * 65536
    try:
        for _ in range(2**31 // len(chunk)):
            handler.wfile.write(chunk)
    except OSError:
        return


def test_a_server_dripping_a_byte_a_second_is_cut_off_at_the_deadline(
    tmp_path: Path, servers: Callable[..., Loopback]
) -> None:
    release = threading.Event()
    server = servers(dripping(release))
    started = time.monotonic()
    result = notify(
        server.url + SECRET_PATH,
        "--event",
        "rollback",
        cwd=tmp_path,
        env={"DEPLOYMENT_NOTIFY_MAX_TIME": "3"},
    )
    elapsed = time.monotonic() - started
    release.set()
    assert "timed out" in warned(result) or "within 3s" in warned(result)
    assert elapsed < 4, elapsed
    assert server.requests


def test_a_huge_answer_is_not_read(tmp_path: Path, servers: Callable[..., Loopback]) -> None:
    server = servers(endless)
    started = time.monotonic()
    env = {"DEPLOYMENT_NOTIFY_MAX_TIME": "5"}
    reason = warned(notify(server.url + SECRET_PATH, "--event", "rollback", cwd=tmp_path, env=env))
    assert time.monotonic() - started < 6
    assert "Maximum file size exceeded" in reason or "within 5s" in reason


def test_a_redirect_is_not_followed(tmp_path: Path, servers: Callable[..., Loopback]) -> None:
    elsewhere = servers(answer(200))
    server = servers(answer(302, b"", {"Location": elsewhere.url + "/catch"}))
    reason = warned(notify(server.url + SECRET_PATH, "--event", "rollback", cwd=tmp_path))
    assert reason == "HTTP 302 redirect (not followed)"
    assert len(server.requests) == 1
    assert elsewhere.requests == []


@pytest.mark.parametrize(
    "url",
    ["http://[oops" + SECRET_PATH, "file:///etc/passwd", "not a url" + SECRET_PATH, 'http://h/"x'],
)
def test_a_malformed_url_is_a_warning(tmp_path: Path, url: str) -> None:
    reason = warned(notify(url, "--event", "rollback", cwd=tmp_path))
    assert reason == "the webhook URL is not a valid http(s) URL"


def test_a_4xx_and_an_unreachable_server_are_warnings(
    tmp_path: Path, servers: Callable[..., Loopback]
) -> None:
    server = servers(answer(404))
    assert (
        warned(notify(server.url + SECRET_PATH, "--event", "rollback", cwd=tmp_path)) == "HTTP 404"
    )
    gone = servers(answer(200))
    url = gone.url + SECRET_PATH
    gone.close()
    assert "Failed to connect" in warned(notify(url, "--event", "rollback", cwd=tmp_path))


def test_neither_url_nor_body_is_on_curls_command_line(
    tmp_path: Path, servers: Callable[..., Loopback]
) -> None:
    server = servers(answer(200))
    real_curl = shutil.which("curl")
    assert real_curl
    wrappers = tmp_path / "bin"
    log = tmp_path / "curl.log"
    wrappers.mkdir()
    (wrappers / "curl").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >> {shlex.quote(str(log))}\n'
        f'exec {shlex.quote(real_curl)} "$@"\n'
    )
    (wrappers / "curl").chmod(0o755)
    env = {"PATH": f"{wrappers}{os.pathsep}{os.environ['PATH']}"}
    result = notify(
        server.url + SECRET_PATH,
        "--event",
        "rollback",
        "--message",
        "BODY-MARK",
        cwd=tmp_path,
        env=env,
    )
    assert result.stdout == ""
    assert "BODY-MARK" in payload(server)
    argv = log.read_text()
    assert "--data-binary" in argv
    assert SECRET_PATH not in argv and "BODY-MARK" not in argv and "127.0.0.1" not in argv


def test_without_curl_it_is_a_warning(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {"PATH": str(empty)}
    assert warned(
        notify("http://127.0.0.1:9" + SECRET_PATH, "--event", "rollback", cwd=tmp_path, env=env)
    ) == ("curl is not installed")
