"""Shared fixtures: a fresh database path and a CLI runner bound to it.

Shared helpers that are not fixtures live in helpers.py (import them from there).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pytest
from click.testing import CliRunner, Result
from helpers import CALLER_VARIABLES, History, make_runner

import deployment_tracker as dt


@pytest.fixture(autouse=True)
def caller_settings_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets the real default gates (staging -> production), plain `Error:` lines
    (not GitHub annotations) and no $GITHUB_OUTPUT, whatever the caller's environment says."""
    for name in CALLER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "deployments.db"


@pytest.fixture
def runner() -> CliRunner:
    return make_runner()


@pytest.fixture
def cli(db_path: Path, runner: CliRunner) -> Callable[..., Result]:
    """Invoke the CLI as a user would, against the test's database."""

    def invoke(*args: str, env: Optional[dict[str, str]] = None) -> Result:
        return runner.invoke(dt.cli, ["--db", str(db_path), *args], env=env)

    return invoke


@pytest.fixture
def cli_json(cli: Callable[..., Result]) -> Callable[..., Any]:
    """Invoke a reading command with -o json and return the parsed output."""

    def invoke(*args: str) -> Any:
        result = cli(*args, "-o", "json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return invoke


@pytest.fixture
def history(cli: Callable[..., Result]) -> History:
    """Records deployments with unique, ordered ids and commits."""
    return History(cli)
