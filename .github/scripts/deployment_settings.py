#!/usr/bin/env python3
"""deployment-settings: a run's settings, resolved in the job that can see them.

GitHub hands a job the variables of the repository and its organisation, and those of an
environment only to a job that names it. So the decisions are split by what each job sees:

  prepare   (names no environment) the run's environment from the `environments` list (a push
            deploys the first), the promotion gates (DEPLOYMENT_TRACKER_GATES, else the chain of
            that list), the history branch and the image; a notice and mode=skip for a bot's
            run, or when there is nothing to build and nothing prepare can see to deploy to.
  deploy    (names the environment) the environment's deploy and check settings; a notice and
            configured=false when the environment has none, an error naming what is missing
            when it has some.

A `service` namespaces everything: each setting is first looked up as SERVICE_NAME (service
`api`: API_K8S_DEPLOYMENT, then K8S_DEPLOYMENT), the history branch gets the service's suffix
and the image its own name. Values come from the environment: VARIABLES (the job's `vars`, as
JSON), SERVICE, ENVIRONMENTS, INPUT_ENVIRONMENT, ACTOR, REPOSITORY, DEPLOY_COMMAND. Outputs go
to $GITHUB_OUTPUT, one line each; exit 1 after an `::error` annotation, else 0.

Usage: deployment_settings.py prepare|deploy
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

import deployment_tracker as tracker

DEFAULT_ENVIRONMENTS = "staging,production"
DEFAULT_HISTORY_BRANCH = "deployment-history"
BOTS = frozenset({"dependabot[bot]"})
_SERVICE = re.compile(r"[a-z][a-z0-9-]{0,39}")
# Read where they are needed, in the jobs that name the environment: any level works. (The
# others, read by jobs naming none, live on the repository or organisation: README, Settings.)
ENVIRONMENT_SETTINGS = (
    "ENVIRONMENT_URL",
    "HEALTH_PATH",
    "VERSION_PATH",
    "SMOKE_RETRIES",
    "SMOKE_RETRY_DELAY",
    "SMOKE_TIMEOUT",
    "K8S_DEPLOYMENT",
    "K8S_CONTAINER",
    "K8S_NAMESPACE",
    "ROLLOUT_TIMEOUT",
    # strategy blue-green: the Service that switches (default K8S_DEPLOYMENT), each slot's URL.
    "K8S_SERVICE",
    "BLUE_URL",
    "GREEN_URL",
)
STRATEGIES = ("rolling", "blue-green")
DEFAULT_REGISTRY = "ghcr.io"
DEFAULT_DOCKERFILE = "Dockerfile"


class SettingsError(Exception):
    """A setting or input the run cannot go on with: one `::error` line."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(message)
        self.title = title


class _Settings:
    """The variables one job sees, looked up for a service first."""

    def __init__(self, variables: dict[str, str], service: str) -> None:
        self.variables = {name.upper(): value for name, value in variables.items()}
        self.prefix = service.upper().replace("-", "_") + "_" if service else ""

    def name_of(self, name: str) -> str:
        """The variable that sets `name` (for a service, its own first)."""
        if self.prefix and self.variables.get(self.prefix + name):
            return self.prefix + name
        return name

    def describe(self, name: str) -> str:
        """How a user sets `name`, for a message."""
        return f"variable {self.prefix}{name} (or {name})" if self.prefix else f"variable {name}"

    def get(self, name: str, default: str = "") -> str:
        value = self.variables.get(self.name_of(name), "")
        return re.sub(r"[\r\n]", "", value).strip() or default


def _variables() -> dict[str, str]:
    try:
        variables = json.loads(os.environ.get("VARIABLES") or "{}")
    except ValueError:
        raise SettingsError("Settings", "VARIABLES is not JSON") from None
    if not isinstance(variables, dict):
        raise SettingsError("Settings", "VARIABLES is not a JSON object")
    return {str(name): str(value) for name, value in variables.items()}


def _service() -> str:
    service = os.environ.get("SERVICE", "").strip()
    if service and not _SERVICE.fullmatch(service):
        raise SettingsError(
            "Deployment not started",
            "the service must be lowercase letters, digits or '-', starting with a letter,"
            " at most 40 characters",
        )
    return service


def _strategy() -> str:
    strategy = os.environ.get("STRATEGY", "").strip() or STRATEGIES[0]
    if strategy not in STRATEGIES:
        raise SettingsError("Deployment not started", "the strategy must be rolling or blue-green")
    return strategy


def environments(text: str) -> list[str]:
    """The `environments` input: names in promotion order, separated by commas."""
    text = text.strip() or DEFAULT_ENVIRONMENTS
    if re.search(r"\s", text):
        # The concurrency group compares the first name as written.
        raise SettingsError(
            "Deployment not started", "environments: names separated by commas, without spaces"
        )
    names = text.split(",")
    try:
        for name in names:
            tracker.check_environment(name)
    except tracker.InvalidInput as error:
        raise SettingsError("Deployment not started", f"environments: {error}") from None
    if len(set(names)) != len(names):
        raise SettingsError("Deployment not started", "environments: a name is listed twice")
    return names


def gates(text: str, chain: list[str]) -> tuple[str, dict[str, str]]:
    """DEPLOYMENT_TRACKER_GATES when set, else each environment gated on the one before it:
    the text the tracker is given, and {target: source}."""
    text = text.strip() or ",".join(f"{a}:{b}" for a, b in zip(chain, chain[1:])) or "none"
    try:
        return text, tracker.parse_gates(text)
    except tracker.InvalidInput as error:
        raise SettingsError("Deployment not started", str(error)) from None


def _image_name(settings: _Settings, repository: str, service: str) -> str:
    """IMAGE_NAME (default: the repository); a service's own SERVICE_IMAGE_NAME, else
    IMAGE_NAME/SERVICE, so that two services never share an image."""
    if settings.name_of("IMAGE_NAME") != "IMAGE_NAME":
        return settings.get("IMAGE_NAME")
    shared = settings.get("IMAGE_NAME", repository)
    return f"{shared}/{service}" if service else shared


def prepare(out: dict[str, str], notices: list[str]) -> None:
    service = _service()
    _strategy()
    settings = _Settings(_variables(), service)
    chain = environments(os.environ.get("ENVIRONMENTS", ""))
    environment = os.environ.get("INPUT_ENVIRONMENT", "").strip() or chain[0]
    if environment not in chain:
        try:
            tracker.check_environment(environment)
        except tracker.InvalidInput as error:
            raise SettingsError("Deployment not started", str(error)) from None
        raise SettingsError(
            "Deployment not started",
            f"unknown environment {environment} (one of: {', '.join(chain)})",
        )
    gate_text, gate_sources = gates(settings.get("DEPLOYMENT_TRACKER_GATES"), chain)
    suffix = f"-{service}" if service else ""
    branch = settings.get("DEPLOYMENT_HISTORY_BRANCH", DEFAULT_HISTORY_BRANCH + suffix)
    try:
        tracker.check_branch(branch)
    except tracker.InvalidInput as error:
        raise SettingsError(
            "Deployment not started", f"DEPLOYMENT_HISTORY_BRANCH: {error}"
        ) from None
    repository = os.environ.get("REPOSITORY", "")
    out.update(
        environment=environment,
        gate_source=gate_sources.get(environment, ""),
        gates=gate_text,
        history_branch=branch,
        service=service,
        service_prefix=f"{service}-" if service else "",
        registry=settings.get("REGISTRY", DEFAULT_REGISTRY).lower(),
        image_name=_image_name(settings, repository, service).lower(),
        dockerfile=settings.get("DOCKERFILE", DEFAULT_DOCKERFILE),
    )
    if os.environ.get("ACTOR", "") in BOTS:
        out["mode"] = "skip"
        notices.append(
            "Not deployed::runs started by dependabot[bot] get no secrets and a read-only"
            " token: merge the branch, or push it yourself, to deploy it"
        )
        return
    # An environment's own settings are invisible here: with none in sight, a Dockerfile says
    # the repository builds something, and the deploy job (which sees them) decides.
    seen = os.environ.get("DEPLOY_COMMAND") or any(
        settings.get(name) for name in ("K8S_DEPLOYMENT", "ENVIRONMENT_URL")
    )
    if not seen and not Path(out["dockerfile"]).is_file():
        out["mode"] = "skip"
        notices.append(
            "Deployment not configured::nothing deployed: set the variables K8S_DEPLOYMENT"
            " and ENVIRONMENT_URL, and the secret KUBECONFIG on each environment, to deploy"
            " (README: Using the workflow)"
        )


def deploy(out: dict[str, str], notices: list[str]) -> None:
    service = _service()
    settings = _Settings(_variables(), service)
    for name in ENVIRONMENT_SETTINGS:
        out[name.lower()] = settings.get(name)
    target = os.environ.get("DEPLOY_COMMAND") or out["k8s_deployment"]
    missing = [
        settings.describe(name)
        for name, value in (("K8S_DEPLOYMENT", target), ("ENVIRONMENT_URL", out["environment_url"]))
        if not value
    ]
    environment = os.environ.get("ENVIRONMENT", "")
    if len(missing) == 2:
        out["configured"] = "false"
        notices.append(
            f"Deployment not configured::nothing deployed to {environment}: set the variables"
            f" {settings.prefix}K8S_DEPLOYMENT and {settings.prefix}ENVIRONMENT_URL,"
            " and the secret KUBECONFIG, on the environment or the repository (README: Settings)"
        )
        return
    if _strategy() == "blue-green":
        if os.environ.get("DEPLOY_COMMAND"):
            raise SettingsError(
                "Deployment not started",
                "strategy blue-green deploys with kubectl: it takes no deploy_command",
            )
        missing += [
            settings.describe(name) for name in ("BLUE_URL", "GREEN_URL") if not out[name.lower()]
        ]
    if missing:
        raise SettingsError(
            "Deployment half-configured",
            f"{environment}: missing {', '.join(missing)} (set each on the environment or the"
            " repository, in Settings > Secrets and variables > Actions)",
        )
    out["configured"] = "true"


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stages = {"prepare": prepare, "deploy": deploy}
    if len(args) != 1 or args[0] not in stages:
        print("usage: deployment-settings prepare|deploy", file=sys.stderr)
        return 2
    out: dict[str, str] = {}
    notices: list[str] = []
    try:
        stages[args[0]](out, notices)
    except SettingsError as error:
        print(f"::error title={error.title}::{error}")
        return 1
    for notice in notices:
        print(f"::notice title={notice}")
    lines = "".join(f"{name}={value}\n" for name, value in out.items())
    target = os.environ.get("GITHUB_OUTPUT")
    if target:
        with open(target, "a", encoding="utf-8") as file:
            file.write(lines)
    else:
        sys.stdout.write(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
