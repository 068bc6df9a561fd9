"""The run's settings, resolved in the job that can see them (issue 18).

deployment-settings (.github/scripts/deployment_settings.py), run as the workflow runs it: a real
process, its variables as the JSON of `toJSON(vars)`, its outputs in a real $GITHUB_OUTPUT file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ROOT / ".github" / "scripts" / "deployment_settings.py"
CLUSTER = {"K8S_DEPLOYMENT": "webapp", "ENVIRONMENT_URL": "https://staging.example.com"}


@dataclass
class Result:
    returncode: int
    stdout: str
    outputs: dict[str, str]


def settings(
    stage: str,
    tmp_path: Path,
    variables: dict[str, Any] | None = None,
    *,
    dockerfile: bool = True,
    **env: str,
) -> Result:
    work = tmp_path / "checkout"
    work.mkdir(exist_ok=True)
    if dockerfile:
        (work / "Dockerfile").write_text("FROM scratch\n")
    output = tmp_path / "github-output"
    output.write_text("")
    names = {"ENVIRONMENTS", "INPUT_ENVIRONMENT", "SERVICE", "ACTOR", "DEPLOY_COMMAND"}
    base = {key: value for key, value in os.environ.items() if key not in names}
    process = subprocess.run(
        [sys.executable, str(SETTINGS), stage],
        cwd=work,
        env={
            **base,
            "GITHUB_OUTPUT": str(output),
            "VARIABLES": json.dumps(variables or {}),
            "REPOSITORY": "Acme/WebApp",
            "ACTOR": "alice",
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert process.stderr == ""
    lines = output.read_text().splitlines()
    outputs = dict(line.split("=", 1) for line in lines)
    assert len(outputs) == len(lines)
    return Result(process.returncode, process.stdout, outputs)


def errors(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("::error")]


# --------------------------------------------------------------------------
# prepare: the job that names no environment
# --------------------------------------------------------------------------


def test_by_default_a_push_deploys_staging_and_production_is_gated_on_it(tmp_path: Path) -> None:
    result = settings("prepare", tmp_path, CLUSTER)

    assert result.returncode == 0, result.stdout
    assert result.outputs == {
        "environment": "staging",
        "gate_source": "",
        "gates": "staging:production",
        "history_branch": "deployment-history",
        "service": "",
        "service_prefix": "",
        "registry": "ghcr.io",
        "image_name": "acme/webapp",
        "dockerfile": "Dockerfile",
    }
    production = settings("prepare", tmp_path, CLUSTER, INPUT_ENVIRONMENT="production")
    assert production.outputs["environment"] == "production"
    assert production.outputs["gate_source"] == "staging"


def test_a_chain_of_three_gates_each_environment_on_the_one_before(tmp_path: Path) -> None:
    chain = {"ENVIRONMENTS": "qa,staging,prod-eu"}

    push = settings("prepare", tmp_path, CLUSTER, **chain)
    staging = settings("prepare", tmp_path, CLUSTER, INPUT_ENVIRONMENT="staging", **chain)
    production = settings("prepare", tmp_path, CLUSTER, INPUT_ENVIRONMENT="prod-eu", **chain)

    assert push.outputs["environment"] == "qa" and push.outputs["gate_source"] == ""
    assert push.outputs["gates"] == "qa:staging,staging:prod-eu"
    assert staging.outputs["gate_source"] == "qa"
    assert production.outputs["gate_source"] == "staging"
    alone = settings("prepare", tmp_path, CLUSTER, ENVIRONMENTS="production")
    assert alone.outputs["environment"] == "production" and alone.outputs["gates"] == "none"


def test_the_gates_variable_overrides_the_chain(tmp_path: Path) -> None:
    variables = {**CLUSTER, "DEPLOYMENT_TRACKER_GATES": "none"}

    result = settings("prepare", tmp_path, variables, INPUT_ENVIRONMENT="production")

    assert result.outputs["gates"] == "none" and result.outputs["gate_source"] == ""


@pytest.mark.parametrize(
    ("env", "variables", "message"),
    [
        (
            {"INPUT_ENVIRONMENT": "prod"},
            {},
            "unknown environment prod (one of: staging, production)",
        ),
        ({"INPUT_ENVIRONMENT": "x\n::warning::forged"}, {}, "environment must be lowercase"),
        ({"ENVIRONMENTS": "qa,QA"}, {}, "environments: environment must be lowercase"),
        ({"ENVIRONMENTS": "qa,staging,qa"}, {}, "a name is listed twice"),
        ({"ENVIRONMENTS": "qa, staging"}, {}, "names separated by commas, without spaces"),
        ({"ENVIRONMENTS": "qa,,staging"}, {}, "environments: environment must be lowercase"),
        ({"SERVICE": "Web App"}, {}, "the service must be lowercase"),
        ({}, {"DEPLOYMENT_TRACKER_GATES": "staging"}, "gates must be SOURCE:TARGET pairs"),
        ({}, {"DEPLOYMENT_HISTORY_BRANCH": "a..b"}, "DEPLOYMENT_HISTORY_BRANCH:"),
    ],
)
def test_a_bad_input_or_setting_is_one_error_and_no_output(
    tmp_path: Path, env: dict[str, str], variables: dict[str, str], message: str
) -> None:
    result = settings("prepare", tmp_path, {**CLUSTER, **variables}, **env)

    assert result.returncode == 1
    (error,) = errors(result)
    assert result.stdout.count("\n") == 1, result.stdout
    assert message in error and error.startswith("::error title=Deployment not started::")
    assert result.outputs == {}


def test_a_service_has_its_own_history_image_and_variables(tmp_path: Path) -> None:
    variables = {
        **CLUSTER,
        "api_dockerfile": "services/api/Dockerfile",
        "WEB_DOCKERFILE": "services/web/Dockerfile",
        "API_IMAGE_NAME": "",  # empty: the shared value or the default
    }

    result = settings("prepare", tmp_path, variables, SERVICE="api")

    assert result.returncode == 0, result.stdout
    assert result.outputs["history_branch"] == "deployment-history-api"
    assert result.outputs["image_name"] == "acme/webapp/api"
    shared = settings("prepare", tmp_path, {**variables, "IMAGE_NAME": "Acme/Shop"}, SERVICE="web")
    assert shared.outputs["image_name"] == "acme/shop/web"
    assert shared.outputs["dockerfile"] == "services/web/Dockerfile"
    own = settings("prepare", tmp_path, {**variables, "API_IMAGE_NAME": "acme/api"}, SERVICE="api")
    assert own.outputs["image_name"] == "acme/api"
    assert result.outputs["dockerfile"] == "services/api/Dockerfile"
    assert result.outputs["service"] == "api"


def test_settings_only_on_the_environment_still_deploy_when_there_is_a_dockerfile(
    tmp_path: Path,
) -> None:
    """Prepare sees no environment's variables: it leaves the decision to the deploy job."""
    result = settings("prepare", tmp_path, {})

    assert result.returncode == 0 and "mode" not in result.outputs
    assert result.stdout == ""


def test_nothing_to_build_and_nothing_to_deploy_to_is_a_notice(tmp_path: Path) -> None:
    result = settings("prepare", tmp_path, {}, dockerfile=False)

    assert result.returncode == 0
    assert result.outputs["mode"] == "skip"
    assert result.stdout.startswith("::notice title=Deployment not configured::nothing deployed")
    # A deploy target prepare can see: the deploy job decides the rest.
    for seen in ({"K8S_DEPLOYMENT": "webapp"}, {"ENVIRONMENT_URL": "https://x.example"}):
        assert "mode" not in settings("prepare", tmp_path, seen, dockerfile=False).outputs
    command = settings("prepare", tmp_path, {}, dockerfile=False, DEPLOY_COMMAND="./deploy.sh")
    assert "mode" not in command.outputs


def test_a_bot_s_run_is_a_notice(tmp_path: Path) -> None:
    result = settings("prepare", tmp_path, CLUSTER, ACTOR="dependabot[bot]")

    assert result.returncode == 0 and result.outputs["mode"] == "skip"
    assert "::notice title=Not deployed::" in result.stdout


# --------------------------------------------------------------------------
# deploy: the jobs that name the environment
# --------------------------------------------------------------------------


def test_the_environment_s_settings_are_passed_on_one_line_each(tmp_path: Path) -> None:
    variables = {
        **CLUSTER,
        "HEALTH_PATH": "/healthz\nconfigured=false",
        "SMOKE_RETRIES": " 3 ",
        "UNRELATED": "x",
    }

    result = settings("deploy", tmp_path, variables, ENVIRONMENT="staging")

    assert result.returncode == 0 and result.stdout == ""
    assert result.outputs["configured"] == "true"
    assert result.outputs["health_path"] == "/healthzconfigured=false"
    assert result.outputs["smoke_retries"] == "3"
    assert result.outputs["k8s_deployment"] == "webapp"
    assert "unrelated" not in result.outputs


def test_an_environment_with_nothing_set_is_a_notice_and_deploys_nothing(tmp_path: Path) -> None:
    result = settings("deploy", tmp_path, {}, ENVIRONMENT="qa")

    assert result.returncode == 0
    assert result.outputs["configured"] == "false"
    assert result.stdout.startswith(
        "::notice title=Deployment not configured::nothing deployed to qa"
    )


@pytest.mark.parametrize(
    ("variables", "env", "missing"),
    [
        ({"K8S_DEPLOYMENT": "webapp"}, {}, "missing variable ENVIRONMENT_URL"),
        ({"ENVIRONMENT_URL": "https://x.example"}, {}, "missing variable K8S_DEPLOYMENT"),
        ({"K8S_DEPLOYMENT": "web"}, {"SERVICE": "api"}, "API_ENVIRONMENT_URL (or ENVIRONMENT_URL)"),
    ],
)
def test_a_half_configured_environment_names_what_is_missing(
    tmp_path: Path, variables: dict[str, str], env: dict[str, str], missing: str
) -> None:
    result = settings("deploy", tmp_path, variables, ENVIRONMENT="staging", **env)

    assert result.returncode == 1 and result.outputs == {}
    (error,) = errors(result)
    assert error.startswith("::error title=Deployment half-configured::staging: ")
    assert missing in error


def test_a_deploy_command_needs_no_kubernetes_deployment(tmp_path: Path) -> None:
    variables = {"ENVIRONMENT_URL": "https://x.example"}

    result = settings("deploy", tmp_path, variables, ENVIRONMENT="staging", DEPLOY_COMMAND="./d.sh")

    assert result.returncode == 0 and result.outputs["configured"] == "true"


def test_a_service_s_own_variable_wins_over_the_shared_one(tmp_path: Path) -> None:
    variables = {
        **CLUSTER,
        "API_ENVIRONMENT_URL": "https://api.example.com",
        "API_K8S_DEPLOYMENT": "api",
        "K8S_NAMESPACE": "shop",
    }

    api = settings("deploy", tmp_path, variables, ENVIRONMENT="staging", SERVICE="api")
    web = settings("deploy", tmp_path, variables, ENVIRONMENT="staging", SERVICE="web")

    assert api.outputs["environment_url"] == "https://api.example.com"
    assert api.outputs["k8s_deployment"] == "api" and api.outputs["k8s_namespace"] == "shop"
    assert web.outputs["environment_url"] == CLUSTER["ENVIRONMENT_URL"]
    assert web.outputs["k8s_deployment"] == "webapp"


def test_variables_that_are_not_a_json_object_are_one_error(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.write_text("")
    for text in ("[1]", "{nope"):
        process = subprocess.run(
            [sys.executable, str(SETTINGS), "deploy"],
            env={**os.environ, "VARIABLES": text, "GITHUB_OUTPUT": str(output)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert process.returncode == 1
        assert process.stdout.startswith("::error title=Settings::VARIABLES is not")
        assert output.read_text() == ""


def test_an_unknown_stage_is_a_usage_error() -> None:
    process = subprocess.run(
        [sys.executable, str(SETTINGS), "build"], capture_output=True, text=True, check=False
    )
    assert process.returncode == 2 and "usage: deployment-settings" in process.stderr


def test_blue_green_needs_each_colour_s_url_and_no_deploy_command(tmp_path: Path) -> None:
    both = {**CLUSTER, "BLUE_URL": "https://blue.example", "GREEN_URL": "https://green.example"}
    env = {"ENVIRONMENT": "staging", "STRATEGY": "blue-green"}

    ready = settings("deploy", tmp_path, {**both, "K8S_SERVICE": "web"}, **env)
    half = settings("deploy", tmp_path, {**CLUSTER, "BLUE_URL": "https://b.example"}, **env)
    command = settings("deploy", tmp_path, both, DEPLOY_COMMAND="./helm.sh", **env)
    unknown = settings("prepare", tmp_path, CLUSTER, STRATEGY="canary")

    assert ready.returncode == 0 and ready.outputs["configured"] == "true"
    assert (ready.outputs["blue_url"], ready.outputs["k8s_service"]) == (both["BLUE_URL"], "web")
    assert half.returncode == 1 and "missing variable GREEN_URL" in errors(half)[0]
    assert command.returncode == 1 and "takes no deploy_command" in errors(command)[0]
    assert unknown.returncode == 1 and "rolling or blue-green" in errors(unknown)[0]
    rolling = settings("deploy", tmp_path, CLUSTER, ENVIRONMENT="staging")
    assert rolling.outputs["configured"] == "true"  # no colour URLs needed
