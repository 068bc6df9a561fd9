"""The promotion gate and `promote`: production only receives images verified in staging."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from control_helpers import History, ok, row_count

import deployment_tracker as dt

GATE_MESSAGE = "production only receives images verified in staging"


@pytest.fixture
def history(cli: Callable[..., Result]) -> History:
    return History(cli)


def refused_by_gate(result: Result) -> None:
    assert result.exit_code == 1, result.output
    assert GATE_MESSAGE in result.stderr
    assert "--override-gate" in result.stderr
    assert result.stderr.count("\n") == 1


def test_production_refuses_an_image_never_verified_in_staging(
    cli: Callable[..., Result], history: History, db_path: Path
) -> None:
    history.record("staging", verified=True)
    before = row_count(db_path)
    _, sha = history.next_id()
    # A fresh build (its own image) and the image of an unverified, failed or
    # blocked staging deployment are all refused.
    refused_by_gate(cli("record", "-e", "production", "-b", "main", "-c", sha))
    deployed = history.record("staging")
    failed = history.record("staging")
    history.verify(failed, "failed")
    blocked = history.record("staging", verified=True)
    ok(cli("block", "--id", blocked, "--reason", "bad"))
    for image in (deployed, failed, blocked):
        refused_by_gate(
            cli("record", "-e", "production", "-b", "main", "-c", sha, "--image-tag", image)
        )
    assert row_count(db_path) == before + 3
    assert history.ids("-e", "production") == []


def test_production_accepts_an_image_verified_in_staging(
    cli: Callable[..., Result], history: History
) -> None:
    staging = history.record("staging", verified=True)
    production = history.record("production", image=staging)
    record = history.get(production)
    assert record["image_tag"] == staging
    assert [e["status"] for e in record["events"]] == ["deployed"]


def test_refusal_names_the_image_verified_for_the_same_commit(
    cli: Callable[..., Result], history: History
) -> None:
    staging = history.record("staging", verified=True)
    sha = history.get(staging)["commit_sha"]
    result = cli("record", "-e", "production", "-b", "main", "-c", sha)
    refused_by_gate(result)
    assert f"commit {sha[:7]} was verified there as image {staging}" in result.stderr


def test_an_override_is_recorded_with_its_reason_and_a_warning(
    cli: Callable[..., Result], history: History
) -> None:
    deployment_id, sha = history.next_id()
    args = (
        "record",
        "-e",
        "production",
        "-b",
        "main",
        "-c",
        sha,
        "--id",
        deployment_id,
        "--actor",
        "alice",
        "--override-gate",
        "hotfix for incident 42",
    )
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == deployment_id
    assert "WARNING: promotion gate overridden" in result.stderr
    assert "hotfix for incident 42" in result.stderr
    events = history.get(deployment_id)["events"]
    assert [e["status"] for e in events] == ["deployed", "gate_overridden"]
    assert events[1]["by"] == "alice"
    assert GATE_MESSAGE in events[1]["note"]
    assert events[1]["note"].endswith("overridden: hotfix for incident 42")
    # A retried call is "already recorded" and adds no second override event.
    again = cli(*args)
    assert again.exit_code == 0
    assert again.stderr == f"already recorded: {deployment_id}\n"
    assert len(history.get(deployment_id)["events"]) == 2


def test_an_override_that_is_not_needed_leaves_no_trace(
    cli: Callable[..., Result], history: History
) -> None:
    staging = history.record("staging", verified=True)
    result = cli(
        "record",
        "-e",
        "production",
        "--promoted-from",
        staging,
        "--override-gate",
        "just in case",
    )
    assert result.exit_code == 0
    assert "WARNING" not in result.stderr
    assert [e["status"] for e in history.get(result.stdout.strip())["events"]] == ["deployed"]


def test_rollbacks_in_production_pass_the_gate(
    cli: Callable[..., Result], history: History
) -> None:
    old = history.record("staging", verified=True)
    new = history.record("staging", verified=True)
    first = history.promote(old)
    history.verify(first)
    history.promote(new)
    # The staging record of the old image is blocked afterwards: a rollback in
    # production to what production already ran is still allowed.
    ok(cli("block", "--id", old, "--reason", "blocked in staging only"))
    rollback = history.rollback("production", first)
    assert history.get(rollback)["image_tag"] == old


def test_gates_are_configurable(cli: Callable[..., Result], history: History) -> None:
    _, sha = history.next_id()
    no_gate = {dt.GATES_ENV_VAR: "none"}
    assert cli("record", "-e", "production", "-b", "main", "-c", sha, env=no_gate).exit_code == 0
    # qa gates staging; production is then free.
    qa = {dt.GATES_ENV_VAR: "qa:staging"}
    _, sha = history.next_id()
    result = cli("record", "-e", "staging", "-b", "main", "-c", sha, env=qa)
    assert result.exit_code == 1
    assert "staging only receives images verified in qa" in result.stderr
    assert cli("record", "-e", "production", "-b", "main", "-c", sha, env=qa).exit_code == 0
    # An empty value means the default, never "no gate".
    _, sha = history.next_id()
    refused_by_gate(
        cli("record", "-e", "production", "-b", "main", "-c", sha, env={dt.GATES_ENV_VAR: ""})
    )


@pytest.mark.parametrize("value", ["staging", "staging:staging", "a:b,c:b", "Staging:prod", ":x"])
def test_a_bad_gate_setting_is_invalid_input_and_writes_nothing(
    cli: Callable[..., Result], db_path: Path, value: str
) -> None:
    result = cli(
        "record", "-e", "staging", "-b", "main", "-c", "e" * 40, env={dt.GATES_ENV_VAR: value}
    )
    assert result.exit_code == 2
    assert dt.GATES_ENV_VAR in result.stderr
    assert not db_path.exists()


def test_promotion_gates_parsing() -> None:
    assert dt.promotion_gates(None) == {"production": "staging"}
    assert dt.promotion_gates(" ") == {"production": "staging"}
    assert dt.promotion_gates("NONE") == {}
    assert dt.promotion_gates("dev:qa, qa:production") == {"qa": "dev", "production": "qa"}


# -- promote ----------------------------------------------------------------------


def test_promote_picks_the_latest_verified_unblocked_staging_deployment(
    cli: Callable[..., Result], history: History
) -> None:
    older = history.record("staging", verified=True)
    newer = history.record("staging", verified=True)
    failed = history.record("staging")
    history.verify(failed, "failed")
    history.record("staging")  # running, unverified
    promote = ("promote", "--from", "staging", "--to", "production", "--field", "id")
    assert ok(cli(*promote)) == newer
    ok(cli("block", "--id", newer, "--reason", "bad"))
    assert ok(cli(*promote)) == older
    # The defaults are staging -> production.
    assert ok(cli("promote", "--field", "image_tag")) == older


def test_promote_then_record_reuses_the_image(
    cli: Callable[..., Result], history: History, tmp_path: Path
) -> None:
    """The workflow's dispatch path: promote, deploy its image, record, verify."""
    staging = history.record("staging", "--actor", "bob", branch="feature/x", verified=True)
    outputs = tmp_path / "github_output"
    outputs.touch()
    result = cli(
        "promote", "--github-output", "--format", "json", env={"GITHUB_OUTPUT": str(outputs)}
    )
    assert json.loads(ok(result))["id"] == staging
    written = outputs.read_text()
    assert "image_tag<<" in written and staging in written
    production = ok(cli("record", "-e", "production", "--promoted-from", staging))
    record = history.get(production)
    source = history.get(staging)
    assert record["promoted_from"] == staging
    assert record["image_tag"] == source["image_tag"]
    assert (record["branch"], record["commit_sha"]) == (source["branch"], source["commit_sha"])
    history.verify(production)
    # Nothing new to promote now: production already runs the image.
    result = cli("promote")
    assert result.exit_code == 1
    assert f"production already runs image {staging}" in result.stderr


def test_promote_with_an_id_checks_it(cli: Callable[..., Result], history: History) -> None:
    verified = history.record("staging", verified=True)
    unverified = history.record("staging")
    elsewhere = history.record("qa", verified=True)
    assert ok(cli("promote", "--id", verified, "--field", "id")) == verified
    cases = [
        (unverified, 1, "only a verified one can be promoted"),
        (elsewhere, 1, "is in qa, not staging"),
        ("main_abcdef1_20260101000000", 1, "no deployment with id"),
        ("nonsense", 2, "deployment id must look like"),
    ]
    for deployment_id, code, message in cases:
        result = cli("promote", "--id", deployment_id)
        assert result.exit_code == code, result.output
        assert message in result.stderr
    ok(cli("block", "--id", verified, "--reason", "leaks memory"))
    result = cli("promote", "--id", verified)
    assert result.exit_code == 1
    assert "is blocked (leaks memory)" in result.stderr


def test_promote_refusals(cli: Callable[..., Result], history: History) -> None:
    history.record("staging")
    result = cli("promote")
    assert result.exit_code == 1
    assert "no verified, unblocked deployment in staging to promote" in result.stderr
    result = cli("promote", "--from", "staging", "--to", "staging")
    assert result.exit_code == 2
    assert cli("promote", "--to", "Prod!").exit_code == 2


def test_record_promoted_from_refusals(
    cli: Callable[..., Result], history: History, db_path: Path
) -> None:
    verified = history.record("staging", verified=True)
    unverified = history.record("staging")
    before = row_count(db_path)
    cases = [
        (("--promoted-from", unverified), 1, "only a verified one can be promoted"),
        (("--promoted-from", verified, "--image-tag", "other"), 2, "a promotion deploys the image"),
        (("--promoted-from", verified, "--rollback-of", verified), 2, "not both"),
        (("--promoted-from", "main_abcdef1_20260101000000"), 1, "to promote"),
    ]
    for extra, code, message in cases:
        result = cli("record", "-e", "production", *extra)
        assert result.exit_code == code, result.output
        assert message in result.stderr
    result = cli("record", "-e", "staging", "--promoted-from", verified)
    assert result.exit_code == 1
    assert "is already in staging" in result.stderr
    assert row_count(db_path) == before


def test_data_layer_gate(db_path: Path) -> None:
    db = dt.connect(str(db_path), write=True)
    try:
        staging, _ = dt.record_deployment(
            db,
            environment="staging",
            branch="main",
            commit_sha="f" * 40,
            deployment_id="main_fffffff_20250101000000",
            gates={},
        )
        with pytest.raises(dt.Refused, match=GATE_MESSAGE):
            dt.record_deployment(
                db,
                environment="production",
                branch="main",
                commit_sha="f" * 40,
                deployment_id="main_fffffff_20260101000000",
                image_tag=staging["image_tag"],
                gates={"production": "staging"},
            )
        dt.verify_deployment(db, staging["id"], "verified")
        warnings: list[str] = []
        promoted, created = dt.record_deployment(
            db,
            environment="production",
            promoted_from=staging["id"],
            deployment_id="main_fffffff_20260101000000",
            gates={"production": "staging"},
            warn=warnings.append,
        )
        assert created and promoted["promoted_from"] == staging["id"] and warnings == []
        assert dt.get_deployment(db, promoted["id"]) == promoted
        assert dt.promotion_candidate(db, "staging", "qa")["id"] == staging["id"]
        with pytest.raises(dt.Refused, match="already runs"):
            dt.promotion_candidate(db, "staging", "production")
    finally:
        db.close()
