"""Webhook notifications, against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from control_helpers import History, ok

import deployment_tracker as dt

ROOT = Path(__file__).resolve().parents[1]
SECRET_PATH = "/services/T000/B000/s3cr3t-token"


class Webhook:
    """A threaded HTTP server answering POSTs with scripted status codes.

    `answers` is consumed one per request (the last one repeats); the answer
    "hang" never responds until the test ends.
    """

    def __init__(self, answers: list[int | str]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                webhook.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                index = min(len(webhook.requests), len(webhook.answers)) - 1
                answer = webhook.answers[index]
                if answer == "hang":
                    webhook.release.wait(30)
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}{SECRET_PATH}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Webhook]]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    servers: list[Webhook] = []

    def start(*answers: int | str) -> Webhook:
        server = Webhook(list(answers))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def history(cli: Callable[..., Result]) -> History:
    return History(cli)


def notify(
    cli: Callable[..., Result], url: str | None, *args: str, name: str = dt.WEBHOOK_ENV_VAR
) -> Result:
    env = {name: url} if url is not None else {dt.WEBHOOK_ENV_VAR: ""}
    return cli("notify", "--retry-delay", "0", *args, env=env)


def test_failed_verification_is_posted_as_slack_json(
    cli: Callable[..., Result], history: History, webhook_server: Callable[..., Webhook]
) -> None:
    server = webhook_server(200)
    deployment_id = history.record("staging", "--run-id", "77", "--run-url", "https://ci.x/r/77")
    history.verify(deployment_id, "failed")
    result = notify(
        cli,
        server.url,
        "--event",
        "verification-failed",
        "--id",
        deployment_id,
        "--message",
        "GET /health -> 500 <boom> & more",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"notified: verification-failed {deployment_id}\n"
    (request,) = server.requests
    assert request["path"] == SECRET_PATH
    assert request["headers"]["Content-Type"] == "application/json"
    text = request["body"]["text"]
    assert set(request["body"]) == {"text"}
    assert text.startswith(f":x: Verification failed in *staging*: {deployment_id}")
    assert f"image {deployment_id}" in text and "status failed" in text
    assert "<https://ci.x/r/77|CI run 77>" in text
    assert "GET /health -&gt; 500 &lt;boom&gt; &amp; more" in text


def test_rollback_and_rollback_failed_messages(
    cli: Callable[..., Result], history: History, webhook_server: Callable[..., Webhook]
) -> None:
    server = webhook_server(200)
    good = history.record("staging", verified=True)
    history.record("staging")
    rollback = history.rollback("staging", good)
    ok(notify(cli, server.url, "--event", "rollback", "--id", rollback))
    ok(notify(cli, server.url, "--event", "rollback-failed", "--id", rollback))
    first, second = (request["body"]["text"] for request in server.requests)
    assert first.startswith(f":rewind: Automatic rollback in *staging*: now running {rollback}")
    assert f"restores {good}" in first
    assert second.startswith(":rotating_light: Rollback failed in *staging*")
    assert "manual action needed" in second


def test_a_5xx_is_retried_until_delivered(
    cli: Callable[..., Result], history: History, webhook_server: Callable[..., Webhook]
) -> None:
    server = webhook_server(500, 503, 200)
    deployment_id = history.record("staging")
    result = notify(cli, server.url, "--event", "rollback-failed", "--id", deployment_id)
    assert result.exit_code == 0
    assert len(server.requests) == 3
    assert "attempt 1/4 failed (HTTP 500)" in result.stderr
    assert "attempt 2/4 failed (HTTP 503)" in result.stderr
    assert result.stderr.endswith(f"notified: rollback-failed {deployment_id}\n")
    assert server.requests[0]["body"] == server.requests[2]["body"]


def test_a_server_that_never_answers_times_out_and_still_exits_0(
    cli: Callable[..., Result], history: History, webhook_server: Callable[..., Webhook]
) -> None:
    server = webhook_server("hang")
    deployment_id = history.record("staging")
    result = notify(
        cli,
        server.url,
        "--event",
        "rollback",
        "--id",
        deployment_id,
        "--timeout",
        "0.5",
        "--retries",
        "1",
    )
    assert result.exit_code == 0
    assert len(server.requests) == 2
    assert "timed out" in result.stderr
    assert "WARNING: notification not sent" in result.stderr
    assert SECRET_PATH not in result.output


def test_a_4xx_is_not_retried(
    cli: Callable[..., Result], history: History, webhook_server: Callable[..., Webhook]
) -> None:
    server = webhook_server(404)
    deployment_id = history.record("staging")
    result = notify(cli, server.url, "--event", "rollback", "--id", deployment_id)
    assert result.exit_code == 0
    assert len(server.requests) == 1
    assert "WARNING: notification not sent: HTTP 404" in result.stderr


def test_an_unreachable_or_bad_url_warns_and_exits_0(
    cli: Callable[..., Result], history: History, webhook_server: Callable[..., Webhook]
) -> None:
    server = webhook_server(200)
    url = server.url
    server.close()  # nothing listens there any more
    deployment_id = history.record("staging")
    result = notify(cli, url, "--event", "rollback", "--id", deployment_id, "--retries", "1")
    assert result.exit_code == 0
    assert "WARNING: notification not sent" in result.stderr
    assert SECRET_PATH not in result.output
    result = notify(cli, "file:///etc/passwd", "--event", "rollback", "--id", deployment_id)
    assert result.exit_code == 0
    assert "not an http(s) URL" in result.stderr


def test_no_url_is_a_quiet_no_op(cli: Callable[..., Result], history: History) -> None:
    deployment_id = history.record("staging")
    result = notify(cli, None, "--event", "rollback", "--id", deployment_id)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == f"note: {dt.WEBHOOK_ENV_VAR} is not set; no notification sent\n"


def test_the_url_variable_can_be_named(
    cli: Callable[..., Result], history: History, webhook_server: Callable[..., Webhook]
) -> None:
    server = webhook_server(200)
    deployment_id = history.record("staging")
    result = notify(
        cli,
        server.url,
        "--event",
        "rollback",
        "--id",
        deployment_id,
        "--webhook-url-env",
        "SLACK_DEPLOYS",
        name="SLACK_DEPLOYS",
    )
    assert result.exit_code == 0 and len(server.requests) == 1


def test_a_missing_record_or_database_still_notifies(
    cli: Callable[..., Result], webhook_server: Callable[..., Webhook], db_path: Path
) -> None:
    server = webhook_server(200)
    missing = "main_abcdef1_20260101000000"
    result = notify(cli, server.url, "--event", "rollback-failed", "--id", missing)
    assert result.exit_code == 0
    assert "sending without deployment details" in result.stderr
    assert server.requests[0]["body"]["text"].startswith(":rotating_light: Rollback failed after")
    assert not db_path.exists()


def test_invalid_usage_is_exit_2(cli: Callable[..., Result]) -> None:
    url = "http://127.0.0.1:9/"
    for args in (
        ("--event", "deployed", "--id", "main_abcdef1_20260101000000"),
        ("--event", "rollback", "--id", "nonsense"),
        ("--event", "rollback", "--id", "main_abcdef1_20260101000000", "--retries", "-1"),
        ("--event", "rollback", "--id", "main_abcdef1_20260101000000", "--timeout", "0"),
        ("--event", "rollback", "--id", "main_abcdef1_20260101000000", "--webhook-url-env", "A-B"),
    ):
        result = notify(cli, url, *args)
        assert result.exit_code == 2, (args, result.output)


def test_retry_through_a_real_process(
    history: History, webhook_server: Callable[..., Webhook], db_path: Path
) -> None:
    server = webhook_server(500, 200)
    deployment_id = history.record("staging")
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deployment_tracker.py"),
            "--db",
            str(db_path),
            "notify",
            "--event",
            "verification-failed",
            "--id",
            deployment_id,
            "--retry-delay",
            "0",
        ],
        env={"PATH": "/usr/bin:/bin", dt.WEBHOOK_ENV_VAR: server.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert len(server.requests) == 2
    assert "attempt 1/4 failed (HTTP 500)" in completed.stderr
    assert server.requests[1]["headers"]["User-Agent"] == f"deployment-tracker/{dt.__version__}"
