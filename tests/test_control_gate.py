"""The promotion gate and `promote`: production only receives images verified in staging.

`promote` enforces the gate; `record` never refuses a deployment that happened, but marks
one that went past the gate (gate_bypassed) and warns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from helpers import History, ok, parse_github_output, row_count

import deployment_tracker as dt

GATE_MESSAGE = "production only receives images verified in staging"


def recorded_past_gate(result: Result, history: History, message: str = GATE_MESSAGE) -> str:
    """The record succeeded with one warning line; the deployment carries the bypass."""
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("Warning: recorded past the promotion gate"), result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    deployment_id = result.stdout.strip()
    record = history.get(deployment_id)
    assert record["gate_bypassed"] is True
    assert [e["status"] for e in record["events"]] == ["deployed", "gate_bypassed"]
    assert message in record["events"][1]["note"]
    return deployment_id


def not_gated(result: Result, history: History) -> str:
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr
    deployment_id = result.stdout.strip()
    assert history.get(deployment_id)["gate_bypassed"] is False
    return deployment_id


def test_production_records_an_image_never_verified_in_staging_as_a_bypass(
    cli: Callable[..., Result], history: History, db_path: Path
) -> None:
    history.record("staging", verified=True)
    deployed = history.record("staging")
    failed = history.record("staging")
    history.verify(failed, "failed")
    blocked = history.record("staging", verified=True)
    ok(cli("block", blocked, "--reason", "bad"))
    before = row_count(db_path)
    # A fresh build (its own image) and the image of an unverified, failed or
    # blocked staging deployment all went past the gate: recorded, and marked.
    bypassed = []
    for image in (None, deployed, failed, blocked):
        deployment_id, sha = history.next_id()
        args = ["record", "-e", "production", "-b", "main", "-c", sha, "--id", deployment_id]
        result = cli(*args, *(["--image-tag", image] if image else []))
        bypassed.append(recorded_past_gate(result, history))
    assert row_count(db_path) == before + 4
    assert history.ids("-e", "production") == bypassed[::-1]
    # The mark shows in the table, and in every machine format.
    table = ok(cli("list", "-e", "production")).splitlines()
    header, rule, *rows = table
    assert header.split()[-1] == "marks" and set(rule) == {"-", " "}
    assert [row.split()[-1] for row in rows] == ["gate-bypassed"] * 4
    assert ok(cli("list", "-e", "production", "--field", "gate_bypassed")).split() == ["true"] * 4


def test_production_accepts_an_image_verified_in_staging(
    cli: Callable[..., Result], history: History
) -> None:
    staging = history.record("staging", verified=True)
    deployment_id, sha = history.next_id()
    production = not_gated(
        cli(
            *("record", "-e", "production", "-b", "main", "-c", sha),
            *("--id", deployment_id, "--image-tag", staging),
        ),
        history,
    )
    record = history.get(production)
    assert record["image_tag"] == staging
    assert [e["status"] for e in record["events"]] == ["deployed"]
    assert ok(cli("list", "-e", "production", "--field", "gate_bypassed")) == "false"


def test_the_warning_names_the_image_verified_for_the_same_commit(
    cli: Callable[..., Result], history: History
) -> None:
    staging = history.record("staging", verified=True)
    sha = history.get(staging)["commit_sha"]
    result = cli("record", "-e", "production", "-b", "main", "-c", sha)
    deployment_id = recorded_past_gate(result, history)
    named = f"commit {sha[:7]} was verified there as image {staging}"
    assert named in result.stderr
    assert named in history.get(deployment_id)["events"][1]["note"]


def test_an_override_reason_is_kept_with_the_bypass(
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
    assert recorded_past_gate(result, history) == deployment_id
    assert result.stderr.startswith(
        "Warning: recorded past the promotion gate (reason: hotfix for incident 42): "
        + GATE_MESSAGE
    )
    events = history.get(deployment_id)["events"]
    assert events[1]["by"] == "alice"
    assert events[1]["note"].endswith("; reason given: hotfix for incident 42")
    # A retried call is "already recorded": no second bypass event, no second warning.
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
    production = not_gated(result, history)
    assert [e["status"] for e in history.get(production)["events"]] == ["deployed"]


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
    record = history.get(rollback)
    assert record["image_tag"] == old
    assert record["gate_bypassed"] is False
    assert [e["status"] for e in record["events"]] == ["deployed"]


def test_gates_are_configurable(cli: Callable[..., Result], history: History) -> None:
    def record(environment: str, *extra: str, env: dict[str, str] | None = None) -> Result:
        deployment_id, sha = history.next_id()
        args = ("record", "-e", environment, "-b", "main", "-c", sha, "--id", deployment_id)
        return cli(*args, *extra, env=env)

    no_gate = {dt.GATES_ENV_VAR: "none"}
    not_gated(record("production", env=no_gate), history)
    not_gated(record("production", "--gates", "none"), history)
    # qa gates staging; production is then free.
    qa = {dt.GATES_ENV_VAR: "qa:staging"}
    recorded_past_gate(
        record("staging", env=qa), history, "staging only receives images verified in qa"
    )
    not_gated(record("production", env=qa), history)
    # The option wins over the variable.
    recorded_past_gate(record("production", "--gates", "staging:production", env=no_gate), history)
    # An empty value means the default, never "no gate".
    recorded_past_gate(record("production", env={dt.GATES_ENV_VAR: ""}), history)


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
    assert dt.parse_gates(None) == {"production": "staging"}
    assert dt.parse_gates(" ") == {"production": "staging"}
    assert dt.parse_gates("NONE") == {}
    assert dt.parse_gates("dev:qa, qa:production") == {"qa": "dev", "production": "qa"}
    for bad in ("staging", "staging:staging", "a:b,c:b", "Staging:prod", ":x"):
        with pytest.raises(dt.InvalidInput):
            dt.parse_gates(bad)


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
        ("nonsense", 1, "nonsense"),
        ("non sense", 2, "must be a Docker tag"),
    ]
    for deployment_id, code, message in cases:
        for given in (("--id", deployment_id), (deployment_id,)):
            result = cli("promote", *given)
            assert result.exit_code == code, result.output
            assert message in result.stderr
    # The positional ID may be the start of one; --id must be a whole id.
    assert "no deployment in staging has an id starting with nonsense" in (
        cli("promote", "nonsense").stderr
    )
    assert "no deployment with id nonsense" in cli("promote", "--id", "nonsense").stderr
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
        (
            ("--promoted-from", verified, "--image-tag", "other"),
            2,
            f"redeploys the image of {verified}",
        ),
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
    gates = dt.parse_gates(None)
    db = dt.connect(str(db_path), write=True)
    try:
        staging, _, objection = dt.record_deployment(
            db,
            dt.RecordRequest(
                environment="staging",
                branch="main",
                commit_sha="f" * 40,
                deployment_id="main_fffffff_20250101000000",
            ).checked(),
            gates=gates,
        )
        assert objection is None
        early = dt.RecordRequest(
            environment="production",
            branch="main",
            commit_sha="f" * 40,
            deployment_id="main_fffffff_20250601000000",
            image_tag=staging["image_tag"],
            gate_reason="smoke tests are down",
        ).checked()
        assert dt.gate_objection(db, {**staging, "environment": "production"}, gates) is not None
        bypassed, created, objection = dt.record_deployment(db, early, gates=gates)
        assert created and objection is not None and GATE_MESSAGE in objection
        assert bypassed["gate_bypassed"] is True
        assert dt.get_deployment(db, bypassed["id"]) == bypassed
        assert [(e["status"], e["note"]) for e in dt.events(db, bypassed["id"])] == [
            ("deployed", None),
            ("gate_bypassed", f"{objection}; reason given: smoke tests are down"),
        ]
        # Retried: the same record, no new objection and no second event.
        assert dt.record_deployment(db, early, gates=gates)[1:] == (False, None)
        assert len(dt.events(db, bypassed["id"])) == 2
        dt.verify_deployment(db, staging["id"], "verified")
        assert dt.gate_objection(db, {**staging, "environment": "production"}, gates) is None
        promoted, created, objection = dt.record_deployment(
            db,
            dt.RecordRequest(
                environment="production",
                promoted_from=staging["id"],
                deployment_id="main_fffffff_20260101000000",
            ).checked(),
            gates=gates,
        )
        assert created and promoted["promoted_from"] == staging["id"] and objection is None
        assert promoted["gate_bypassed"] is False
        assert dt.get_deployment(db, promoted["id"]) == promoted
        assert dt.promotion_candidate(db, "staging", "qa")["id"] == staging["id"]
        with pytest.raises(dt.Refused, match="already runs"):
            dt.promotion_candidate(db, "staging", "production")
    finally:
        db.close()


# -- promote --commit, --build-if-ungated: the workflow's decision ------------------------


def test_promote_a_commit_picks_its_latest_verified_staging_deployment(
    cli: Callable[..., Result], history: History
) -> None:
    first = history.record("staging", verified=True)
    sha = history.get(first)["commit_sha"]
    again_id = f"main_{sha[:7]}_20260102000000"
    ok(cli("record", "-e", "staging", "-b", "main", "-c", sha, "--id", again_id))
    history.verify(again_id)
    history.record("staging", verified=True)  # another commit, newer
    assert ok(cli("promote", "--commit", sha, "--field", "id")) == again_id
    ok(cli("block", again_id, "--reason", "bad"))
    assert ok(cli("promote", "--commit", sha[:7], "--field", "id")) == first
    result = cli("promote", first, "--commit", sha)
    assert result.exit_code == 2
    assert "not both" in result.stderr


def test_promote_a_commit_never_verified_in_staging(
    cli: Callable[..., Result], history: History, tmp_path: Path
) -> None:
    history.record("staging", verified=True)
    _, sha = history.next_id()
    # The gate guards production: refused, and told what to do.
    result = cli("promote", "--commit", sha, "--build-if-ungated")
    assert result.exit_code == 1
    assert f"commit {sha} has no verified, unblocked deployment in staging" in result.stderr
    assert "the staging:production gate requires one" in result.stderr
    # No gate: not found, unless the caller may build it.
    result = cli("promote", "--commit", sha, "--gates", "none")
    assert result.exit_code == 1
    assert "gate" not in result.stderr
    outputs = tmp_path / "github_output"
    outputs.touch()
    env = {dt.GATES_ENV_VAR: "none", "GITHUB_OUTPUT": str(outputs)}
    result = cli("promote", "--commit", sha, "--build-if-ungated", "--github-output", env=env)
    assert (result.exit_code, result.stdout) == (0, "build\n"), result.output
    assert result.stderr.startswith("Warning: ")
    assert f"no gate guards production: build and deploy commit {sha}" in result.stderr
    assert parse_github_output(outputs.read_text()) == {"mode": "build", "commit_sha": sha}
    # A gate on another target does not guard production.
    result = cli("promote", "--commit", sha, "--build-if-ungated", "--gates", "dev:qa")
    assert (result.exit_code, result.stdout) == (0, "build\n"), result.output


def test_promote_tells_the_workflow_to_promote(
    cli: Callable[..., Result], history: History, tmp_path: Path
) -> None:
    staging = history.record("staging", verified=True)
    sha = history.get(staging)["commit_sha"]
    outputs = tmp_path / "github_output"
    outputs.touch()
    env = {"GITHUB_OUTPUT": str(outputs)}
    result = cli("promote", "--commit", sha, "--build-if-ungated", "--github-output", env=env)
    assert (result.exit_code, result.stdout) == (0, staging + "\n"), result.output
    written = parse_github_output(outputs.read_text())
    assert (written["mode"], written["id"], written["image_tag"]) == ("promote", staging, staging)
