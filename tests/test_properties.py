"""Property-based tests: ids for any branch git accepts, and text that round-trips exactly."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import make_runner, run_tracker
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import deployment_tracker as dt

# Where git refuses or the tracker deliberately does: C1 controls (U+0080 to
# U+009F) are accepted by git but refused by the tracker, as terminals act on them,
# and so are the format characters (category Cf): the marks that reorder displayed
# text (bidi), and the zero-width and tag characters that hide in it.
GIT_FORBIDDEN = set(" ~^:?*[\\") | {chr(code) for code in range(0x20)} | {"\x7f"}
BIDI = {
    "\u061c",
    "\u200e",
    "\u200f",
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
}
TRACKER_FORBIDDEN = {chr(code) for code in range(0x80, 0xA0)} | BIDI
DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
FAST = settings(max_examples=150, deadline=None)
LONG = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
CLI = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PROCESSES = settings(max_examples=12, deadline=None)

branch_characters = st.one_of(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_.+#@!$()'\"{}<>=&;|,%"),
    st.characters(
        blacklist_categories=("Cs", "Cf"),
        blacklist_characters="".join(GIT_FORBIDDEN | TRACKER_FORBIDDEN),
    ),
)


def git_accepts(name: str) -> bool:
    """git check-ref-format --branch, for the rules not already in the alphabet."""
    components = name.split("/")
    return (
        name not in ("@", "HEAD")
        and not name.startswith("-")
        and not name.endswith(".")
        and ".." not in name
        and "@{" not in name
        and all(component for component in components)
        and not any(component.startswith(".") for component in components)
        and not any(component.endswith(".lock") for component in components)
    )


def tracker_accepts(name: str) -> bool:
    """The tracker's own bounds on top of git's: a length limit, and not only spaces."""
    return len(name) <= dt.MAX_LENGTHS["branch"] and bool(name.strip())


component = st.text(branch_characters, min_size=1, max_size=30)
branches = (
    st.lists(component, min_size=1, max_size=5)
    .map("/".join)
    .filter(git_accepts)
    .filter(tracker_accepts)
)
long_branches = (
    st.tuples(st.text(branch_characters, min_size=dt.MAX_BRANCH_PART, max_size=200), branches)
    .map(lambda parts: f"{parts[0]}/{parts[1]}")
    .filter(git_accepts)
    .filter(tracker_accepts)
)
shas = st.one_of(
    st.text("0123456789abcdef", min_size=7, max_size=40),
    st.text("0123456789abcdef", min_size=64, max_size=64),
)
moments = st.datetimes(
    min_value=datetime(1970, 1, 1),
    max_value=datetime(2025, 12, 31),
    timezones=st.just(timezone.utc),
).map(lambda moment: moment.replace(microsecond=0))


@FAST
@given(branch=branches, sha=shas, moment=moments)
def test_any_git_branch_gives_a_docker_tag_that_parses_back(
    branch: str, sha: str, moment: datetime
) -> None:
    assert dt.check_branch(branch) == branch
    deployment_id = dt.make_id(branch, sha, moment)
    assert DOCKER_TAG.fullmatch(deployment_id), deployment_id
    assert dt.check_image_tag(deployment_id) == deployment_id
    assert len(deployment_id) <= 128
    _, short_sha, parsed_moment = dt.parse_id(deployment_id)
    assert short_sha == sha[: dt.SHORT_SHA_LENGTH]
    assert parsed_moment == moment


@LONG
@given(first=long_branches, second=long_branches, sha=shas, moment=moments)
def test_distinct_long_branches_get_distinct_tags(
    first: str, second: str, sha: str, moment: datetime
) -> None:
    assume(first != second)
    assert dt.make_id(first, sha, moment) != dt.make_id(second, sha, moment)


@LONG
# Found by hypothesis: squashed '-' runs made two 108-character names fit untruncated.
@example(prefix="0" * 102 + ";;{/0", tails=[";", "<"])
@given(prefix=long_branches, tails=st.lists(component, min_size=2, max_size=2, unique=True))
def test_long_branches_differing_only_at_the_end_get_distinct_tags(
    prefix: str, tails: list[str]
) -> None:
    first, second = (f"{prefix}/{tail}"[: dt.MAX_LENGTHS["branch"]] for tail in tails)
    assume(first != second and git_accepts(first) and git_accepts(second))
    assert dt.sanitise_branch(first) != dt.sanitise_branch(second)


@settings(max_examples=30, deadline=None)
@given(branch=branches)
def test_the_branch_strategy_only_makes_names_git_accepts(branch: str) -> None:
    result = subprocess.run(
        ["git", "check-ref-format", "--branch", branch], capture_output=True, check=False
    )
    assert result.returncode == 0, (branch, result.stderr)


def test_c1_controls_git_accepts_are_refused_by_design(runner: CliRunner) -> None:
    result = runner.invoke(dt.cli, ["new-id", "-b", "main\x9b31m", "-c", "a" * 7])
    assert result.exit_code == 2
    assert "branch must not contain control or bidi characters" in result.stderr


@pytest.mark.parametrize("mark", sorted(BIDI))
def test_bidi_marks_git_accepts_are_refused_by_design(
    runner: CliRunner, mark: str, db_path: Path
) -> None:
    """`hotfix/\u202edexif-ton` would show as `hotfix/not-fixed`."""
    branch = f"hotfix/{mark}dexif-ton"
    assert (
        subprocess.run(["git", "check-ref-format", "--branch", branch], check=False).returncode == 0
    )
    record = ["--db", str(db_path), "record", "-e", "qa", "-b", "main", "-c", "a" * 7]
    for args in (
        ["new-id", "-b", branch, "-c", "a" * 7],
        [*record, "--actor", f"{mark}x"],
        [*record, "--note", f"a{mark}b"],
    ):
        result = runner.invoke(dt.cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert "must not contain control or bidi characters" in result.stderr
    assert not db_path.exists()


@CLI
@given(branch=branches, sha=shas)
def test_new_id_from_the_cli_is_a_tag_with_the_sha(branch: str, sha: str) -> None:
    result = make_runner().invoke(dt.cli, ["new-id", "-b", branch, "-c", sha, "--format", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["branch"] == branch
    assert DOCKER_TAG.fullmatch(shown["id"])
    assert dt.parse_id(shown["id"])[1] == sha[:7] == shown["short_sha"]


def free_text(limit: int, *, multiline: bool) -> st.SearchStrategy[str]:
    allowed = {"\t", "\n"} if multiline else set()
    forbidden = (
        {chr(code) for code in range(0x20)} | {chr(code) for code in range(0x7F, 0xA0)} | BIDI
    ) - allowed
    return st.text(
        st.characters(blacklist_categories=("Cs", "Cf"), blacklist_characters="".join(forbidden)),
        min_size=1,
        max_size=limit,
    ).filter(lambda text: bool(text.strip()))


notes = free_text(400, multiline=True)
actors = free_text(dt.MAX_LENGTHS["actor"], multiline=False)


def record_and_get(branch: str, actor: str, note: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        db = str(Path(folder) / "deployments.db")
        runner = make_runner()
        args = ["record", "-e", "qa", "-b", branch, "-c", "a" * 40, "--actor", actor]
        recorded = runner.invoke(dt.cli, ["--db", db, *args, "--note", note])
        assert recorded.exit_code == 0, recorded.output
        shown = runner.invoke(dt.cli, ["--db", db, "get", recorded.stdout.strip(), "-o", "json"])
        assert shown.exit_code == 0, shown.output
        result: dict[str, object] = json.loads(shown.stdout)
        return result


@CLI
@given(branch=branches, actor=actors, note=notes)
def test_any_text_round_trips_through_get_json(branch: str, actor: str, note: str) -> None:
    shown = record_and_get(branch, actor, note)
    assert (shown["branch"], shown["actor"], shown["note"]) == (branch, actor, note)
    events = shown["events"]
    assert isinstance(events, list)
    assert events[0]["note"] == note


@PROCESSES
@given(branch=branches, actor=actors, note=notes)
def test_any_text_round_trips_through_real_processes(branch: str, actor: str, note: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "deployments.db"
        args = ("-e", "qa", "-b", branch, "-c", "b" * 40, "--actor", actor, "--note", note)
        recorded = run_tracker("record", *args, db=db)
        assert recorded.returncode == 0, recorded.stderr
        shown = run_tracker("get", recorded.stdout.strip(), "-o", "json", db=db)
        assert shown.returncode == 0, shown.stderr
    stored = json.loads(shown.stdout)
    assert (stored["branch"], stored["actor"], stored["note"]) == (branch, actor, note)
