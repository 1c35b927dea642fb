"""The `facemargin` command: every subcommand has useful help, and the CLI never loads torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli import main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "prepare"),
        (["prepare"], "Resumable: rerun the same command to continue"),
        (["export"], "detector"),
        (["export", "detector"], "pip download facenet-pytorch==2.6.0"),
    ],
)
def test_help_is_useful(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert expected in " ".join(capsys.readouterr().out.split())


def test_unknown_command_fails_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_and_preprocessing_do_not_import_torch():
    code = (
        "import sys; from service.cli import build_parser; build_parser();"
        "import service.vision.preprocess, service.vision.mtcnn, service.vision.alignment, service.vision.embedder;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
