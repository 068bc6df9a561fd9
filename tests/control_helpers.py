"""Helpers for the control tests (block, promotion gate, prune, notify)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import Result

import deployment_tracker as dt


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


class History:
    """Records deployments through the CLI with unique, ordered ids and commits."""

    def __init__(self, cli: Callable[..., Result]) -> None:
        self.cli = cli
        self.count = 0

    def next_id(self, branch: str = "main") -> tuple[str, str]:
        self.count += 1
        sha = f"{self.count:07x}" + "c" * 33
        seconds = self.count
        stamp = f"20260101{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
        return f"{dt.sanitise_branch(branch)}_{sha[:7]}_{stamp}", sha

    def record(
        self,
        environment: str,
        *extra: str,
        branch: str = "main",
        image: str | None = None,
        verified: bool = False,
    ) -> str:
        deployment_id, sha = self.next_id(branch)
        args = ["record", "-e", environment, "-b", branch, "-c", sha, "--id", deployment_id]
        if image is not None:
            args += ["--image-tag", image]
        ok(self.cli(*args, *extra))
        if verified:
            self.verify(deployment_id)
        return deployment_id

    def rollback(self, environment: str, target: str) -> str:
        deployment_id, _ = self.next_id()
        sha_prefix = deployment_id.split("_")[1]
        # A rollback keeps the target's commit, so its id must name that commit.
        target_sha = target.split("_")[-2]
        deployment_id = deployment_id.replace(f"_{sha_prefix}_", f"_{target_sha}_")
        ok(self.cli("record", "-e", environment, "--rollback-of", target, "--id", deployment_id))
        return deployment_id

    def promote(self, source_id: str, environment: str = "production") -> str:
        deployment_id, _ = self.next_id()
        sha_prefix = deployment_id.split("_")[1]
        deployment_id = deployment_id.replace(f"_{sha_prefix}_", f"_{source_id.split('_')[-2]}_")
        ok(
            self.cli(
                "record", "-e", environment, "--promoted-from", source_id, "--id", deployment_id
            )
        )
        return deployment_id

    def verify(self, deployment_id: str, status: str = "verified") -> None:
        ok(self.cli("verify", "--id", deployment_id, "--status", status))

    def get(self, deployment_id: str) -> Any:
        return json.loads(ok(self.cli("get", "--id", deployment_id, "--format", "json")))

    def ids(self, *args: str) -> list[str]:
        out = ok(self.cli("list", "--all", "--format", "json", *args))
        return [record["id"] for record in json.loads(out)]


def row_count(db_path: Path, table: str = "deployments") -> int:
    db = sqlite3.connect(db_path)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()
