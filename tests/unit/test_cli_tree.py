"""The vrec command tree: one table, every command in ``vrec --help``, every --help answers, and
no command parses its own command line below the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from vrec_tools import cli

REPO = Path(__file__).resolve().parents[2]


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
            module, _, name = cmd.args.partition(":")
            assert module and name, cmd.path


def _function(ref: str) -> ast.FunctionDef:
    """The definition of ``module:function``, read from the source (nothing imported)."""
    module, _, name = ref.partition(":")
    path = REPO / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{ref}: no such function")


def _required_params(fn: ast.FunctionDef) -> list[str]:
    params = fn.args.args
    return [a.arg for a in params[: len(params) - len(fn.args.defaults)]]


def _parses(fn: ast.FunctionDef) -> bool:
    """Does ``fn`` build or run a parser of its own?"""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("ArgumentParser", "parse_args", "parse_known_args"):
                return True
    return False


@pytest.mark.parametrize("path", [cmd.path for cmd in cli.COMMANDS])
def test_each_command_takes_its_arguments_from_the_tree(path):
    """A handler takes the tree's Namespace (not an argv to parse), and a command with its own
    arguments declares them for the tree (``add_args(parser)`` or a tuple of ``arg``)."""
    cmd = next(c for c in cli.COMMANDS if c.path == path)
    handler = _function(cmd.handler)
    assert _required_params(handler) == ["args"] and not _parses(handler), cmd.handler
    if isinstance(cmd.args, str):
        adds = _function(cmd.args)
        assert len(_required_params(adds)) == 1 and not _parses(adds), cmd.args
    else:
        assert all(isinstance(a, cli.Arg) for a in cmd.args)
    assert not hasattr(cmd, "argv")  # no row hands its command line to the module


def _main_blocks(tree: ast.Module) -> list[int]:
    return [
        node.lineno
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and any(
            isinstance(side, ast.Name) and side.id == "__name__"
            for side in (node.test.left, *node.test.comparators)
        )
    ]


def test_no_library_module_has_a_main_block():
    """Every command runs through ``vrec``: only vrec_tools/cli.py (``python -m vrec_tools.cli``,
    how the harness starts workers) has an ``if __name__ == "__main__"`` block."""
    found = []
    for pkg in ("streams", "encoders", "vrec_tools"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path == REPO / "vrec_tools" / "cli.py":
                continue
            lines = _main_blocks(ast.parse(path.read_text(), str(path)))
            found += [f"{path.relative_to(REPO)}:{n}" for n in lines]
        assert not list((REPO / pkg).rglob("__main__.py")), pkg
    assert found == []
    assert _main_blocks(ast.parse((REPO / "vrec_tools" / "cli.py").read_text())) != []


def test_the_checks_see_a_command_of_its_own():
    own = ast.parse(
        "def main(argv):\n    ap = argparse.ArgumentParser()\n    return run(ap.parse_args(argv))\n"
    ).body[0]
    assert _parses(own) and _required_params(own) == ["argv"]
    assert not _parses(_function("vrec_tools.eval.cli:run"))


def test_the_main_block_check_sees_one():
    assert _main_blocks(ast.parse('if __name__ == "__main__":\n    main()\n')) == [1]
    assert _main_blocks(ast.parse('if "__main__" == __name__:\n    main()\n')) == [1]
    assert _main_blocks(ast.parse("if x == 1:\n    pass\n")) == []


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


@pytest.mark.parametrize(
    ("argv", "path", "expect"),
    [
        (["eval", "--items", "i.csv", "--set", "k=1"], "eval", {"items": Path("i.csv"), "k": 12}),
        (
            ["eval", "catalogue", "--items", "i.csv", "--label", "x", "--group", ""],
            "eval catalogue",
            {"items": Path("i.csv"), "label": "x", "group": "", "queries": 6},
        ),
        (["eval", "baselines", "--baseline", "all"], "eval baselines", {"json": None}),
        (["bench", "encoder", "-q", "--n", "3"], "bench encoder", {"quiet": True, "n": 3}),
        (
            ["-v", "train", "classify", "--map", "hm", "--seed", "1"],
            "train classify",
            {"map_spec": "hm", "seed": 1, "epochs": 200, "verbose": True},
        ),
        (["cache", "fill", "--device", "cpu"], "cache fill", {"batch": 32, "device": "cpu"}),
    ],
)
def test_commands_that_had_their_own_parser_parse_in_the_tree(argv, path, expect):
    args = cli.build_parser(load=cli._selected(argv)).parse_args(argv)
    assert args._command.path == path
    assert {k: getattr(args, k) for k in expect} == expect
    assert cli._selected(["eval", "--items", "x"]).path == "eval"


def test_unknown_command_fails():
    assert _exit_code(["no-such-command"]) == 2
    assert _exit_code(["broker"]) == 2  # a group needs its subcommand
