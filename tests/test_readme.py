"""The README stays true: CI runs its test command verbatim, and its console examples run, in
order, on a fresh database and print what the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
# What legitimately differs from run to run: times, ages, and the column padding they cause.
VARYING = (
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d)?Z?"), "<time>"),
    (re.compile(r"\b(\d+[smhd] ago|just now)\b"), "<age>"),
    (re.compile(r"[ -]{2,}"), " "),
)


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", README, flags=re.DOTALL)


def console_examples() -> list[tuple[str, str]]:
    """(command, expected output) for every `$ ` line of the README's console blocks."""
    examples = []
    for block in re.findall(r"```console\n(.+?)```", README, flags=re.DOTALL):
        for chunk in re.split(r"^\$ ", block, flags=re.MULTILINE)[1:]:
            command, _, output = chunk.partition("\n")
            examples.append((command, output))
    return examples


def normalised(text: str) -> str:
    lines = []
    for raw in text.splitlines():
        line = raw
        for pattern, replacement in VARYING:
            line = pattern.sub(replacement, line)
        lines.append(line.strip())
    return "\n".join(lines).strip()


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


def test_the_console_examples_print_what_the_readme_shows(tmp_path: Path) -> None:
    examples = console_examples()
    assert len(examples) >= 10
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOYMENT_")}
    env.pop("GITHUB_ACTIONS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for command, expected in examples:
        assert command.startswith("deployment-tracker "), command
        result = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {command} 2>&1"],
            cwd=tmp_path,  # a fresh default database: .github/deployments.db under it
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"$ {command}\n{result.stdout}{result.stderr}"
        assert normalised(result.stdout) == normalised(expected), f"$ {command}"
    assert (tmp_path / ".github" / "deployments.db").exists()


def test_the_readme_shows_the_example_caller_s_job_as_it_is() -> None:
    shown = re.search(r"```yaml\njobs:\n(.+?)```", README, flags=re.DOTALL)
    assert shown is not None
    caller = (REPO / ".github" / "examples" / "deploy-caller.yml").read_text(encoding="utf-8")
    job = caller[caller.index("  deploy:\n") :]

    def lines(text: str) -> list[str]:
        # The README names no release, and the file's job has a display name.
        return [line for line in text.splitlines() if not re.match(r"\s+(uses|name):", line)]

    assert lines(shown.group(1)) == lines(job)
