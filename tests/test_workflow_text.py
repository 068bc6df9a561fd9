"""Untrusted text on its way to the job log, the step summary and the history (issue #11).

deployment-text (.github/scripts/deployment_text.py) and smoke-check.sh, run as the workflow runs
them: real processes, a real HTTP server on 127.0.0.1 answering hostile bytes.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / ".github" / "scripts" / "deployment_text.py"
SMOKE_CHECK = ROOT / ".github" / "scripts" / "smoke-check.sh"

HOSTILE = (
    b"\x1b[31mred\x1b]0;title\x07 caf\xe9 \xff\xfe \xe2\x80\xae reversed \xe2\x80\xac \xc2\x9b"
    b"\x00nul\n##[error]forged\n::add-mask::secret\n# Heading [link](https://evil.invalid)"
    b" <img src=x onerror=alert(1)> | cell | `code` *em* _u_ ![i](x) <!-- c -->\n"
)
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def run_text(mode: str, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(TEXT), mode, *args],
        input=data,
        capture_output=True,
        check=False,
        timeout=30,
    )


def load_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("deployment_text", TEXT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULE = load_module()


def unescape_markdown(text: str) -> str:
    """What a CommonMark renderer shows for our escaping: `\\X` is X, entities are characters."""
    return html.unescape(re.sub(r"\\(.)", r"\1", text))


# --------------------------------------------------------------------------
# note
# --------------------------------------------------------------------------


def test_a_note_from_hostile_bytes_is_one_printable_line() -> None:
    result = run_text("note", HOSTILE)
    assert result.returncode == 0
    note = result.stdout.decode("utf-8").rstrip("\n")
    assert "\n" not in note and note.isprintable()
    assert "\x1b" not in note and "\x00" not in note and "\x9b" not in note
    assert not set(BIDI) & set(note)
    # What was there stays readable: escaped, not silently dropped.
    assert "\\x1b[31mred" in note and "caf\\xe9" in note and "\\u202e" in note
    assert "forged" in note and "Heading" in note


@given(st.binary(max_size=600))
@settings(max_examples=200, deadline=None)
def test_any_bytes_make_a_safe_capped_note(data: bytes) -> None:
    note = MODULE.note(MODULE.decode(data))
    assert note.isprintable() and len(note) <= MODULE.DEFAULT_MAX
    note.encode("utf-8")  # valid UTF-8: no lone surrogates
    assert not set(BIDI) & set(note)


@given(st.text(max_size=400))
@settings(max_examples=200, deadline=None)
def test_any_text_makes_a_safe_capped_note(text: str) -> None:
    note = MODULE.note(text, 120)
    assert note.isprintable() and len(note) <= 120
    note.encode("utf-8")


def test_a_long_note_is_cut_with_an_ellipsis() -> None:
    result = run_text("note", b"x" * 5000, "--max", "50")
    note = result.stdout.decode().rstrip("\n")
    assert len(note) == 50 and note.endswith("…")


def test_text_can_come_as_arguments() -> None:
    result = run_text("note", b"", "--", "a\tb\nc", "d")
    assert result.stdout == b"a b c d\n"


# --------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------


def test_markdown_renders_hostile_text_as_text() -> None:
    result = run_text("markdown", HOSTILE)
    assert result.returncode == 0
    shown = result.stdout.decode("utf-8").rstrip("\n")
    assert "\n" not in shown
    # Nothing that starts a heading, link, image, table cell, code, emphasis or HTML remains.
    for raw in ("[link](", "![i](", "<img", "<!--", "`code`", "*em*", "_u_", "| cell |"):
        assert raw not in shown, raw
    assert "&lt;img" in shown and "\\[link\\]" in shown and "\\#" in shown
    assert unescape_markdown(shown) == MODULE.note(MODULE.decode(HOSTILE))


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_markdown_escaping_is_lossless_and_leaves_no_active_character(text: str) -> None:
    shown = MODULE.markdown(text)
    assert unescape_markdown(shown) == MODULE.note(text)
    # Every ASCII punctuation character is escaped by a backslash or is part of an entity.
    without_entities = re.sub(r"&(amp|lt|gt|quot|#39);", "", shown)
    assert not re.search(r"[<>\"']", without_entities)
    unescaped = re.sub(r"\\[!-/:-@\[-`{-~]", "", without_entities)
    assert not re.search(r"[!#$%()*+,\-./:;=?@\[\]^_`{|}~\\]", unescaped), shown


# --------------------------------------------------------------------------
# log
# --------------------------------------------------------------------------


def test_log_lines_are_fenced_by_stop_commands_with_a_random_token() -> None:
    first = run_text("log", HOSTILE).stdout.decode()
    second = run_text("log", HOSTILE).stdout.decode()
    lines = first.splitlines()
    start = re.fullmatch(r"::stop-commands::([0-9a-f]{32})", lines[0])
    assert start, lines[0]
    token = start.group(1)
    assert lines[-1] == f"::{token}::"
    assert token not in second
    inner = lines[1:-1]
    assert any(line.startswith("##[error]forged") for line in inner)
    assert any(line.startswith("::add-mask::") for line in inner)
    assert all(line.isprintable() for line in inner)
    assert "\x1b" not in first and not set(BIDI) & set(first)


def test_text_cannot_close_the_fence_itself() -> None:
    forged = "::stop-commands::x\n::0123::\n"
    out = MODULE.log(forged, token="0123")
    lines = out.splitlines()
    token = lines[0].split("::stop-commands::", 1)[1]
    assert token != "0123"
    assert lines[-1] == f"::{token}::" and f"::{token}::" not in "\n".join(lines[1:-1])


def test_usage_errors_exit_2_and_nothing_else_fails() -> None:
    assert run_text("shout", b"x").returncode == 2
    for mode in ("note", "markdown", "log"):
        assert run_text(mode, b"").returncode == 0


# --------------------------------------------------------------------------
# smoke-check.sh against a service answering hostile bytes
# --------------------------------------------------------------------------


@pytest.fixture
def hostile_service() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = b"ok\n" if self.path == "/healthz" else HOSTILE * 40
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_smoke_check_quotes_a_hostile_answer_as_short_printable_ascii(
    hostile_service: str,
) -> None:
    env = {
        **os.environ,
        "LC_ALL": "C.UTF-8",
        "ENVIRONMENT_URL": hostile_service,
        "VERSION_PATH": "/version",
        "EXPECTED_VERSION": "main_0123456_20260101000000",
        "SMOKE_RETRIES": "1",
        "SMOKE_RETRY_DELAY": "0",
        "SMOKE_TIMEOUT": "5",
    }
    result = subprocess.run(
        [str(SMOKE_CHECK)], env=env, capture_output=True, check=False, timeout=60
    )
    assert result.returncode == 1
    line = result.stdout.decode("ascii")  # ASCII only, or this raises
    assert line.count("\n") == 1 and line.endswith("\n")
    assert re.fullmatch(r"[ -~]*\n", line)
    assert "version check failed" in line and "##[error]forged" in line
    assert len(line) < 400


def test_the_workflow_pattern_records_even_when_the_check_fails(hostile_service: str) -> None:
    """The verify step's own lines, under bash -e: the recording line always runs."""
    script = (
        "set -euo pipefail\n"
        'if answer=$("$SMOKE_CHECK"); then status=verified; else status=failed; fi\n'
        'note=$(python3 "$TEXT" note -- "$answer") || note="(not shown)"\n'
        'python3 "$TEXT" log -- "$status: $note"\n'
        'printf "RECORDED %s|%s\\n" "$status" "$note"\n'
    )
    env = {
        **os.environ,
        "SMOKE_CHECK": str(SMOKE_CHECK),
        "TEXT": str(TEXT),
        "ENVIRONMENT_URL": hostile_service,
        "VERSION_PATH": "/version",
        "EXPECTED_VERSION": "main_0123456_20260101000000",
        "SMOKE_RETRIES": "1",
        "SMOKE_RETRY_DELAY": "0",
    }
    result = subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode("utf-8")
    (recorded,) = [line for line in out.splitlines() if line.startswith("RECORDED ")]
    status, note = recorded[len("RECORDED ") :].split("|", 1)
    assert status == "failed" and "version check failed" in note and note.isprintable()


# --------------------------------------------------------------------------
# smoke-check.sh: a team's own check, and a bake time (issue 18)
# --------------------------------------------------------------------------


@pytest.fixture
def flaky_service() -> Iterator[str]:
    """Healthy for its first three health checks, broken after: a release that fails later."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            healthy = self.path != "/healthz" or seen.count("/healthz") <= 3
            self.send_response(200 if healthy else 500)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def smoke(url: str, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ENVIRONMENT_URL": url, "SMOKE_RETRIES": "1", "SMOKE_RETRY_DELAY": "0"}
    return subprocess.run(
        [str(SMOKE_CHECK)],
        env={**env, **extra},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_team_s_own_check_runs_after_the_built_in_ones_and_decides(
    flaky_service: str, tmp_path: Path
) -> None:
    url = flaky_service
    (tmp_path / "suite.sh").write_text('echo "suite saw $ENVIRONMENT_URL"; exit "${FAIL:-0}"\n')
    passed = smoke(url, tmp_path, VERIFY_COMMAND="bash suite.sh")
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout == f"GET {url}/healthz answered 200; the verification command passed\n"
    assert f"suite saw {url}" in passed.stderr
    failed = smoke(url, tmp_path, VERIFY_COMMAND="bash suite.sh", FAIL="3")
    assert failed.returncode == 1
    assert failed.stdout.endswith("; the verification command failed (exit 3)\n")


def test_a_bake_time_checks_again_and_catches_a_late_failure(
    flaky_service: str, tmp_path: Path
) -> None:
    url = flaky_service
    first = smoke(url, tmp_path, BAKE_SECONDS="1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout == f"GET {url}/healthz answered 200 (again after 1s)\n"
    late = smoke(url, tmp_path, BAKE_SECONDS="1")
    assert late.returncode == 1
    assert (
        late.stdout
        == f"after 1s: health check failed: GET {url}/healthz answered 500 after 1 attempts\n"
    )
    assert smoke(url, tmp_path, BAKE_SECONDS="soon").returncode == 1
