"""Issue 17, item 3: a deployment keeps the digest of the image it ran, and whatever redeploys
it (a promotion, a rollback) takes that digest, so a tag pushed again can't change what runs."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from click.testing import Result
from helpers import ok, record, sha

import deployment_tracker as dt

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def verified(cli: Callable[..., Result], environment: str, commit: str, *extra: str) -> str:
    deployment_id = record(cli, environment, "main", commit, *extra)
    ok(cli("verify", deployment_id, "--status", "verified"))
    return deployment_id


def test_the_digest_is_recorded_and_shown(cli: Callable[..., Result]) -> None:
    deployment_id = verified(cli, "staging", sha("a", 1), "--image-digest", DIGEST)
    assert ok(cli("get", deployment_id, "--field", "image_digest")) == DIGEST
    assert json.loads(ok(cli("get", deployment_id, "-o", "json")))["image_digest"] == DIGEST
    assert DIGEST in ok(cli("list", "--wide"))


def test_a_promotion_and_a_rollback_take_the_source_s_digest(cli: Callable[..., Result]) -> None:
    staged = verified(cli, "staging", sha("a", 1), "--image-digest", DIGEST)
    later = f"main_{sha('a', 1)[:7]}_20260102000000"
    promoted = ok(cli("record", "-e", "production", "--promoted-from", staged, "--id", later))
    assert ok(cli("get", promoted, "--field", "image_digest")) == DIGEST
    ok(cli("verify", promoted, "--status", "verified"))
    newer = record(
        cli, "production", "main", sha("b", 9), "--gates", "none", "--image-digest", OTHER
    )
    target = ok(cli("rollback-target", "-e", "production", "--field", "id,image_digest"))
    assert target == f"{promoted}\t{DIGEST}"
    again = f"main_{sha('a', 1)[:7]}_20260103000000"
    rollback = ok(cli("record", "-e", "production", "--rollback-of", promoted, "--id", again))
    assert ok(cli("get", rollback, "--field", "image_digest")) == DIGEST
    assert ok(cli("get", newer, "--field", "status")) == "rolled_back"


def test_a_redeploy_naming_another_digest_is_refused_and_nothing_is_written(
    cli: Callable[..., Result], db_path: Path
) -> None:
    staged = verified(cli, "staging", sha("a", 1), "--image-digest", DIGEST)
    before = db_path.read_bytes()
    result = cli("record", "-e", "production", "--promoted-from", staged, "--image-digest", OTHER)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: this deployment redeploys the image of {staged} (digest {DIGEST}), not {OTHER}\n"
    )
    assert db_path.read_bytes() == before


def test_a_retry_must_repeat_the_digest(cli: Callable[..., Result]) -> None:
    args = (
        "record",
        "-e",
        "staging",
        "-b",
        "main",
        "-c",
        sha("a", 1),
        "--id",
        f"main_{sha('a', 1)[:7]}_20260101000000",
    )
    ok(cli(*args, "--image-digest", DIGEST))
    assert "already recorded" in cli(*args, "--image-digest", DIGEST).stderr
    result = cli(*args, "--image-digest", OTHER)
    assert result.exit_code == 1
    assert "image_digest" in result.stderr


def test_a_digest_that_is_not_one_is_refused_while_parsing(cli: Callable[..., Result]) -> None:
    for bad in ("sha256:AB", "md5:" + "a" * 32, "sha256:" + "a" * 63, DIGEST + "\nx"):
        result = cli(
            "record", "-e", "staging", "-b", "main", "-c", sha("a", 1), "--image-digest", bad
        )
        assert result.exit_code == 2, bad
        assert "image digest must be sha256: and 64 lowercase hex" in result.stderr


def test_a_version_4_database_gains_the_column_and_keeps_its_rows(
    cli: Callable[..., Result], db_path: Path
) -> None:
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        for step in dt.MIGRATIONS[:4]:
            step(db)
        db.execute(f"PRAGMA application_id = {dt.APPLICATION_ID}")
        db.execute("PRAGMA user_version = 4")
        db.execute(
            "INSERT INTO deployments (id, environment, branch, commit_sha, image_tag, status,"
            " deployed_at) VALUES ('old_abcdef1_20250101000000', 'staging', 'old', 'abcdef1',"
            " 'old_abcdef1_20250101000000', 'verified', '2025-01-01T00:00:00Z')"
        )
    new = record(cli, "staging", "main", sha("a", 1), "--image-digest", DIGEST)
    rows = {row["id"]: row for row in json.loads(ok(cli("list", "-o", "json")))}
    assert rows["old_abcdef1_20250101000000"]["image_digest"] is None
    assert rows[new]["image_digest"] == DIGEST
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(dt.MIGRATIONS)


def test_an_altered_digest_never_reaches_a_decision(
    cli: Callable[..., Result], db_path: Path
) -> None:
    older = verified(cli, "staging", sha("a", 1), "--image-digest", DIGEST)
    verified(cli, "staging", sha("b", 2), "--image-digest", OTHER)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute(
            "UPDATE deployments SET image_digest = 'sha256:x\nimage=evil' WHERE id = ?", (older,)
        )
    result = cli("rollback-target", "-e", "staging")
    assert result.exit_code == 1
    assert "has a image_digest the tracker never writes" in result.stderr
