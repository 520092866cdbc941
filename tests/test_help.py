"""Every ``benbeam`` subcommand's ``--help``: a complete description, help for every flag, readable
choices, and (for the Beam pipelines) the note that Beam options pass through."""

import argparse
import re

import pytest

from bigearthnet_beam.beam_pipeline.cli import COMMANDS, main


class _Captured(BaseException):  # main() turns every Exception into one line and an exit code
    pass


def _parsers(cmd: str, monkeypatch) -> list[argparse.ArgumentParser]:
    """The parser a subcommand builds (and its sub-parsers), caught when it starts parsing."""
    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Captured):
        main([cmd])
    out = []
    todo = list(seen[:1])
    while todo:
        p = todo.pop()
        out.append(p)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo.extend(a.choices.values())
    return out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_flag_has_help_and_the_description_is_whole(cmd, monkeypatch):
    parsers = _parsers(cmd, monkeypatch)
    top = parsers[0]
    assert top.description and top.description.rstrip().endswith((".", ")")), (cmd, top.description)
    for p in parsers:
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert a.help and a.help is not argparse.SUPPRESS, f"{p.prog} {'/'.join(a.option_strings)} has no help"
            if a.choices and not a.metavar:
                shown = "{" + ",".join(map(str, a.choices)) + "}"
                assert not any("," in str(c) for c in a.choices), f"{p.prog} {a.option_strings}: {shown} is unreadable"


@pytest.mark.parametrize("cmd", ["convert", "validate"])
def test_beam_pipelines_say_that_beam_options_pass_through(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"Apache Beam pipeline options .*pass(ed)? through", text), text
