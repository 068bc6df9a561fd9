"""The README's two commands stay true: CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.DOTALL)


def test_ci_runs_the_readme_test_command() -> None:
    commands = readme_commands()
    assert len(commands) >= 2
    test_command = commands[1]
    assert "pytest" in test_command
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines


def test_first_command_records_and_queries_the_default_database() -> None:
    first = readme_commands()[0]
    assert "deployment-tracker record" in first and "deployment-tracker list" in first
    assert "--db" not in first
