"""A click test runner that behaves the same on every supported click version."""

from __future__ import annotations

from click.testing import CliRunner


def make_runner() -> CliRunner:
    """A runner that keeps stderr apart from stdout, on click 8.1 and on 8.2+."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click 8.2 removed the option and always separates them
        return CliRunner()
