"""The setup action installs what it pins, whatever the repository it runs in holds (issue 17).

It runs inside the checkout of the app being deployed, where anyone who can push a branch chose
the files and a step before may have chosen the environment. Real install.sh, real pip, real
virtual environments; the wheels are the pinned ones the README's test command downloads.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from history_helpers import ROOT

import deployment_tracker as dt

INSTALL = ROOT / ".github" / "actions" / "setup" / "install.sh"
REQUIREMENTS = INSTALL.with_name("requirements.txt")
# Modules the install or a launcher would import from the working directory or PYTHONPATH.
SHADOWS = [
    "deployment_tracker.py",
    "deployment_history.py",
    "sysconfig.py",
    "compileall.py",
    "click/__init__.py",
    "tabulate.py",
    "pip/__init__.py",
    "venv/__init__.py",
]


@pytest.fixture
def wheels() -> Path:
    folder = Path(os.environ.get("DEPLOYMENT_TRACKER_WHEELS", ROOT / ".venv" / "wheels"))
    pins = re.findall(r"^([\w.-]+)==(\S+)", REQUIREMENTS.read_text(), re.MULTILINE)
    if not all(list(folder.glob(f"{name}-{version}-*.whl")) for name, version in pins):
        pytest.fail(f"the pinned wheels are not in {folder} (README: Development)")
    return folder


def hostile_app(tmp_path: Path) -> tuple[Path, Path]:
    """An app checkout whose files would each leave a mark if Python ever imported one."""
    app, marks = tmp_path / "app", tmp_path / "marks"
    marks.mkdir()
    for name in SHADOWS:
        path = app / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "import pathlib\n"
            f"pathlib.Path({str(marks)!r}, {name.replace('/', '_')!r}).write_text('ran')\n"
            "raise SystemExit(97)\n"
        )
    (app / "extra.txt").write_text("evil-package==6.6.6 --hash=sha256:" + "0" * 64 + "\n")
    return app, marks


def install(app: Path, tmp_path: Path, wheels: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "home"),
        "RUNNER_TEMP": str(tmp_path / "runner"),
        "SETUP_PYTHON": sys.executable,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        **extra,
    }
    done = subprocess.run(
        ["bash", str(INSTALL)], cwd=app, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp_path / "runner" / "deployment-tracker" / "bin", env


def test_the_repository_s_files_and_python_variables_never_reach_the_tools(
    tmp_path: Path, wheels: Path
) -> None:
    app, marks = hostile_app(tmp_path)
    hostile = {
        "PYTHONPATH": str(app),
        "PYTHONSTARTUP": str(app / "sysconfig.py"),
        "PIP_REQUIREMENT": str(app / "extra.txt"),
        "PIP_TARGET": str(app / "target"),
        "PIP_CONFIG_FILE": str(app / "pip.conf"),
    }
    (app / "pip.conf").write_text("[install]\nrequirement = extra.txt\n")
    bin_dir, env = install(app, tmp_path, wheels, **hostile)
    for tool, *args in (
        (
            "deployment-tracker",
            "--db",
            str(tmp_path / "d.db"),
            "new-id",
            "-b",
            "main",
            "-c",
            "a" * 40,
        ),
        ("deployment-history", "--help"),
        ("deployment-text", "log", "hello"),
        # Imports the tracker: the one installed, never the app's deployment_tracker.py.
        ("deployment-settings", "deploy"),
    ):
        done = subprocess.run(
            [str(bin_dir / tool), *args],
            cwd=app,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, (tool, done.stderr)
    version = subprocess.run(
        [str(bin_dir / "deployment-tracker"), "--version"],
        cwd=app,
        env=env,
        capture_output=True,
        check=False,
    )
    assert dt.__version__ in version.stdout.decode()
    assert sorted(path.name for path in marks.iterdir()) == []
    assert not (app / "target").exists()


def test_a_distribution_the_pins_do_not_name_fails_the_setup(tmp_path: Path, wheels: Path) -> None:
    """The installed set is checked: here a wheel folder that also offers an unpinned package
    can't add it (--no-deps), so the check is exercised by pinning one more than installs."""
    app, _ = hostile_app(tmp_path)
    env = {**os.environ, "RUNNER_TEMP": str(tmp_path / "runner")}
    checker = INSTALL.read_text().split("<< 'PYTHON'\n", 1)[1].split("\nPYTHON\n", 1)[0]
    pins = tmp_path / "pins.txt"
    pins.write_text(REQUIREMENTS.read_text() + "left-pad==1.0 \\\n    --hash=sha256:" + "0" * 64)
    done = subprocess.run(
        [sys.executable, "-I", "-", str(pins)],
        input=checker,
        check=False,
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stdout.startswith("::error title=deployment-tracker setup::the environment holds")


def test_the_job_s_history_calls_share_a_session_under_runner_temp(
    tmp_path: Path, wheels: Path
) -> None:
    """Issue 20: one fetch of the history per job (deployment_history.py's session)."""
    app, _ = hostile_app(tmp_path)
    github_env = tmp_path / "github_env"
    github_env.write_text("")

    install(app, tmp_path, wheels, GITHUB_ENV=str(github_env))

    session = tmp_path / "runner" / "deployment-tracker" / "session"
    assert github_env.read_text() == f"DEPLOYMENT_HISTORY_SESSION={session}\n"
