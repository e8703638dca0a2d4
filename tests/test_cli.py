"""The command line's contract for bad input: a short usage message and exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from barkit.cli import EXIT_USER_ERROR, main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["route", "merged", "--out", "o", "--no-such-option"], "No such option: --no-such-option"),
        (["route", "merged", "--out", "o", "--steps", "many"], "Invalid value for '--steps'"),
        (["no-such-command"], "No such command"),
        (
            [
                "train",
                "b",
                "--stage",
                "sft",
                "--domain",
                "tool_use",
                "--out",
                "o",
                "--synthetic",
                "invented_calls=lots",
            ],
            "expected NAME=RATIO",
        ),
        (
            ["train", "b", "--stage", "sft", "--domain", "tool_use", "--out", "o", "--synthetic", "nope=1"],
            "unknown synthetic data 'nope'",
        ),
        (
            [
                "train",
                "b",
                "--stage",
                "sft",
                "--domain",
                "tool_use",
                "--out",
                "o",
                "--augment",
                "tool_calls=x",
            ],
            "expected NAME=RATIO, e.g. tool_calls=2",
        ),
    ],
)
def test_usage_errors_exit_2_without_traceback(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main([a if a != "o" else str(tmp_path / "o") for a in argv]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "route" in capsys.readouterr().out
