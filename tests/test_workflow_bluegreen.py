"""Blue/green on Kubernetes (issue 18): deployment-bluegreen, run as the workflow runs it.

Fakes the Kubernetes cluster only: tests/workflow/bin/kubectl keeps the Deployments' images and
the Service's `slot` selector in a JSON file and tells a real HTTP server on 127.0.0.1 what each
switch serves; SMOKE_CHECK stands in for the slot's smoke check (`true` or `false`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".github" / "scripts" / "deployment_bluegreen.py"
FAKES = ROOT / "tests" / "workflow" / "bin"
OLD = "ghcr.io/acme/webapp:main_aaaaaaa_20260101100000@sha256:" + "a" * 64
NEW = "ghcr.io/acme/webapp:main_bbbbbbb_20260102100000@sha256:" + "b" * 64


@dataclass
class Cluster:
    calls: Path
    served: list[str]

    def state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.calls / "cluster.json").read_text())
        return loaded

    def set(self, blue: str, green: str, slot: str) -> None:
        state = {
            "deployments": {"webapp-blue": blue, "webapp-green": green},
            "services": {"webapp": slot},
        }
        (self.calls / "cluster.json").write_text(json.dumps(state))

    def changes(self) -> list[list[str]]:
        log = self.calls / "kubectl.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        calls = [json.loads(line)["args"][2:] for line in lines]
        return [args[:3] for args in calls if args[:1] in (["set"], ["patch"])]

    def run(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            env={
                **os.environ,
                "PATH": os.pathsep.join([str(FAKES), os.environ["PATH"]]),
                "FAKE_CALLS_DIR": str(self.calls),
                "FAKE_SERVICE_URL": self.url,
                "K8S_DEPLOYMENT": "webapp",
                "K8S_CONTAINER": "app",
                "K8S_NAMESPACE": "shop",
                "BLUE_URL": "http://blue.invalid",
                "GREEN_URL": "http://green.invalid",
                "SLOT_CHECK": "1" if check else "",
                "SMOKE_CHECK": "true",
                **env,
            },
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    url: str = ""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            served.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    made = Cluster(tmp_path, served)
    made.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield made
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("blue", "green", "slot", "image", "chosen"),
    [
        ("", "", "", NEW, "blue"),  # nothing serves yet
        (OLD, "", "blue", NEW, "green"),  # the idle one
        (OLD, NEW, "blue", NEW, "green"),  # already runs it: a switch, nothing redeployed
        (OLD, NEW, "green", OLD, "blue"),  # a rollback to what blue still runs
        (OLD, NEW, "green", NEW, "green"),  # it serves already
    ],
)
def test_the_slot_is_the_one_running_the_image_else_the_idle_one(
    cluster: Cluster, blue: str, green: str, slot: str, image: str, chosen: str
) -> None:
    cluster.set(blue, green, slot)

    result = cluster.run("plan", image)

    assert (result.returncode, result.stdout) == (0, f"{chosen}\n"), result.stderr
    assert cluster.changes() == []


def test_a_deploy_rolls_out_the_idle_slot_checks_it_then_switches(cluster: Cluster) -> None:
    cluster.set(OLD, "", "blue")

    result = cluster.run("deploy", NEW)

    assert result.returncode == 0, result.stdout
    assert cluster.changes() == [
        ["set", "image", "deployment/webapp-green"],
        ["patch", "service", "webapp"],
    ]
    assert cluster.state() == {
        "deployments": {"webapp-blue": OLD, "webapp-green": NEW},
        "services": {"webapp": "green"},
    }
    assert "switched to the green slot (was blue)" in result.stdout


def test_a_rollback_to_what_the_other_colour_runs_only_switches(cluster: Cluster) -> None:
    cluster.set(OLD, NEW, "green")

    result = cluster.run("deploy", OLD, check=False)

    assert result.returncode == 0, result.stdout
    assert cluster.changes() == [["patch", "service", "webapp"]]
    assert cluster.state()["services"] == {"webapp": "blue"}
    assert cluster.served == ["main_aaaaaaa_20260101100000"]  # live traffic is back on OLD


def test_a_slot_failing_its_check_is_not_switched_to(cluster: Cluster) -> None:
    cluster.set(OLD, "", "blue")

    result = cluster.run("deploy", NEW, SMOKE_CHECK="false")

    assert result.returncode == 3
    assert "the green slot failed its check: not switched" in result.stderr
    assert cluster.changes() == [["set", "image", "deployment/webapp-green"]]
    assert cluster.state()["services"] == {"webapp": "blue"}


def test_a_failed_rollout_is_not_switched_to(cluster: Cluster) -> None:
    cluster.set(OLD, "", "blue")

    result = cluster.run("deploy", NEW, FAKE_ROLLOUT_FAIL="1")

    assert result.returncode == 1
    assert "the rollout to deployment/webapp-green did not finish" in result.stderr
    assert cluster.state()["services"] == {"webapp": "blue"}


def test_a_hostile_selector_or_a_missing_deployment_is_one_error(cluster: Cluster) -> None:
    cluster.set(OLD, "", "red\n::warning::forged")

    hostile = cluster.run("plan", NEW)

    assert hostile.returncode == 1
    assert hostile.stdout == "" and hostile.stderr.count("\n") == 1
    assert hostile.stderr.startswith("::error title=Blue/green::service/webapp selects slot ")
    state = cluster.state()
    del state["deployments"]["webapp-green"]
    state["services"]["webapp"] = "blue"
    (cluster.calls / "cluster.json").write_text(json.dumps(state))

    missing = cluster.run("deploy", NEW)

    assert missing.returncode == 1 and "kubectl get deployment failed" in missing.stderr
    assert "not found" in missing.stderr
    assert cluster.changes() == []


def test_a_slot_without_its_url_is_an_error_before_any_switch(cluster: Cluster) -> None:
    cluster.set(OLD, "", "blue")

    result = cluster.run("deploy", NEW, GREEN_URL="")

    assert result.returncode == 1 and "set the GREEN_URL variable" in result.stderr
    assert cluster.state()["services"] == {"webapp": "blue"}


@pytest.mark.parametrize("args", [[], ["plan"], ["switch", NEW], ["plan", "bad image\n"]])
def test_a_bad_command_line_is_a_usage_error(cluster: Cluster, args: list[str]) -> None:
    result = cluster.run(*args)

    assert result.returncode == 2 and "usage: deployment-bluegreen" in result.stderr
