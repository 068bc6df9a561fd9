"""The installed console script in a real process, and deployments recorded through the CLI.

Shared by test_cli_habits, test_hostile_values and test_gates_record.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Union

from click.testing import Result

SCRIPT = str(Path(sys.executable).with_name("deployment-tracker"))
# Variables of ours, and of GitHub Actions, that would change what the CLI does.
_CALLER_VARIABLES = (
    "DEPLOYMENT_TRACKER_DB",
    "DEPLOYMENT_TRACKER_ENVIRONMENT",
    "DEPLOYMENT_TRACKER_GATES",
    "GITHUB_ACTIONS",
    "GITHUB_OUTPUT",
    "_DEPLOYMENT_TRACKER_COMPLETE",
    "COMP_WORDS",
    "COMP_CWORD",
)

Arg = Union[str, bytes]


def process_env(**extra: str) -> dict[str, str]:
    """The test's environment without the caller's tracker or Actions settings."""
    env = {key: value for key, value in os.environ.items() if key not in _CALLER_VARIABLES}
    env.update(extra)
    return env


def run(
    *args: Arg, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run the console script; stdout and stderr are captured as bytes."""
    return subprocess.run(
        [SCRIPT, *args],
        env=env if env is not None else process_env(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def ok(result: Result) -> str:
    """The stdout of a CliRunner result that must have succeeded."""
    assert result.exit_code == 0, (result.exit_code, result.output, result.stderr)
    return result.stdout


def record(cli: Callable[..., Result], environment: str, branch: str, sha: str, *extra: str) -> str:
    """Record a deployment through the CLI and return its id."""
    return ok(cli("record", "-e", environment, "-b", branch, "-c", sha, *extra)).strip()


def sha(digit: str, index: int = 0) -> str:
    """A full commit sha: `digit` seven times, then `index` in hex."""
    return (digit * 7 + f"{index:033x}")[:40]
