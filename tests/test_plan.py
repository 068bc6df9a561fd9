"""Issue 16: `plan` decides what a workflow run does from the history and the run's inputs,
before anything changes, so the workflow's prepare job only plumbs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from helpers import History, ok, parse_github_output, sha

import deployment_tracker as dt

REPOSITORY = "ghcr.io/acme/app"
COMMIT = sha("e")


def plan(cli: Callable[..., Result], *args: str, tmp_path: Path, **env: str) -> dict[str, str]:
    output = tmp_path / "github_output"
    output.write_text("")
    result = cli(
        "plan",
        "--branch",
        "feature/x",
        "--commit",
        COMMIT,
        "--repository",
        REPOSITORY,
        "--github-output",
        *args,
        env={"GITHUB_OUTPUT": str(output), **env},
    )
    assert result.exit_code == 0, result.output
    values = parse_github_output(output.read_text())
    assert result.stdout == values["mode"] + "\n"
    return values


def test_a_push_builds_and_deploys_its_commit(cli: Callable[..., Result], tmp_path: Path) -> None:
    values = plan(cli, tmp_path=tmp_path)
    assert values["mode"] == "deploy" and values["case"] == "push"
    assert values["environment"] == "staging"
    branch, short_sha, _ = dt.parse_id(values["id"])
    assert (branch, short_sha) == ("feature-x", COMMIT[:7])
    assert values["image_tag"] == values["id"]
    assert values["image"] == f"{REPOSITORY}:{values['id']}"
    assert values["source_id"] == "" and values["image_digest"] == ""
    assert not (tmp_path / "deployments.db").exists()  # no history yet: an empty one, unwritten


def test_production_gets_the_image_verified_in_staging_for_the_commit(
    cli: Callable[..., Result], history: History, tmp_path: Path
) -> None:
    digest = "sha256:" + "ab" * 32
    staged = ok(
        cli(
            "record",
            "-e",
            "staging",
            "-b",
            "feature/x",
            "-c",
            COMMIT,
            "--image-digest",
            digest,
            "--actor",
            "alice",
        )
    )
    ok(cli("verify", staged, "--status", "verified", "--by", "smoke-check"))
    values = plan(cli, "-e", "production", tmp_path=tmp_path)
    assert values["mode"] == "promote" and values["case"] == "commit"
    assert values["source_id"] == staged and values["image_tag"] == staged
    assert values["image_digest"] == digest
    assert (values["source_actor"], values["source_verified_by"]) == ("alice", "smoke-check")
    assert dt.parse_id(values["id"])[1] == COMMIT[:7]


def test_production_without_a_verified_commit_is_refused_by_the_gate_or_built_without_it(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    result = cli("plan", "-e", "production", "-b", "main", "-c", COMMIT, "--repository", REPOSITORY)
    assert result.exit_code == 1
    assert "and the staging:production gate requires one" in result.stderr
    assert result.stdout == ""
    values = plan(cli, "-e", "production", tmp_path=tmp_path, DEPLOYMENT_TRACKER_GATES="none")
    assert values["mode"] == "deploy" and values["case"] == "ungated"


def test_a_chosen_deployment_is_promoted_or_restored(
    cli: Callable[..., Result], history: History, tmp_path: Path
) -> None:
    staged = history.record("staging", branch="feature/cart", verified=True)
    values = plan(cli, "-e", "production", "--id", staged, tmp_path=tmp_path)
    assert (values["mode"], values["case"], values["source_id"]) == ("promote", "chosen", staged)
    assert values["branch"] == "feature/cart"
    history.record("staging", verified=True)
    values = plan(cli, "--rollback", tmp_path=tmp_path)
    assert (values["mode"], values["source_id"]) == ("rollback", staged)
    values = plan(cli, "--rollback", "--id", staged, tmp_path=tmp_path)
    assert values["source_id"] == staged and values["image_tag"] == staged


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--id", "main_0000001_20260101000000"), 2, "a deployment id is for a rollback"),
        (("--rollback",), 1, "no deployments in staging"),
        (("-e", "production", "--id", "main"), 2, "deployment id must look like"),
        (("--repository", "GHCR.io/Acme"), 2, "image repository must be REGISTRY/NAME"),
    ],
)
def test_what_a_plan_refuses(
    cli: Callable[..., Result], args: tuple[str, ...], code: int, message: str
) -> None:
    base = ["plan", "-b", "main", "-c", COMMIT]
    if "--repository" not in args:
        base += ["--repository", REPOSITORY]
    result = cli(*base, *args)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_plan_reads_and_never_writes(
    cli: Callable[..., Result], history: History, db_path: Path, tmp_path: Path
) -> None:
    history.record("staging", verified=True)
    before = db_path.read_bytes()
    plan(cli, tmp_path=tmp_path)
    plan(cli, "-e", "production", tmp_path=tmp_path, DEPLOYMENT_TRACKER_GATES="none")
    assert db_path.read_bytes() == before
    assert json.loads(ok(cli("list", "-o", "json")))[0]["environment"] == "staging"
