"""The vrec command tree: one table, every command in ``vrec --help``, every --help answers."""

from __future__ import annotations

import re

import pytest

from vrec_tools import cli


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code or 0


def test_help_lists_every_command(capsys):
    assert _exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in cli.COMMANDS:
        assert f"vrec {cmd.path} " in out, cmd.path
    for group in {cmd.words[0] for cmd in cli.COMMANDS}:
        assert re.search(rf"^ +{re.escape(group)}\b", out, re.M), group


def test_commands_are_unique_and_resolvable():
    paths = [cmd.path for cmd in cli.COMMANDS]
    assert len(paths) == len(set(paths))
    for cmd in cli.COMMANDS:
        module, _, name = cmd.handler.partition(":")
        assert module and name, cmd.path
        if isinstance(cmd.args, str):
            assert not cmd.argv, cmd.path


@pytest.mark.parametrize("path", [cmd.path for cmd in cli.COMMANDS])
def test_each_command_answers_help(path, capsys):
    assert _exit_code([*path.split(), "--help"]) == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("group", sorted(cli.GROUPS))
def test_each_group_lists_its_commands(group, capsys):
    assert _exit_code([group, "--help"]) == 0
    out = capsys.readouterr().out
    for cmd in cli.COMMANDS:
        if cmd.words[0] == group and len(cmd.words) > 1:
            assert cmd.words[1] in out, cmd.path


def test_the_full_parser_builds():
    parser = cli.build_parser(load=True)  # every command's arguments, no clashes
    args = parser.parse_args(["broker", "status", "--json"])
    assert args._command.path == "broker status" and args.json and args.broker_command == "status"


def test_argv_commands_get_the_words_after_them():
    train = next(c for c in cli.COMMANDS if c.path == "train classify")
    assert cli._split(train, ["-v", "train", "classify", "--seed", "1"]) == (
        ["-v", "train", "classify"],
        ["classify", "--seed", "1"],
    )
    cat = next(c for c in cli.COMMANDS if c.path == "eval catalogue")
    assert cli._selected(["eval", "catalogue", "--items", "x"]) == cat
    assert cli._split(cat, ["eval", "catalogue", "--items", "x"])[1] == ["--items", "x"]
    assert cli._selected(["eval", "--items", "x"]).path == "eval"


def test_unknown_command_fails():
    assert _exit_code(["no-such-command"]) == 2
    assert _exit_code(["broker"]) == 2  # a group needs its subcommand
