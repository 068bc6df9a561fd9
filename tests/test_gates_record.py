"""Issue #10, the tracker's side: a record is a fact the gate never refuses (it is marked
gate_bypassed instead); `promote --commit` decides between promoting and building; failures
inside GitHub Actions are one safe annotation line; rollback-target names the original.

Also: the module docstring's section map matches the `# ====` banners.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import ok, process_env, record, run_tracker, sha

import deployment_tracker as dt


@pytest.fixture(autouse=True)
def no_caller_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DEPLOYMENT_TRACKER_DB",
        "DEPLOYMENT_TRACKER_ENVIRONMENT",
        "DEPLOYMENT_TRACKER_GATES",
        "GITHUB_ACTIONS",
        "GITHUB_OUTPUT",
    ):
        monkeypatch.delenv(name, raising=False)


def details(cli: Callable[..., Result], deployment_id: str) -> Any:
    return json.loads(ok(cli("get", deployment_id, "-o", "json"), strip=False))


def event_statuses(cli: Callable[..., Result], deployment_id: str) -> list[str]:
    return [event["status"] for event in details(cli, deployment_id)["events"]]


def marks_of(cli: Callable[..., Result], deployment_id: str) -> str:
    for line in ok(cli("list", "--all"), strip=False).splitlines()[2:]:
        words = line.split()
        if words[0] == deployment_id:
            return words[-1]
    raise AssertionError(f"{deployment_id} not listed")


def github_output(path: Path) -> dict[str, str]:
    """Parse the name<<DELIMITER blocks of a $GITHUB_OUTPUT file."""
    values = {}
    lines = path.read_text().split("\n")
    index = 0
    while index < len(lines) and lines[index]:
        name, _, delimiter = lines[index].partition("<<")
        end = lines.index(delimiter, index + 1)
        values[name] = "\n".join(lines[index + 1 : end])
        index = end + 1
    return values


# -- a record past the gate is kept, and marked -----------------------------------------


def test_production_without_staging_is_recorded_with_a_warning_and_marked(
    cli: Callable[..., Result],
) -> None:
    result = cli("record", "-e", "production", "-b", "main", "-c", sha("a", 1), "--actor", "me")
    assert result.exit_code == 0, result.output
    deployment_id = result.stdout.strip()
    assert re.fullmatch(r"main_aaaaaaa_\d{14}", deployment_id)
    warning = result.stderr.splitlines()
    assert len(warning) == 1, result.stderr
    assert warning[0].startswith("Warning: ")
    assert "staging" in warning[0] and "promotion gate" in warning[0]
    shown = details(cli, deployment_id)
    assert shown["gate_bypassed"] is True
    assert [event["status"] for event in shown["events"]] == ["deployed", "gate_bypassed"]
    assert shown["events"][1]["by"] == "me"
    assert "verified in staging" in shown["events"][1]["note"]
    assert marks_of(cli, deployment_id) == "gate-bypassed"
    assert ok(cli("get", deployment_id, "--field", "gate_bypassed"), strip=False) == "true\n"
    assert json.loads(ok(cli("list", "--json", "id,gate_bypassed"), strip=False)) == [
        {"id": deployment_id, "gate_bypassed": True}
    ]


def test_the_override_reason_is_kept_with_the_event(cli: Callable[..., Result]) -> None:
    reason = "hotfix for INC-42, staging is down"
    result = cli(
        "record", "-e", "production", "-b", "hotfix/x", "-c", sha("b", 1), "--override-gate", reason
    )
    assert result.exit_code == 0, result.output
    deployment_id = result.stdout.strip()
    assert reason in result.stderr
    bypass = details(cli, deployment_id)["events"][-1]
    assert bypass["status"] == "gate_bypassed"
    assert reason in bypass["note"]


def test_a_retried_record_adds_no_second_bypass(cli: Callable[..., Result]) -> None:
    args = ["record", "-e", "production", "-b", "main", "-c", sha("c", 1)]
    args += ["--id", "main_ccccccc_20260101000000", "--override-gate", "urgent"]
    first = cli(*args)
    assert first.exit_code == 0 and "promotion gate" in first.stderr
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout
    assert again.stderr == "already recorded: main_ccccccc_20260101000000\n"
    assert event_statuses(cli, "main_ccccccc_20260101000000") == ["deployed", "gate_bypassed"]


def test_rollbacks_and_gated_promotions_are_never_marked(cli: Callable[..., Result]) -> None:
    staged = record(cli, "staging", "main", sha("d", 1))
    ok(cli("verify", staged, "--status", "verified"), strip=False)
    promoted = ok(cli("record", "-e", "production", "-b", "release", "--promoted-from", staged))
    ok(cli("verify", promoted, "--status", "verified"), strip=False)
    bypassed = record(cli, "production", "hotfix/y", sha("e", 1))
    result = cli("record", "-e", "production", "-b", "rollback", "--rollback-of", promoted)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rollback = result.stdout.strip()
    for deployment_id in (promoted, rollback):
        assert details(cli, deployment_id)["gate_bypassed"] is False
        assert "gate_bypassed" not in event_statuses(cli, deployment_id)
    assert marks_of(cli, rollback) == "rollback"
    assert marks_of(cli, promoted) == "promoted"
    assert details(cli, bypassed)["gate_bypassed"] is True
    # A rollback to a deployment that was itself past the gate: still no mark.
    ok(cli("verify", rollback, "--status", "verified"), strip=False)
    result = cli("record", "-e", "production", "-b", "back", "--rollback-of", bypassed)
    assert result.exit_code == 0 and result.stderr == ""
    assert details(cli, result.stdout.strip())["gate_bypassed"] is False


@pytest.mark.parametrize("how", ["variable", "option"])
def test_no_gates_no_mark(cli: Callable[..., Result], how: str) -> None:
    args = ["record", "-e", "production", "-b", "main", "-c", sha("f", 1)]
    if how == "variable":
        result = cli(*args, env={dt.GATES_ENV_VAR: "none"})
    else:
        result = cli(*args, "--gates", "none")
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    deployment_id = result.stdout.strip()
    assert details(cli, deployment_id)["gate_bypassed"] is False
    assert event_statuses(cli, deployment_id) == ["deployed"]
    assert "gate-bypassed" not in ok(cli("list"), strip=False)


# -- promote --commit: promote or build -----------------------------------------------------


@pytest.fixture
def staged(cli: Callable[..., Result]) -> dict[str, str]:
    """staging: commit a on main (verified), then commit b on feature/x (verified later),
    then commit c (deployed, not verified)."""
    ids = {"a": record(cli, "staging", "main", sha("a", 2))}
    ok(cli("verify", ids["a"], "--status", "verified"), strip=False)
    ids["b"] = record(cli, "staging", "feature/x", sha("b", 2))
    ok(cli("verify", ids["b"], "--status", "verified"), strip=False)
    ids["c"] = record(cli, "staging", "feature/y", sha("c", 2))
    return ids


def test_promote_a_verified_commit(
    cli: Callable[..., Result], staged: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "github_output"
    for commit in (sha("a", 2), sha("a", 2)[:7]):
        assert (
            ok(cli("promote", "--commit", commit, "--field", "id"), strip=False)
            == staged["a"] + "\n"
        )
    result = cli(
        "promote", "--commit", sha("a", 2), "--github-output", env={"GITHUB_OUTPUT": str(output)}
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == staged["a"] + "\n"
    values = github_output(output)
    assert values["mode"] == "promote"
    assert values["id"] == staged["a"] and values["image_tag"] == staged["a"]
    assert values["commit_sha"] == sha("a", 2)
    # Without --commit, the latest verified one is the answer.
    assert ok(cli("promote", "--field", "id"), strip=False) == staged["b"] + "\n"


@pytest.mark.parametrize("gates", [None, "staging:production"])
def test_promote_an_unverified_commit_with_the_gate_on_is_refused(
    cli: Callable[..., Result], staged: dict[str, str], tmp_path: Path, gates: str | None
) -> None:
    output = tmp_path / "github_output"
    env = {"GITHUB_OUTPUT": str(output)}
    if gates:
        env[dt.GATES_ENV_VAR] = gates
    for commit in (sha("c", 2), sha("9", 9)):  # deployed but unverified; never deployed
        result = cli(
            "promote", "--commit", commit, "--build-if-ungated", "--github-output", env=env
        )
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        message = result.stderr
        assert len(message.splitlines()) == 1
        assert commit in message
        assert "deploy commit" in message and "staging first" in message
        assert "by its id" in message
        assert f"{dt.GATES_ENV_VAR}=none" in message
    assert not output.exists() or github_output(output) == {}


def test_promote_an_unverified_commit_without_a_gate_builds(
    cli: Callable[..., Result], staged: dict[str, str], tmp_path: Path
) -> None:
    output = tmp_path / "github_output"
    env = {"GITHUB_OUTPUT": str(output), dt.GATES_ENV_VAR: "none"}
    result = cli(
        "promote", "--commit", sha("c", 2), "--build-if-ungated", "--github-output", env=env
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "build\n"
    assert sha("c", 2) in result.stderr  # the warning says what to build
    values = github_output(output)
    assert values["mode"] == "build"
    assert values["commit_sha"] == sha("c", 2)
    # --gates none on the command line works the same.
    result = cli("promote", "--commit", sha("9", 9), "--build-if-ungated", "--gates", "none")
    assert (result.exit_code, result.stdout) == (0, "build\n")
    # Without the flag there is nothing to promote: a failure.
    result = cli("promote", "--commit", sha("c", 2), env={dt.GATES_ENV_VAR: "none"})
    assert result.exit_code == 1
    assert result.stdout == ""
    # ...and the gate governs only its target: to another environment, build.
    result = cli(
        "promote", "--to", "qa", "--commit", sha("c", 2), "--build-if-ungated", "--field", "id"
    )
    assert (result.exit_code, result.stdout) == (0, "build\n")


def test_promote_decision_in_a_real_process(
    cli: Callable[..., Result], staged: dict[str, str], db_path: Path, tmp_path: Path
) -> None:
    output = tmp_path / "github_output"
    env = process_env(DEPLOYMENT_TRACKER_DB=str(db_path), GITHUB_OUTPUT=str(output))
    completed = run_tracker(
        "promote", "--commit", sha("a", 2)[:7], "--github-output", env=env, text=False
    )
    assert (completed.returncode, completed.stdout.decode()) == (0, staged["a"] + "\n")
    assert github_output(output)["mode"] == "promote"


# -- failures inside GitHub Actions ------------------------------------------------------


ANNOTATION = "::error title=deployment-tracker::"


def annotation(result: Result) -> str:
    lines = result.stderr.split("\n")
    assert lines[-1] == "" and len(lines) == 2, result.stderr
    assert lines[0].startswith(ANNOTATION), result.stderr
    return lines[0][len(ANNOTATION) :]


def test_failures_are_one_annotation_line_inside_github_actions(
    cli: Callable[..., Result], staged: dict[str, str]
) -> None:
    actions = {"GITHUB_ACTIONS": "true"}
    result = cli("get", "zzz", env=actions)
    assert result.exit_code == 1
    assert "zzz" in annotation(result)
    result = cli("list", "--field", "nope", env=actions)
    assert result.exit_code == 2
    assert "nope" in annotation(result)
    result = cli("get", "zzz")
    assert result.stderr.startswith("Error: ")


def test_an_annotation_encodes_what_could_break_it(
    cli: Callable[..., Result], staged: dict[str, str], db_path: Path
) -> None:
    ok(cli("block", staged["a"], "--reason", "placeholder"), strip=False)
    hostile = "100% bad\r\n::error::pwned ##[error]evil\x1b[31m"
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute("UPDATE deployments SET blocked_reason = ? WHERE id = ?", (hostile, staged["a"]))
    result = cli("promote", staged["a"], env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 1
    text = annotation(result)
    assert "\r" not in text and "\x1b" not in text
    assert "100%25 bad%0D%0A::error::pwned" in text
    assert "##[" not in text
    assert "%" not in re.sub("%(25|0D|0A|23)", "", text)
    # Outside Actions the same failure is one plain line.
    result = cli("promote", staged["a"])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: ") and "\x1b" not in result.stderr


def test_a_stored_workflow_command_in_a_warning_is_defused(
    cli: Callable[..., Result], db_path: Path
) -> None:
    blocked = record(cli, "staging", "main", sha("a", 3))
    ok(cli("block", blocked, "--reason", "placeholder"), strip=False)
    record(cli, "staging", "feature/z", sha("b", 3))
    with closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute(
            "UPDATE deployments SET blocked_reason = ? WHERE id = ?",
            ("50% sure\n##[warning]y ::set-output name=x::", blocked),
        )
    result = cli(
        "rollback-target", "-e", "staging", blocked, "--force", env={"GITHUB_ACTIONS": "true"}
    )
    assert result.exit_code == 0, result.output
    warnings = result.stderr.splitlines()
    assert warnings and all(
        line.startswith("::warning title=deployment-tracker::forced: ") for line in warnings
    )
    assert "##[" not in result.stderr
    assert any("50%25 sure%0A#%23[warning]y" in line for line in warnings), warnings
    assert ok(
        cli("rollback-target", "-e", "staging", blocked, "--force", "--field", "id"), strip=False
    ) == (blocked + "\n")


# -- rollback-target names the original ---------------------------------------------------


@pytest.fixture
def production(cli: Callable[..., Result]) -> dict[str, str]:
    """production (no gate): a verified, b verified, r a rollback to a (verified), c running."""
    env = {dt.GATES_ENV_VAR: "none"}
    ids = {
        "a": ok(
            cli("record", "-e", "production", "-b", "main", "-c", sha("a", 4), env=env), strip=False
        )
    }
    ids["a"] = ids["a"].strip()
    ok(cli("verify", ids["a"], "--status", "verified"), strip=False)
    ids["b"] = record(cli, "production", "feature/b", sha("b", 4), "--gates", "none")
    ok(cli("verify", ids["b"], "--status", "verified"), strip=False)
    ids["r"] = record(cli, "production", "rollback", sha("a", 4), "--rollback-of", ids["a"])
    ok(cli("verify", ids["r"], "--status", "verified"), strip=False)
    ids["c"] = record(cli, "production", "feature/c", sha("c", 4), "--gates", "none")
    return ids


def test_rollback_target_names_the_deployment_that_first_shipped_the_image(
    cli: Callable[..., Result], production: dict[str, str]
) -> None:
    assert details(cli, production["r"])["image_tag"] == production["a"]
    target = "rollback-target", "-e", "production"
    assert ok(cli(*target, "--field", "id,image_tag"), strip=False) == (
        f"{production['a']}\t{production['a']}\n"
    )
    assert ok(cli(*target, production["r"], "--field", "id"), strip=False) == production["a"] + "\n"
    assert ok(cli(*target, production["b"], "--field", "id"), strip=False) == production["b"] + "\n"


def test_rollback_target_for_the_image_running_now_is_refused_without_force_advice(
    cli: Callable[..., Result], production: dict[str, str]
) -> None:
    running = cli("rollback-target", "-e", "production", production["c"])
    assert running.exit_code == 1
    assert "already runs" in running.stderr
    assert "force" not in running.stderr.lower()
    # The same image under another record of it: also what runs now.
    ok(
        cli("record", "-e", "production", "-b", "again", "--rollback-of", production["a"]),
        strip=False,
    )
    for deployment_id in (production["a"], production["r"]):
        result = cli("rollback-target", "-e", "production", deployment_id)
        assert result.exit_code == 1, result.output
        assert "already runs" in result.stderr and "force" not in result.stderr.lower()
        assert cli("rollback-target", "-e", "production", deployment_id, "--force").exit_code == 1


# -- the module docstring's section map -------------------------------------------------------


def test_the_section_map_matches_the_banners() -> None:
    source = Path(dt.__file__).read_text(encoding="utf-8").split("\n")
    rule = "# " + "=" * 74
    banners = []  # (first line of the banner, title)
    for index, line in enumerate(source):
        if line == rule and index + 2 < len(source) and source[index + 2] == rule:
            banners.append((index + 1, source[index + 1].removeprefix("# ").strip()))
    assert len(banners) >= 8
    last_line = len(source) - 1 if source[-1] == "" else len(source)
    expected = []
    for number, (start, title) in enumerate(banners):
        end = banners[number + 1][0] - 1 if number + 1 < len(banners) else last_line
        while not source[end - 1].strip():
            end -= 1  # the map may end a section at its last non-blank line
        expected.append((start, end, title))
    doc = dt.__doc__ or ""
    mapped = [
        (int(match["start"]), int(match["end"]), match["title"].strip())
        for match in re.finditer(
            r"^\s*(?P<start>\d+)-(?P<end>\d+)\s{2,}(?P<title>\S.*)$", doc, flags=re.MULTILINE
        )
    ]
    assert mapped, (
        "the module docstring has no section map (lines like '  31-331  Constants and SQL')"
    )
    assert [title for _, _, title in mapped] == [title for _, _, title in expected]
    for (start, end, title), (want_start, want_end, _) in zip(mapped, expected):
        next_banner = next((s for s, _, _ in expected if s > want_start), last_line + 1)
        assert start == want_start, (title, start, want_start)
        assert want_end <= end < next_banner, (title, end, want_end)
