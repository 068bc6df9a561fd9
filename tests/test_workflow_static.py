"""Static checks of the GitHub workflows: linters, schema, security rules, and the CLI contract."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from ruamel.yaml import YAML

import deployment_tracker as dt

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DEPLOY = ROOT / ".github" / "workflows" / "deploy.yml"
# The caller an application copies (README: "Using the workflow from your repository").
CALLER = ROOT / ".github" / "examples" / "deploy-caller.yml"
SETUP_ACTION = ROOT / ".github" / "actions" / "setup" / "action.yml"
SCRIPTS = sorted(
    [
        *(ROOT / ".github" / "scripts").glob("*.sh"),
        *(ROOT / ".github" / "actions").glob("*/*.sh"),
    ]
)
NOTIFY_SCRIPT = ROOT / ".github" / "scripts" / "deployment_notify.py"
BIN = str(Path(sys.executable).parent)
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$")
# `$/PATH`: this workflow's own repository at the running commit (pinned by construction).
SELF = re.compile(r"^\$/\.github/actions/[\w-]+$")


def tool(name: str) -> str:
    found = shutil.which(name, path=BIN) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def tool_env() -> dict[str, str]:
    # actionlint runs shellcheck on `run:` blocks when it finds it on PATH.
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def load(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def steps(workflow: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def test_there_are_workflows_to_check() -> None:
    names = {path.name for path in WORKFLOWS}
    assert {"deploy.yml", "tests.yml"} <= names
    assert load(DEPLOY)["name"] == "Deploy with Flexible Rollback"
    assert SETUP_ACTION.exists() and CALLER.exists()


def test_actionlint_with_shellcheck_is_clean() -> None:
    assert shutil.which("shellcheck", path=tool_env()["PATH"]), "shellcheck is needed"
    result = subprocess.run(
        [tool("actionlint"), "-no-color", *map(str, WORKFLOWS), str(CALLER)],
        cwd=ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_really_runs_shellcheck(tmp_path: Path) -> None:
    """A clean result means something only if shellcheck was consulted."""
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo $UNQUOTED_VARIABLE\n"
    )
    result = subprocess.run(
        [tool("actionlint"), "-no-color", str(bad)],
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "SC2086" in result.stdout


@pytest.mark.parametrize(
    "workflow",
    [*WORKFLOWS, CALLER, SETUP_ACTION],
    ids=lambda path: path.parent.name + "/" + path.name,
)
def test_zizmor_offline_has_no_findings(workflow: Path) -> None:
    result = subprocess.run(
        [tool("zizmor"), "--offline", "--persona", "pedantic", "--no-progress", str(workflow)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings" in result.stdout


def test_workflows_match_the_github_workflow_schema() -> None:
    result = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
            str(CALLER),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_pass_shellcheck() -> None:
    assert SCRIPTS
    result = subprocess.run(
        [tool("shellcheck"), *map(str, SCRIPTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script.name} must be executable"


@pytest.mark.parametrize("workflow", [*WORKFLOWS, CALLER], ids=lambda path: path.name)
def test_security_rules(workflow: Path) -> None:
    data = load(workflow)
    assert data["permissions"] == {}, "top-level permissions must be {}"
    for job_id, job in data["jobs"].items():
        assert "permissions" in job, f"job {job_id} must declare its permissions"
    for line in workflow.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("uses:", "- uses:")):
            reference = line.split("uses:", 1)[1].strip()
            assert PINNED.match(reference) or SELF.match(reference), (
                f"not pinned by SHA with a version: {reference}"
            )
    for job_id, step in steps(data):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False, job_id
        # Nothing is expanded into a script: values come in through env:.
        assert "${{" not in step.get("run", ""), f"{job_id}: {step.get('name')}"


def test_the_setup_action_is_pinned_and_installs_by_hash_only() -> None:
    action = load(SETUP_ACTION)
    assert action["runs"]["using"] == "composite"
    for step in action["runs"]["steps"]:
        assert "${{" not in step.get("run", ""), step.get("name")
    text = SETUP_ACTION.read_text(encoding="utf-8")
    for line in text.splitlines():
        if "uses:" in line:
            assert PINNED.match(line.split("uses:", 1)[1].strip()), line
    install = (SETUP_ACTION.parent / "install.sh").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps --only-binary :all:" in install
    pins = [
        line
        for line in (SETUP_ACTION.parent / "requirements.txt").read_text().splitlines()
        if line and not line.startswith(("#", " "))
    ]
    assert pins and all(re.fullmatch(r"[\w.-]+==[\w.]+ \\", line) for line in pins), pins
    # Every pin has its hash line.
    hashes = re.findall(
        r"--hash=sha256:[0-9a-f]{64}", (SETUP_ACTION.parent / "requirements.txt").read_text()
    )
    assert len(hashes) == len(pins)


def test_every_tracker_job_installs_the_tracker_from_this_workflows_commit() -> None:
    """The jobs never install or run the deployed repository's files: the tracker and its
    scripts come from the setup action (`$/`: this workflow's repository at its commit)."""
    text = DEPLOY.read_text(encoding="utf-8")
    assert "pip install" not in text and ".github/scripts/" not in text
    for job_id, job in load(DEPLOY)["jobs"].items():
        runs = " ".join(step.get("run", "") for step in job["steps"])
        uses = [step.get("uses", "") for step in job["steps"]]
        if re.search(
            r"deployment-(tracker|history|notify|text)|kubernetes-deploy|smoke-check", runs
        ):
            assert "$/.github/actions/setup" in uses, job_id
        else:
            assert "$/.github/actions/setup" not in uses, job_id


def test_deploy_triggers_concurrency_and_rollback_condition() -> None:
    data = load(DEPLOY)
    inputs = data["on"]["workflow_dispatch"]["inputs"]
    assert inputs["environment"]["options"] == ["staging", "production"]
    assert inputs["rollback"]["type"] == "boolean"
    assert inputs["rollback"]["description"] == "Perform rollback to a previous deployment"
    assert inputs["deployment_id"]["required"] is False
    assert "**" in data["on"]["push"]["branches"]
    # One run per service and environment; none is dropped while it waits (a manual rollback
    # behind a push), none is cancelled while it runs.
    assert data["concurrency"]["cancel-in-progress"] is False
    assert data["concurrency"]["queue"] == "max"
    group = data["concurrency"]["group"]
    assert "inputs.environment" in group and "inputs.service" in group
    jobs = data["jobs"]
    assert list(jobs) == ["prepare", "build", "deploy", "verify", "rollback"]
    # Only once this run's rollout started, and only for a failed rollout or smoke check.
    condition = " ".join(jobs["rollback"]["if"].split())
    assert condition == (
        "${{ !cancelled() && needs.deploy.outputs.rollout_started == 'true'"
        " && (needs.deploy.result == 'failure' || needs.verify.outputs.check == 'failed') }}"
    )
    # The history is pushed only by the jobs that write it, and only they may write contents.
    for job_id, job in jobs.items():
        writes = any(
            re.search(
                r"deployment-history -- (record|verify)", " ".join(step.get("run", "").split())
            )
            for step in job["steps"]
        )
        assert (job["permissions"].get("contents") == "write") == writes, job_id
    for job_id, step in steps(data):
        if "deployment-history" in step.get("run", ""):
            assert step["env"]["DEPLOYMENT_HISTORY_TOKEN"] == "${{ github.token }}", job_id
    assert "github.head_ref || github.ref_name" in DEPLOY.read_text(encoding="utf-8")
    # Callable from other repositories with the same inputs, and the secrets it uses.
    call = data["on"]["workflow_call"]
    # A caller also says how its team deploys.
    team = {"runner", "deploy_command", "verify_command", "bake_seconds", "strategy"}
    team |= {"environments", "service"}
    assert set(call["inputs"]) == set(inputs) | team
    assert call["inputs"]["rollback"]["type"] == "boolean"
    assert {"KUBECONFIG", "DEPLOYMENT_TRACKER_WEBHOOK_URL"} <= set(call["secrets"])
    assert not any(secret["required"] for secret in call["secrets"].values())
    used = set(re.findall(r"secrets\.([A-Z_]+)", DEPLOY.read_text(encoding="utf-8")))
    assert used <= set(call["secrets"]), used - set(call["secrets"])


def test_the_example_caller_passes_every_input_and_secret() -> None:
    caller = load(CALLER)
    (job,) = caller["jobs"].values()
    called = load(DEPLOY)["on"]["workflow_call"]
    assert job["uses"].startswith("acme/deployment-tracker/.github/workflows/deploy.yml@")
    assert set(job["with"]) == set(called["inputs"])
    assert set(job["secrets"]) == set(called["secrets"])
    # The calling job grants what the called jobs ask for, no more.
    asked: dict[str, str] = {}
    for called_job in load(DEPLOY)["jobs"].values():
        for scope, level in called_job["permissions"].items():
            if asked.get(scope) != "write":
                asked[scope] = level
    assert job["permissions"] == asked


# --------------------------------------------------------------------------
# Contract: every tracker command line in a workflow parses against the real CLI.
# --------------------------------------------------------------------------

PLACEHOLDERS = {
    "--environment": "staging",
    "--branch": "feature/login",
    "--commit": "0123456789abcdef0123456789abcdef01234567",
    "--id": "main_0123456_20260101000000",
    "--rollback-of": "main_0123456_20260101000000",
    "--promoted-from": "main_0123456_20260101000000",
    "--status": "failed",  # valid for both record and verify
    "--actor": "octocat",
    "--by": "octocat",
    "--run-id": "123",
    "--run-url": "https://github.com/acme/app/actions/runs/123",
    "--note": "a note",
    "--message": "a message",
    "--committed-at": "2026-01-01T10:00:00+00:00",
    "--image-digest": "sha256:" + "0" * 64,
    "--from": "staging",
    "--stage": "rollback",
    "--repository": "ghcr.io/acme/app",
    "--to": "production",
    "--db": "/tmp/deployments.db",
    "--record": "/tmp/record.json",
}
# deployment-tracker ARGS, deployment-history [OPTIONS] -- ARGS, deployment-notify ARGS
TOOL_CALL = re.compile(r"(?<![\w-])(deployment-(?:tracker|history|notify))\s[^\n]*")
STOP_WORDS = {">", ">>", "2>", "|", ";", "&&", "||"}


def tracker_calls(script: str) -> list[list[str]]:
    """The tool command lines of a shell script, shell variables replaced by sample values:
    [TOOL, ARGS...], where a history call's ARGS are the tracker command it runs."""
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n\s*", " ", code)
    calls = []
    for match in TOOL_CALL.finditer(joined):
        words = shlex.split(match.group(0), comments=True, posix=True)
        if joined[: match.start()].endswith("$("):  # a command substitution ends at its ')'
            words = [word.removesuffix(")") for word in words]
        end = next((i for i, word in enumerate(words) if word in STOP_WORDS), len(words))
        tool_name, words = words[0], words[1:end]
        if tool_name == "deployment-history":
            assert "--" in words, f"a history call needs `--`: {match.group(0)}"
            words = words[words.index("--") + 1 :]
        # Optional arguments built up in an array ("${chosen[@]}") are not sampled.
        words = [word for word in words if not re.fullmatch(r"\$\{\w+\[@\]\}", word)]
        for index, word in enumerate(words):
            if "$" in word:
                option = words[index - 1] if index else ""
                assert option in PLACEHOLDERS, f"no sample value for {option} {word}"
                words[index] = PLACEHOLDERS[option]
        calls.append([tool_name, *words])
    return calls


def parse_tracker(args: list[str]) -> str:
    """Parse like the CLI does (options, choices, required ones); return the command name."""
    root = dt.cli.make_context("deployment-tracker", list(args))
    # click 8.2 renamed protected_args (8.1) to _protected_args.
    protected = getattr(root, "_protected_args", None)
    if protected is None:
        protected = root.protected_args
    name, command, rest = dt.cli.resolve_command(root, [*protected, *root.args])
    assert command is not None and name is not None
    command.make_context(name, rest, parent=root)
    return name


def parse_notify(args: list[str]) -> str:
    spec = importlib.util.spec_from_file_location("deployment_notify", NOTIFY_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module._parser().parse_args(args)
    except SystemExit as error:
        raise click.UsageError(f"deployment-notify {shlex.join(args)}") from error
    return "notify"


def parse(call: list[str]) -> tuple[str, str]:
    tool_name, args = call[0], call[1:]
    if tool_name == "deployment-notify":
        return tool_name, parse_notify(args)
    return tool_name, parse_tracker(args)


def all_calls() -> list[tuple[str, list[str]]]:
    found = []
    for workflow in WORKFLOWS:
        for job_id, step in steps(load(workflow)):
            for call in tracker_calls(step.get("run", "")):
                found.append((f"{workflow.name}:{job_id}:{step.get('name')}", call))
    return found


def test_the_deploy_workflow_uses_every_operation_it_needs() -> None:
    paths = {parse(call) for _, call in all_calls()}
    assert ("deployment-tracker", "new-id") in paths
    for inner in ("plan", "record", "settle", "verify", "get", "timeline"):
        assert ("deployment-history", inner) in paths, inner
    assert ("deployment-notify", "notify") in paths
    assert "with-history" not in DEPLOY.read_text(encoding="utf-8")


CALLS = all_calls()


@pytest.mark.parametrize(
    ("where", "call"), CALLS, ids=[f"{where}:{n}" for n, (where, _) in enumerate(CALLS)]
)
def test_every_tool_call_parses_against_its_cli(where: str, call: list[str]) -> None:
    try:
        parse(call)
    except click.ClickException as error:
        pytest.fail(f"{where}: {shlex.join(call)}: {error.format_message()}")


@pytest.mark.parametrize(
    "script",
    [
        'deployment-tracker record --environment "$E" --bogus x',
        'deployment-history -- verify --id "$ID"',
        'deployment-history --remote origin -- verify --id "$ID" --status maybe',
        "deployment-tracker new-id --branch main",
        'deployment-notify --event exploded --record "$FILE"',
        'deployment-notify --record "$FILE"',
    ],
)
def test_the_contract_check_catches_drift(script: str) -> None:
    text = script.replace('"$E"', "staging").replace('"$ID"', "main_0123456_20260101000000")
    (call,) = tracker_calls(text.replace('"$FILE"', "/tmp/record.json"))
    with pytest.raises(click.ClickException):
        parse(call)


def test_the_cluster_credential_is_read_only_in_jobs_that_name_their_environment() -> None:
    """Issue 17: a job without `environment:` runs for any branch, unreviewed; it must not see
    the credential (an environment's secret reaches only jobs that name the environment)."""
    for job_id, job in load(DEPLOY)["jobs"].items():
        text = json.dumps(job)
        if "secrets.KUBECONFIG" in text:
            assert "environment" in job, job_id
    assert "secrets.KUBECONFIG" not in json.dumps(load(DEPLOY)["jobs"]["prepare"])


def test_settings_are_read_only_by_the_script_that_knows_their_level() -> None:
    """Issue 18: a job sees an environment's variables only if it names the environment. Every
    job reads `vars` through deployment-settings alone (as JSON: a setting may be per service),
    and only the jobs naming an environment run its `deploy` stage."""
    text = DEPLOY.read_text(encoding="utf-8")
    assert re.findall(r"vars\.\w+|vars\[", text) == []
    for job_id, job in load(DEPLOY)["jobs"].items():
        for step in job["steps"]:
            if "toJSON(vars)" in json.dumps(step):
                assert step["env"]["VARIABLES"] == "${{ toJSON(vars) }}", job_id
                stage = step["run"].split()
                assert stage[:1] == ["deployment-settings"], job_id
                assert (stage[1] == "deploy") == ("environment" in job), job_id
