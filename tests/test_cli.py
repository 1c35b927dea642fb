"""The `facemargin` command: every subcommand has useful help, and the CLI never loads torch."""

from __future__ import annotations

import os
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


def test_the_command_table_names_every_subcommand_once():
    from service.cli import COMMANDS, build_parser

    parser = build_parser()
    registered = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    listed = [name for names in COMMANDS.values() for name in names]
    assert sorted(listed) == sorted(registered)


@pytest.mark.parametrize(
    ("argv", "loaded", "not_loaded"),
    [
        (["serve", "--help"], "service.cli", ("training.cli", "export.cli")),
        (["hash-key", "ops", "--key", "k"], "service.cli", ("training.cli", "export.cli")),
        (["inspect", "--help"], "export.cli", ("training.cli",)),
        (["backbones", "--help"], "training.cli", ("export.cli",)),
    ],
)
def test_a_subcommand_loads_only_its_own_module(argv, loaded, not_loaded):
    code = (
        "import sys\nfrom service.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"assert {loaded!r} in sys.modules\n"
        f"assert not [m for m in {not_loaded!r} if m in sys.modules], sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("argv", "works"),
    [
        (["train", "--data", ".", "--out", "x"], False),
        (["evaluate", "x.pt"], False),
        (["--version"], True),
        (["prepare", "--help"], True),
        (["inspect", "--help"], True),
    ],
)
def test_the_serving_install_says_which_commands_need_the_train_extra(argv, works, tmp_path):
    """Without torch (the default install), a training command ends in one line naming the
    extra, never a traceback; serving-side commands and --version work."""
    code = (
        "import sys; sys.modules['torch'] = None\n"  # what an install without torch looks like
        "from service.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    if works:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert done.stderr.strip().count("\n") == 0
        assert "pip install 'facemargin[train]'" in done.stderr


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("models/yunet.onnx", "has no facemargin contract"),  # a detector given as embedder
        ("models/no-such-model.onnx", "no such model file"),
        ("README.md", "not a loadable ONNX model"),
    ],
)
def test_serve_refuses_a_model_it_cannot_serve_in_one_line(model, says, tmp_path):
    """Before uvicorn starts: one line naming the file and why, exit status 1, no traceback."""
    from tests.conftest import REPO

    env = {
        **os.environ,
        "FACEMARGIN_MODEL_PATH": str(REPO / model),
        "FACEMARGIN_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in result.stderr
    assert lines[0].startswith("facemargin serve: error:")
