"""The default table is drawn without importing tabulate, byte for byte as tabulate draws it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from tabulate import tabulate

import deployment_tracker as dt

ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
any_text = st.text(max_size=12)


def drawn_by_tabulate(rows: list[list[str]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


@st.composite
def tables(draw: st.DrawFn, cells: st.SearchStrategy[str]) -> tuple[list[list[str]], list[str]]:
    headers = draw(st.lists(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), min_size=1, max_size=5))
    rows = draw(st.lists(st.lists(cells, min_size=len(headers), max_size=len(headers)), max_size=6))
    return rows, headers


@settings(max_examples=400, deadline=None)
@given(tables(ascii_text))
@example(([], ["id", "environment"]))
@example(([["", ""], ["", ""]], ["a", "b"]))
@example(([[" lead", "trail "], ["1e5", "-3"]], ["a", "b"]))
@example(([["True", "None"], ["0x1f", "nan"]], ["a", "b"]))
def test_printable_ascii_tables_match_tabulate(table: tuple[list[list[str]], list[str]]) -> None:
    rows, headers = table
    for output_format in ("table", "simple"):
        assert dt.render_table(rows, headers, output_format) == drawn_by_tabulate(rows, headers)


@settings(max_examples=200, deadline=None)
@given(tables(any_text))
@example(([["ü", "tab\there"], ["line\nbreak", "\x1b[31mred\x1b[0m"]], ["a", "b"]))
@example(([["漢字", "x"]], ["a", "b"]))
def test_any_other_text_is_left_to_tabulate(table: tuple[list[list[str]], list[str]]) -> None:
    rows, headers = table
    assert dt.render_table(rows, headers, "table") == drawn_by_tabulate(rows, headers)


def test_other_formats_are_tabulate_s() -> None:
    rows, headers = [["main_abc1234_20260101000000", "verified"]], ["id", "status"]
    for output_format in ("github", "grid", "psql", "plain"):
        expected = tabulate(rows, headers=headers, tablefmt=output_format, disable_numparse=True)
        assert dt.render_table(rows, headers, output_format) == expected


def test_reading_commands_with_table_output_do_not_import_tabulate(tmp_path: Path) -> None:
    """A real process: record, then show it as the default table, with tabulate unimported."""
    db = str(tmp_path / "deployments.db")
    record, _ = dt.record_deployment(
        dt.connect(db, write=True), environment="staging", branch="main", commit_sha="a" * 40
    )
    probe = (
        "import sys, deployment_tracker as dt\n"
        "try:\n"
        "    dt.cli(sys.argv[1:], prog_name='deployment-tracker')\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "print('tabulate' in sys.modules)\n"
    )
    for command in (
        ["latest", "--environment", "staging", "--status", "any"],
        ["get", "--id", record["id"]],
        ["list"],
    ):
        result = subprocess.run(
            [sys.executable, "-c", probe, "--db", db, *command],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        *table, imported = result.stdout.splitlines()
        assert record["id"] in "\n".join(table)
        assert imported == "False", command
