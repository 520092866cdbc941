"""Every flag of every command, fed hostile values by its type: one line on stderr, exit 2.

Built by construction: each command's parser is captured as the command builds it (the
command runs until it parses its arguments, and stops there), so a new command or a new
flag is probed without editing this file. A flag that takes a value must be checked by a
type of ``transforms.flagtypes`` (numbers, fractions, windows, outputs), by ``choices``, or
be free text; a bare ``type=int`` / ``type=float`` (which takes ``nan``, ``inf`` and
``１２``) fails ``test_every_value_flag_has_a_checked_type``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from bigearthnet_beam.beam_pipeline import cli
from bigearthnet_beam.transforms import flagtypes


class _Captured(Exception):
    pass


def _capture(cmd: str) -> list[argparse.ArgumentParser]:
    """The parser(s) ``benbeam CMD`` builds: the command runs up to its parse, which stops it."""
    got: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_known_args

    def grab(self, args=None, namespace=None):
        got.append(self)
        raise _Captured

    argparse.ArgumentParser.parse_known_args = grab
    try:
        cli._dispatch(cmd, [])
    except _Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_known_args = real
    assert got, f"benbeam {cmd} parsed no arguments"
    parsers = [got[0]]
    for action in got[0]._actions:  # `launch RUNNER ...`: each runner's own parser
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    return parsers


PARSERS = {cmd: _capture(cmd) for cmd in cli.COMMANDS}
FLAGS = [
    (cmd, p, a)
    for cmd, ps in PARSERS.items()
    for p in ps
    for a in p._actions
    if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)
]
KNOWN_TYPES = {t for kind in flagtypes.FLAG_TYPES.values() for t in kind}
HOSTILE_NUMBERS = ["nan", "inf", "-inf", "-1", "", " ", "１２", "1_0", "0x10", "9" * 30, "1e400", "-0.5"]
REFUSE_ZERO = {
    flagtypes.positive_int,
    flagtypes.chunk_size,
    flagtypes.learning_rate,
    flagtypes.sample_fraction,
}
HOSTILE_OUTPUTS = ["", " ", "s3:/bucket/x", "http://169.254.169.254/x", "file:///etc/x", "ftp://u:p@h/x", "a\x00b"]
HOSTILE_TEXT = ["", "nan", "é" * 300, "\x00", "-1", "s3:/x", "../../etc/passwd"]


def _id(flag) -> str:
    cmd, p, a = flag
    return f"{p.prog.replace('benbeam ', '')}:{a.option_strings[0]}"


def _parse(parser, argv, capsys) -> tuple[int | None, str]:
    """(exit code or None when accepted, stderr) of parsing ``argv`` alone."""
    capsys.readouterr()
    try:
        parser.parse_known_args(argv)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    return None, capsys.readouterr().err


def _argv(action, value) -> list[str]:
    n = action.nargs if isinstance(action.nargs, int) else 1
    return [action.option_strings[0], *([value] * n)]


def test_every_command_is_probed():
    assert set(PARSERS) == set(cli.COMMANDS) and len(FLAGS) > 100


@pytest.mark.parametrize("flag", FLAGS, ids=_id)
def test_every_value_flag_has_a_checked_type(flag):
    _, _, a = flag
    assert a.type is None or a.type in KNOWN_TYPES or a.choices is not None, (
        f"{a.option_strings[0]} has type {a.type!r}: use a transforms.flagtypes type (or choices)"
    )
    if a.choices is not None and a.type is not None:
        assert a.type in KNOWN_TYPES, f"{a.option_strings[0]}: choices with type {a.type!r}"


def _typed(kinds):
    wanted = {t for k in kinds for t in flagtypes.FLAG_TYPES[k]}
    return [f for f in FLAGS if f[2].type in wanted and f[2].choices is None]


@pytest.mark.parametrize("flag", _typed(["integer", "number", "fraction"]), ids=_id)
def test_hostile_numbers_are_one_line_and_exit_2(flag, capsys):
    _, parser, a = flag
    values = HOSTILE_NUMBERS + (["0"] if a.type in REFUSE_ZERO else [])
    for v in values:
        code, err = _parse(parser, _argv(a, v), capsys)
        assert code == 2, (a.option_strings[0], v, err)
        assert err.count("\n") == 1 and err.startswith(f"{parser.prog}: error: argument {a.option_strings[0]}"), err
        assert "Traceback" not in err


@pytest.mark.parametrize("flag", _typed(["output"]), ids=_id)
def test_hostile_outputs_are_one_line_and_exit_2(flag, capsys):
    _, parser, a = flag
    values = HOSTILE_OUTPUTS + (["s3://bucket/x", "gs://bucket/x"] if a.type is flagtypes.local_output else [])
    for v in values:
        code, err = _parse(parser, _argv(a, v), capsys)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (a.option_strings[0], v, err)
        assert ":p@" not in err  # credentials in a URL are never echoed


@pytest.mark.parametrize("flag", [f for f in FLAGS if f[2].choices is not None], ids=_id)
def test_values_outside_the_choices_are_one_line_and_exit_2(flag, capsys):
    _, parser, a = flag
    for v in ["", "nan", "-1", "１", "é" * 200]:
        if v in [str(c) for c in a.choices]:
            continue
        code, err = _parse(parser, _argv(a, v), capsys)
        assert code == 2 and err.count("\n") == 1, (a.option_strings[0], v, err)


@pytest.mark.parametrize("flag", [f for f in FLAGS if f[2].type is None and f[2].choices is None], ids=_id)
def test_free_text_flags_never_crash_the_parser(flag, capsys):
    _, parser, a = flag
    for v in HOSTILE_TEXT:
        code, err = _parse(parser, _argv(a, v), capsys)
        assert code in (None, 2) and "Traceback" not in err, (a.option_strings[0], v, err)
        if code == 2:
            assert err.count("\n") == 1, err


@pytest.mark.parametrize("cmd", cli.COMMANDS)
def test_an_unknown_flag_is_one_line_and_exit_2(cmd, capsys):
    for parser in PARSERS[cmd]:
        code, err = _parse(parser, ["--no_such_flag_é", "1"], capsys)
        if code is None:  # parse_known_args: the command itself refuses what Beam does not know
            continue
        assert code == 2 and err.count("\n") == 1, err


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv,flag",
    [
        (["synth", "--out", "{tmp}/o", "--n", "nan"], "--n"),
        (["synth-tile", "--out", "s3://bucket/x"], "--out"),
        (["index", "--meta", "m", "--out", "{tmp}/i.parquet", "--s3_endpoint_url", "", "--anon"], None),
        (["validate", "--meta", "m", "--out", "{tmp}/v.json", "--frac", "inf"], "--frac"),
        (["convert", "--meta", "m", "--out", "{tmp}/o", "--decode_timeout", "-1"], "--decode_timeout"),
        (["train", "--data", "d", "--save", "{tmp}/m.keras", "--lr", "inf"], "--lr"),
        (["train", "--data", "d", "--save", "{tmp}/m.keras", "--lr", "-0.1"], "--lr"),
        (["evaluate", "--model", "m", "--data", "d", "--out", "{tmp}/e", "--threshold", "nan"], "--threshold"),
        (["predict", "--model", "m", "--tile", "t", "--out", "{tmp}/p", "--overlap", "119"], "--overlap"),
        (["predict", "--model", "m", "--tile", "t", "--out", "{tmp}/p", "--chunk_size", "100000000"], "--chunk_size"),
        (["launch", "dask", "--dask_client_address", "h:1", "--partition_size", "0"], "--partition_size"),
    ],
)
def test_the_real_command_line_refuses_in_one_line_and_leaves_nothing(argv, flag, tmp_path):
    """Through the installed entry point, in a process of its own: exit 2, one line, no
    traceback, nothing written (no --out, no lock, no temporary file)."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "bigearthnet_beam", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    own = [line for line in r.stderr.splitlines() if line.startswith("benbeam")]
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(own) == 1, r.stderr[-2000:]
    if flag:
        assert flag in own[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"] and not list((tmp_path / "tmp").iterdir())
