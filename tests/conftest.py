"""Shared fixtures: a fresh database path and a CLI runner bound to it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_runner import make_runner
from click.testing import CliRunner, Result

import deployment_tracker as dt

SHA_MAIN = "a" * 40
SHA_BRANCH = "b" * 40


@pytest.fixture(autouse=True)
def promotion_gate_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets the real default gates (staging -> production), whatever the caller's
    environment says."""
    monkeypatch.delenv(dt.GATES_ENV_VAR, raising=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "deployments.db"


@pytest.fixture
def runner() -> CliRunner:
    return make_runner()


@pytest.fixture
def cli(db_path: Path, runner: CliRunner) -> Callable[..., Result]:
    """Invoke the CLI as a user would, against the test's database."""

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(dt.cli, ["--db", str(db_path), *args], env=env)

    return invoke


@pytest.fixture
def cli_json(cli: Callable[..., Result]) -> Callable[..., Any]:
    """Invoke a reading command with --format json and return the parsed output."""

    def invoke(*args: str) -> Any:
        result = cli(*args, "--format", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return invoke
