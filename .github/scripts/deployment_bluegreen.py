#!/usr/bin/env python3
"""deployment-bluegreen: blue/green on Kubernetes, for the workflow's `strategy: blue-green`.

Two Deployments, BASE-blue and BASE-green, and one Service whose selector `slot: blue|green`
says which of them serves. Making the Service serve an image:

Errors are one `::error` line each on stderr (the workflow captures plan's stdout).

  plan IMAGE    prints the slot IMAGE would serve from: the one that already runs it (a rollback
                to what the other colour still runs is a switch, nothing redeployed), else the
                idle one (blue when the Service has no slot yet).
  deploy IMAGE  rolls IMAGE out to that slot unless it runs it already, checks the slot on its own
                URL when SLOT_CHECK is set (the deploy job: nothing switches before that passes),
                then switches the Service to it. Exit 0: the Service serves IMAGE; 1: the rollout
                failed; 3: the slot's check failed; in both the Service was not switched.

Environment: K8S_DEPLOYMENT (BASE), K8S_CONTAINER (default BASE), K8S_NAMESPACE (default
`default`), K8S_SERVICE (default BASE), ROLLOUT_TIMEOUT (default 300s), KUBECONFIG_DATA (else
kubectl's own configuration), BLUE_URL and GREEN_URL (each colour's own URL), SLOT_CHECK, and for
the check smoke-check's settings (HEALTH_PATH, VERSION_PATH, EXPECTED_VERSION, SMOKE_*).

Usage: deployment_bluegreen.py plan|deploy IMAGE
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

SLOTS = ("blue", "green")
ROLLOUT_FAILED = 1
CHECK_FAILED = 3
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,300}")


class ClusterError(Exception):
    """kubectl could not tell or do what is needed: one `::error` line."""


class _Cluster:
    def __init__(self, kubeconfig: Optional[str]) -> None:
        self.base = os.environ.get("K8S_DEPLOYMENT", "")
        if not self.base:
            raise ClusterError("set the K8S_DEPLOYMENT variable (BASE of BASE-blue, BASE-green)")
        self.container = os.environ.get("K8S_CONTAINER") or self.base
        self.namespace = os.environ.get("K8S_NAMESPACE") or "default"
        self.service = os.environ.get("K8S_SERVICE") or self.base
        self.env = {**os.environ, **({"KUBECONFIG": kubeconfig} if kubeconfig else {})}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["kubectl", "--namespace", self.namespace, *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=False)

    def read(self, *args: str) -> str:
        done = self.run(*args)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1][:200]
            raise ClusterError(f"kubectl {' '.join(args[:2])} failed: {reason!r}")
        return done.stdout.strip()

    def live_slot(self) -> str:
        """The slot the Service selects now ('' before the first switch)."""
        slot = self.read("get", "service", self.service, "-o", "jsonpath={.spec.selector.slot}")
        if slot not in ("", *SLOTS):
            raise ClusterError(
                f"service/{self.service} selects slot {slot[:40]!r}, not blue or green"
            )
        return slot

    def image_of(self, slot: str) -> str:
        path = f'jsonpath={{.spec.template.spec.containers[?(@.name=="{self.container}")].image}}'
        return self.read("get", "deployment", f"{self.base}-{slot}", "-o", path)

    def choose(self, image: str) -> tuple[str, str, bool]:
        """(the slot to serve from, the live slot, whether that slot already runs `image`)."""
        live = self.live_slot()
        for slot in sorted(SLOTS, key=lambda s: s != live):
            if self.image_of(slot) == image:
                return slot, live, True
        idle = next(slot for slot in SLOTS if slot != live) if live else SLOTS[0]
        return idle, live, False


def _kubeconfig() -> Optional[str]:
    data = os.environ.get("KUBECONFIG_DATA", "")
    if not data:
        return None
    handle, path = tempfile.mkstemp(prefix="kubeconfig-")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(data + "\n")
    return path


def _check_slot(slot: str) -> bool:
    url = os.environ.get(f"{slot.upper()}_URL", "")
    if not url:
        raise ClusterError(f"set the {slot.upper()}_URL variable (the {slot} slot's own URL)")
    print(f"Checking the {slot} slot at its own URL before the Service switches")
    check = os.environ.get("SMOKE_CHECK", "smoke-check")
    done = subprocess.run([check], env={**os.environ, "ENVIRONMENT_URL": url}, check=False)
    return done.returncode == 0


def deploy(cluster: _Cluster, image: str) -> int:
    slot, live, runs_it = cluster.choose(image)
    name = f"deployment/{cluster.base}-{slot}"
    if runs_it:
        print(f"The {slot} slot already runs {image}: nothing to roll out")
    else:
        print(f"Deploying {image} to {name} (the idle slot; {live or 'no slot'} serves)")
        steps = [
            ("set", "image", name, f"{cluster.container}={image}"),
            ("rollout", "status", name, "--timeout", os.environ.get("ROLLOUT_TIMEOUT") or "300s"),
        ]
        for step in steps:
            if cluster.run(*step).returncode != 0:
                print(
                    f"::error title=Blue/green::the rollout to {name} did not finish",
                    file=sys.stderr,
                )
                return ROLLOUT_FAILED
    if slot == live:
        print(f"service/{cluster.service} already serves the {slot} slot")
        return 0
    if os.environ.get("SLOT_CHECK") and not _check_slot(slot):
        print(
            f"::error title=Blue/green::the {slot} slot failed its check: not switched",
            file=sys.stderr,
        )
        return CHECK_FAILED
    patch = f'{{"spec":{{"selector":{{"slot":"{slot}"}}}}}}'
    cluster.read("patch", "service", cluster.service, "--type", "merge", "--patch", patch)
    print(f"service/{cluster.service} switched to the {slot} slot (was {live or 'none'})")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("plan", "deploy") or not _IMAGE.fullmatch(args[1]):
        print("usage: deployment-bluegreen plan|deploy IMAGE", file=sys.stderr)
        return 2
    kubeconfig = _kubeconfig()
    try:
        cluster = _Cluster(kubeconfig)
        if args[0] == "plan":
            print(cluster.choose(args[1])[0])
            return 0
        return deploy(cluster, args[1])
    except ClusterError as error:
        print(f"::error title=Blue/green::{error}", file=sys.stderr)
        return ROLLOUT_FAILED
    finally:
        if kubeconfig:
            os.unlink(kubeconfig)


if __name__ == "__main__":
    sys.exit(main())
