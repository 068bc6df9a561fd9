"""Ids and image tags: valid Docker tags for any branch git accepts, parsed from the right."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
from click.testing import Result
from helpers import History, ok

import deployment_tracker as dt

DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
SHA = "0123456789abcdef0123456789abcdef01234567"
MOMENT = datetime(2023, 4, 15, 12, 34, 56, tzinfo=timezone.utc)

HOSTILE_BRANCHES = [
    "main",
    "branch_1",
    "feature/login",
    "fix#12",
    "Ünïcode/🚀",
    "🚀",
    "feat/$(id)",
    'zzz";echo${IFS}hello;#',
    "release/v1.2.3",
    "UPPER/Case",
    "a+b@c!d",
    "x" * 300,
    "under_score__many___",
    "dots.in.name",
    "'quoted'",
    "-".join(["long"] * 60),
]


def git_accepts(branch: str) -> bool:
    result = subprocess.run(
        ["git", "check-ref-format", "--branch", branch], capture_output=True, check=False
    )
    return result.returncode == 0


@pytest.mark.parametrize("branch", HOSTILE_BRANCHES)
def test_id_is_a_docker_tag_that_parses_back(branch: str) -> None:
    assert git_accepts(branch), "the test's branch names must be ones git accepts"
    deployment_id = dt.make_id(branch, SHA, MOMENT)
    assert DOCKER_TAG.fullmatch(deployment_id), deployment_id
    part, short_sha, moment = dt.parse_id(deployment_id)
    assert short_sha == SHA[:7]
    assert moment == MOMENT
    assert deployment_id == f"{part}_{SHA[:7]}_20230415123456"
    assert dt.check_branch(branch) == branch


def test_seed_example_id() -> None:
    assert dt.make_id("branch_1", "abc1234", MOMENT) == "branch_1_abc1234_20230415123456"
    assert dt.parse_id("branch_1_abc1234_20230415123456") == ("branch_1", "abc1234", MOMENT)


def test_sanitising_is_readable() -> None:
    assert dt.sanitise_branch("feature/login") == "feature-login"
    assert dt.sanitise_branch("feat/$(id)") == "feat-id-"
    assert dt.sanitise_branch("Ünïcode/🚀") == "n-code-"


def test_long_branches_get_distinct_tags() -> None:
    first = "feature/" + "a" * 200 + "-one"
    second = "feature/" + "a" * 200 + "-two"
    first_id, second_id = (dt.make_id(b, SHA, MOMENT) for b in (first, second))
    assert first_id != second_id
    assert len(first_id) == len(second_id) == 128
    assert DOCKER_TAG.fullmatch(first_id) and DOCKER_TAG.fullmatch(second_id)


def test_branch_that_sanitises_to_nothing_still_gets_a_tag() -> None:
    assert dt.sanitise_branch("🚀") != dt.sanitise_branch("🎉")
    assert DOCKER_TAG.fullmatch(dt.make_id("🚀", SHA, MOMENT))


@pytest.mark.parametrize(
    "branch",
    [
        "has space",
        "a..b",
        "ends.lock",
        "-leading",
        "tilde~1",
        "caret^",
        "colon:x",
        "q?",
        "star*",
        "[bracket",
        "back\\slash",
        "at@{brace",
        "trailing/",
        "trailing.",
        "new\nline",
        "tab\t",
        "double//slash",
        ".hidden",
        "x/.hidden",
    ],
)
def test_branch_names_git_refuses_are_refused(branch: str) -> None:
    assert not git_accepts(branch)
    with pytest.raises(dt.InvalidInput):
        dt.check_branch(branch)


def test_new_id_through_the_cli(cli: Callable[..., Result]) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    result = cli("new-id", "--branch", "feat/$(id)", "--commit", SHA)
    after = datetime.now(timezone.utc)
    assert result.exit_code == 0, result.output
    deployment_id = result.stdout.strip()
    part, short_sha, moment = dt.parse_id(deployment_id)
    assert part == "feat-id-" and short_sha == SHA[:7]
    assert before <= moment <= after


# -- naming a deployment: what a given value may stand for ------------------


def test_a_branch_named_like_a_sha_cannot_stand_in_for_the_commit(
    cli: Callable[..., Result], history: History
) -> None:
    good = history.record("production", verified=True)
    good_sha = ok(cli("get", good, "--field", "commit_sha"))
    for name in (good_sha[:7], good_sha):
        # The attacker's branch is named like the verified commit; its id starts with that.
        impostor = history.record("production", branch=name, verified=True)
        assert impostor.startswith(dt.sanitise_branch(name)[:7])
        for command in (("get",), ("rollback-target", "-e", "production")):
            assert ok(cli(*command, name[:7], "--field", "id")) == good
        assert ok(cli("get", impostor, "--field", "id")) == impostor


def test_an_ambiguous_start_is_refused_even_within_an_environment(
    cli: Callable[..., Result], history: History
) -> None:
    for _ in range(10):  # more matches elsewhere than one page of candidates
        history.record("qa")
    first = history.record("staging")
    second = history.record("staging")
    result = cli("get", "main", "-e", "staging")
    assert result.exit_code == 1
    assert f"main is ambiguous: it matches {first}, {second}" in result.stderr
    assert result.stdout == ""


def test_a_match_in_another_environment_is_refused(
    cli: Callable[..., Result], history: History
) -> None:
    in_qa = history.record("qa", verified=True)
    history.record("staging", verified=True)
    commit = ok(cli("get", in_qa, "--field", "commit_sha"))
    cases = [
        (in_qa[:-2], f"no deployment in staging has an id starting with {in_qa[:-2]}"),
        (commit[:7], f"no deployment in staging has a commit starting with {commit[:7]}"),
        (in_qa, f"{in_qa} is in qa, not staging"),
    ]
    for given, message in cases:
        for command in ("get", "rollback-target"):
            result = cli(command, given, "-e", "staging")
            assert result.exit_code == 1, (command, given, result.output)
            assert message in result.stderr
            assert "qa" in result.stderr
    assert ok(cli("get", in_qa[:-2], "-e", "qa", "--field", "id")) == in_qa


def test_the_id_option_takes_only_a_whole_id(cli: Callable[..., Result], history: History) -> None:
    deployment = history.record("staging", verified=True)
    commit = ok(cli("get", deployment, "--field", "commit_sha"))
    assert ok(cli("get", "--id", deployment, "--field", "id")) == deployment
    for given in (deployment[:-2], commit[:7], commit):
        for command in (("get",), ("verify", "--status", "failed"), ("rollback-target",)):
            result = cli(*command, "--id", given, "-e", "staging")
            assert result.exit_code == 1, (command, given, result.output)
            assert f"no deployment with id {given}" in result.stderr
        assert ok(cli("get", given, "--field", "id")) == deployment
