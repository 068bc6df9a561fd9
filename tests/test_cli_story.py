"""The seed document's story, walked through the CLI as a team would live it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from click.testing import Result
from helpers import ok

import deployment_tracker as dt

SHA_1 = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
SHA_2 = "2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"
SHA_3 = "3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"

MAIN_STAGING = "main_1a2b3c4_20260101100000"
MAIN_PRODUCTION = "main_1a2b3c4_20260101110000"
BRANCH_STAGING = "branch_1_2b3c4d5_20260101120000"
BROKEN_STAGING = "main_3c4d5e6_20260101130000"
ROLLBACK_1 = "branch_1_2b3c4d5_20260101131000"
ROLLBACK_2 = "main_1a2b3c4_20260101140000"
BRANCH_PRODUCTION = "branch_1_2b3c4d5_20260101150000"


def test_seed_story(cli: Callable[..., Result], cli_json: Callable[..., Any]) -> None:
    # main goes to staging, is verified, and its image is promoted to production.
    out = ok(
        cli(
            "record",
            "-e",
            "staging",
            "-b",
            "main",
            "-c",
            SHA_1,
            "--id",
            MAIN_STAGING,
            "--actor",
            "alice",
            "--run-id",
            "101",
            "--run-url",
            "https://ci.example/runs/101",
        )
    )
    assert out == MAIN_STAGING
    ok(
        cli(
            "verify",
            "--id",
            MAIN_STAGING,
            "--status",
            "verified",
            "--by",
            "smoke-bot",
            "--note",
            "GET /health 200; /version main_1a2b3c4_20260101100000",
        )
    )
    ok(
        cli(
            "record",
            "-e",
            "production",
            "-b",
            "main",
            "-c",
            SHA_1,
            "--id",
            MAIN_PRODUCTION,
            "--image-tag",
            MAIN_STAGING,
            "--actor",
            "alice",
        )
    )
    ok(cli("verify", "--id", MAIN_PRODUCTION, "--status", "verified", "--by", "alice"))

    # branch_1 goes to staging and is verified; then a broken main commit fails.
    ok(
        cli(
            "record",
            "-e",
            "staging",
            "-b",
            "branch_1",
            "-c",
            SHA_2,
            "--id",
            BRANCH_STAGING,
            "--actor",
            "bob",
        )
    )
    ok(cli("verify", "--id", BRANCH_STAGING, "--status", "verified", "--by", "smoke-bot"))
    ok(cli("record", "-e", "staging", "-b", "main", "-c", SHA_3, "--id", BROKEN_STAGING))
    ok(
        cli(
            "verify",
            "--id",
            BROKEN_STAGING,
            "--status",
            "failed",
            "--by",
            "smoke-bot",
            "--note",
            "GET /health 500",
        )
    )

    # The rollback target skips the failed (running) one: branch_1's verified image.
    target = cli_json("rollback-target", "-e", "staging")
    assert target["id"] == BRANCH_STAGING
    assert ok(cli("rollback-target", "-e", "staging", "--field", "image_tag")) == BRANCH_STAGING
    # latest verified is the same deployment; latest of any status is the broken one.
    assert cli_json("latest", "-e", "staging")["id"] == BRANCH_STAGING
    assert cli_json("latest", "-e", "staging", "--status", "any")["id"] == BROKEN_STAGING

    # Record the rollback: a new deployment of the target's image, linked to it.
    out = ok(
        cli(
            "record",
            "-e",
            "staging",
            "--rollback-of",
            BRANCH_STAGING,
            "--id",
            ROLLBACK_1,
            "--actor",
            "auto-rollback",
        )
    )
    assert out == ROLLBACK_1
    rollback = cli_json("get", "--id", ROLLBACK_1)
    assert rollback["rollback_of"] == BRANCH_STAGING
    assert rollback["image_tag"] == BRANCH_STAGING
    assert rollback["branch"] == "branch_1"
    assert rollback["commit_sha"] == SHA_2
    assert rollback["status"] == "deployed"
    ok(cli("verify", "--id", ROLLBACK_1, "--status", "verified", "--by", "smoke-bot"))
    # The failed deployment stays failed: history is never rewritten.
    broken = cli_json("get", "--id", BROKEN_STAGING)
    assert broken["status"] == "failed"
    assert [e["status"] for e in broken["events"]] == ["deployed", "failed"]
    assert broken["events"][1]["note"] == "GET /health 500"

    # Now branch_1's image runs again, so the next target is main's verified image,
    # whichever branch it came from; neither branch_1 record is offered.
    target = cli_json("rollback-target", "-e", "staging")
    assert target["id"] == MAIN_STAGING

    # A manual rollback to main replaces the verified rollback, which becomes rolled_back.
    ok(
        cli(
            "record",
            "-e",
            "staging",
            "--rollback-of",
            MAIN_STAGING,
            "--id",
            ROLLBACK_2,
            "--actor",
            "carol",
            "--note",
            "manual rollback",
        )
    )
    replaced = cli_json("get", "--id", ROLLBACK_1)
    assert replaced["status"] == "rolled_back"
    assert [e["status"] for e in replaced["events"]] == ["deployed", "verified", "rolled_back"]
    assert replaced["events"][-1]["by"] == "carol"
    assert ROLLBACK_2 in replaced["events"][-1]["note"]

    # Production is independent: branch_1 (verified in staging) goes there and is verified.
    ok(
        cli(
            "record",
            "-e",
            "production",
            "-b",
            "branch_1",
            "-c",
            SHA_2,
            "--id",
            BRANCH_PRODUCTION,
            "--image-tag",
            BRANCH_STAGING,
        )
    )
    ok(cli("verify", "--id", BRANCH_PRODUCTION, "--status", "verified"))
    assert cli_json("rollback-target", "-e", "production")["id"] == MAIN_PRODUCTION
    assert cli_json("latest", "-e", "production")["id"] == BRANCH_PRODUCTION

    # list: newest first by recording order (never by id), filters combine.
    everything = cli_json("list")
    assert [d["id"] for d in everything] == [
        BRANCH_PRODUCTION,
        ROLLBACK_2,
        ROLLBACK_1,
        BROKEN_STAGING,
        BRANCH_STAGING,
        MAIN_PRODUCTION,
        MAIN_STAGING,
    ]
    staging = cli_json("list", "-e", "staging")
    assert {d["environment"] for d in staging} == {"staging"}
    assert len(staging) == 5
    assert [d["id"] for d in cli_json("list", "-e", "staging", "--status", "verified")] == [
        BRANCH_STAGING,
        MAIN_STAGING,
    ]
    assert [d["id"] for d in cli_json("list", "--branch", "branch_1", "--limit", "2")] == [
        BRANCH_PRODUCTION,
        ROLLBACK_1,
    ]
    first = everything[-1]
    expected = {
        "id": MAIN_STAGING,
        "environment": "staging",
        "branch": "main",
        "commit_sha": SHA_1,
        "image_tag": MAIN_STAGING,
        "status": "verified",
        "verified_by": "smoke-bot",
        "actor": "alice",
        "run_id": "101",
        "run_url": "https://ci.example/runs/101",
        "rollback_of": None,
        "note": None,
        "committed_at": None,
    }
    assert {key: first[key] for key in expected} == expected
    assert set(dt.FIELDS) <= set(first)
    assert first["deployed_at"].endswith("Z") and first["verified_at"].endswith("Z")

    # get shows the whole story of a deployment.
    main = cli_json("get", "--id", MAIN_STAGING)
    assert [(e["status"], e["by"]) for e in main["events"]] == [
        ("deployed", "alice"),
        ("verified", "smoke-bot"),
    ]
    assert main["events"][1]["note"].startswith("GET /health 200")


def test_rollback_target_refuses_what_cannot_be_restored(cli: Callable[..., Result]) -> None:
    ok(cli("record", "-e", "staging", "-b", "main", "-c", SHA_1, "--id", MAIN_STAGING))
    # Only one deployment, never verified: nothing to roll back to.
    result = cli("rollback-target", "-e", "staging")
    assert result.exit_code == 1
    assert "no verified deployment in staging" in result.stderr
    ok(cli("verify", "--id", MAIN_STAGING, "--status", "verified"))
    # The only verified deployment is the running one: still nothing.
    assert cli("rollback-target", "-e", "staging").exit_code == 1
    result = cli("rollback-target", "-e", "staging", "--id", MAIN_STAGING)
    assert result.exit_code == 1
    assert "already runs image" in result.stderr and "nothing to roll back" in result.stderr
    assert "--force" not in result.stderr  # forcing cannot help
    assert cli("rollback-target", "-e", "staging", MAIN_STAGING, "--force").exit_code == 1
    ok(cli("record", "-e", "staging", "-b", "main", "-c", SHA_3, "--id", BROKEN_STAGING))
    ok(cli("record", "-e", "qa", "-b", "branch_1", "-c", SHA_2, "--id", BRANCH_STAGING))
    # An id from another environment is refused.
    result = cli("rollback-target", "-e", "qa", "--id", MAIN_STAGING)
    assert result.exit_code == 1
    assert "is in staging, not qa" in result.stderr
    # An unverified id is refused unless forced, and forcing warns.
    ok(
        cli(
            "record",
            "-e",
            "staging",
            "-b",
            "branch_1",
            "-c",
            SHA_2,
            "--id",
            "branch_1_2b3c4d5_20260101133000",
        )
    )
    result = cli("rollback-target", "-e", "staging", "--id", BROKEN_STAGING)
    assert result.exit_code == 1
    assert "never verified" in result.stderr
    result = cli(
        "rollback-target", "-e", "staging", "--id", BROKEN_STAGING, "--force", "--field", "id"
    )
    assert result.exit_code == 0
    assert result.stdout.strip() == BROKEN_STAGING
    assert result.stderr == (
        f"Warning: forced: deployment {BROKEN_STAGING} was never verified (status deployed)\n"
    )
    # A missing id is "not found".
    result = cli("rollback-target", "-e", "staging", "--id", "main_1a2b3c4_20250101000000")
    assert result.exit_code == 1
    assert "no deployment with id" in result.stderr


def test_rollback_record_rules(cli: Callable[..., Result], cli_json: Callable[..., Any]) -> None:
    ok(cli("record", "-e", "staging", "-b", "main", "-c", SHA_1, "--id", MAIN_STAGING))
    ok(cli("verify", "--id", MAIN_STAGING, "--status", "verified"))
    ok(cli("record", "-e", "staging", "-b", "main", "-c", SHA_3, "--id", BROKEN_STAGING))
    # The rollback's image must be the target's.
    result = cli("record", "-e", "staging", "--rollback-of", MAIN_STAGING, "--image-tag", "other")
    assert result.exit_code == 2
    assert f"redeploys the image of {MAIN_STAGING} ({MAIN_STAGING}), not other" in result.stderr
    # A target in another environment, or one that doesn't exist, is refused.
    result = cli("record", "-e", "production", "--rollback-of", MAIN_STAGING)
    assert result.exit_code == 1
    assert "is in staging, not production" in result.stderr
    result = cli("record", "-e", "staging", "--rollback-of", "main_1a2b3c4_20250101000000")
    assert result.exit_code == 1
    assert "does not exist" in result.stderr
    assert len(cli_json("list")) == 2
    # Without --id a rollback gets a fresh id from the target's branch and commit.
    rollback_id = ok(cli("record", "-e", "staging", "--rollback-of", MAIN_STAGING))
    assert rollback_id.startswith("main_1a2b3c4_")
    assert rollback_id != MAIN_STAGING
    record = cli_json("get", "--id", rollback_id)
    assert record["image_tag"] == MAIN_STAGING
    # The deployment it replaced was never verified; it is marked rolled_back.
    assert cli_json("get", "--id", BROKEN_STAGING)["status"] == "rolled_back"


def test_rollback_target_names_the_deployment_that_first_shipped_the_image(
    cli: Callable[..., Result], cli_json: Callable[..., Any]
) -> None:
    """A verified rollback redeploys an image: rolling back to that image again names the
    original deployment, so rollbacks never chain through earlier rollbacks."""
    ok(cli("record", "-e", "staging", "-b", "branch_1", "-c", SHA_2, "--id", BRANCH_STAGING))
    ok(cli("verify", BRANCH_STAGING, "--status", "verified"))
    ok(cli("record", "-e", "staging", "-b", "main", "-c", SHA_3, "--id", BROKEN_STAGING))
    ok(cli("verify", BROKEN_STAGING, "--status", "failed"))
    ok(cli("record", "-e", "staging", "--rollback-of", BRANCH_STAGING, "--id", ROLLBACK_1))
    ok(cli("verify", ROLLBACK_1, "--status", "verified"))
    broken_again = "main_3c4d5e6_20260101135000"
    ok(cli("record", "-e", "staging", "-b", "main", "-c", SHA_3, "--id", broken_again))
    # ROLLBACK_1 is the newest verified deployment of another image, but BRANCH_STAGING
    # shipped that image first.
    assert cli_json("rollback-target", "-e", "staging")["id"] == BRANCH_STAGING
    assert ok(cli("rollback-target", "-e", "staging", ROLLBACK_1, "--field", "id")) == (
        BRANCH_STAGING
    )
    # The commit's short sha names two deployments here (the original and its rollback).
    result = cli("rollback-target", "-e", "staging", SHA_2[:7])
    assert result.exit_code == 1
    assert f"{SHA_2[:7]} is ambiguous" in result.stderr
