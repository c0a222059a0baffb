"""Every ndfs command explains itself: `--help` has a description, help for every argument, and examples
that are real command lines of that command."""

import argparse
import shlex

import pytest

from ndfs.cli.commands import build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


COMMANDS = sorted(_commands())


def _help(args, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*args, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _examples(text: str) -> list[str]:
    """The command lines under 'examples:' (comments and shell redirections cut off)."""
    assert "\nexamples:\n" in text
    lines = text.split("\nexamples:\n", 1)[1].splitlines()
    return [ln.split("#")[0].split("|")[0].split(">")[0].strip() for ln in lines if ln.strip()]


def test_the_commands_are_all_there():
    assert {"demo", "mount", "umount", "ls", "info", "cat", "cache", "outbox", "serve", "export", "import",
            "count", "annotate"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_a_description_and_help_for_every_argument(name, capsys):
    text = _help([name], capsys)
    parser = _commands()[name]
    description = " ".join((parser.description or "").split())
    assert len(description.split()) >= 8, f"ndfs {name} has no description (a sentence or more)"
    assert " ".join(text.split()).count(description) == 1
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help and action.help != argparse.SUPPRESS, f"ndfs {name}: {action.dest} has no help"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_examples_that_parse_as_that_command(name, capsys):
    examples = _examples(_help([name], capsys))
    assert examples, f"ndfs {name} --help shows no example"
    for line in examples:
        words = shlex.split(line)
        assert words[0] == "ndfs", line
        try:
            args = build_parser().parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"the example {line!r} of ndfs {name} does not parse")
        assert args.func is _commands()[name].get_default("func"), line


def test_ndfs_help_says_where_to_start(capsys):
    text = _help([], capsys)
    assert "start here:" in text and "ndfs mount --help" in text
