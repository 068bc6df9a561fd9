"""history.py works: it runs at a tiny size and prints well-formed tables, and its
exactly-once check fails when a write is lost, doubled or failed. Behaviour only, no timing."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("history.py")


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("history_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    work = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [
            sys.executable, str(SCRIPT), "--sizes", "200", "--writers", "2", "--runs", "1",
            "--records-per-writer", "2", "--growth-writes", "2",
            "--cache-dir", str(work), "--json", str(work / "results.json"),
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads((work / "results.json").read_text(encoding="utf-8"))


def tables(text: str) -> list[list[list[str]]]:
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            found.append(current)
            current = []
    return found


def test_prints_well_formed_tables(measured: tuple[str, dict[str, Any]]) -> None:
    out, data = measured
    found = tables(out)
    assert len(found) == 5  # per call, round trips, storage, contention, targets
    for table in found:
        assert all(len(row) == len(table[0]) for row in table), table
        assert set("".join(table[1])) <= set("-")
    per_call = {row[0]: row[1] for row in found[0][2:]}
    for name in ("`rollback-target -e production`", "`get` an old id", "`record`", "`verify`"):
        assert re.fullmatch(r"\d+\.\d\d s \(1\.00x\)", per_call[name]), per_call
    assert any(
        name.startswith("failed verify + rollback run (15 history calls)") for name in per_call
    )
    trips = {row[0]: row[1] for row in found[1][2:]}
    assert trips["normal deploy run: prepare (1 call)"].endswith("/ 0")  # a read never pushes
    contention = found[3][2]
    assert contention[0] == "2" and contention[-1] == "yes"
    targets = {row[0].split(" <=")[0].split(" <")[0]: row[2] for row in found[4][2:]}
    assert len(targets) == 6, targets
    assert data["contention"][0]["found"], "the final history was read"


def test_exactly_once_check_fails_when_a_write_is_lost(
    measured: tuple[str, dict[str, Any]],
) -> None:
    bench = load()
    _, data = measured
    honest = data["contention"][0]
    assert bench.landing(bench.Contention(**honest)).ok
    lost, doubled, failed = (copy.deepcopy(honest) for _ in range(3))
    lost["found"].remove(lost["expected"][0])
    doubled["found"].append(doubled["expected"][-1])
    failed["failures"].append(f"{failed['expected'][0]}: could not update the history")
    for tampered in (lost, doubled, failed):
        assert not bench.landing(bench.Contention(**tampered)).ok
    data = {**data, "contention": [lost]}
    row = next(row for row in tables(bench.report(data))[-1] if row[0].startswith("16 "))
    assert row[2].startswith("**no**") and "1 missing" in row[1]
