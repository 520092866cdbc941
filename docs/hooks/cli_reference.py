"""MkDocs hook: the CLI reference page (``cli.md``), generated at build time from the real parsers.

For every command in ``beam_pipeline/cli.py``'s ``COMMANDS`` (and every sub-command of those with
sub-parsers, such as ``launch dataflow``), the parser the command builds is caught when it starts
parsing and its ``format_help()`` — exactly what ``benbeam CMD --help`` prints — goes into the
page. That runs in a child Python process (``python cli_reference.py``: the CLI sets environment
variables and logging on import, which the MkDocs process should not inherit), with a fixed
``COLUMNS`` so the page does not depend on the terminal that builds it. Nothing is hand-copied:
a flag added to a parser is on the page at the next build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PAGE = "cli.md"
WIDTH = "100"


def collect() -> list[tuple[str, str]]:
    """``[(prog, help text)]`` for every command and sub-command, in ``COMMANDS`` order (child process)."""
    import argparse

    from bigearthnet_beam.beam_pipeline.cli import COMMANDS, main

    class _Caught(BaseException):  # main() turns every Exception into one line and an exit code
        pass

    seen: list[argparse.ArgumentParser] = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Caught

    argparse.ArgumentParser.parse_known_args = capture  # this process only builds pages
    out = []
    for cmd in COMMANDS:
        seen.clear()
        try:
            main([cmd])
        except _Caught:
            pass
        if not seen:
            raise RuntimeError(f"benbeam {cmd} built no argument parser")
        todo = [seen[0]]
        while todo:
            p = todo.pop(0)
            out.append((p.prog, p.format_help()))
            for a in p._actions:
                if isinstance(a, argparse._SubParsersAction):
                    todo.extend(a.choices.values())
    return out


def render(helps: list[tuple[str, str]], top: str) -> str:
    """The Markdown page: the ``benbeam --help`` overview, then one section per parser."""
    lines = [
        "# Command-line reference",
        "",
        "Generated when the site is built, from the argument parsers themselves",
        "(`docs/hooks/cli_reference.py` prints every parser's `--help`); nothing here is copied by hand.",
        "Exit codes and what to do about failures: [Troubleshooting](troubleshooting.md).",
        "",
        "## benbeam",
        "",
        "```text",
        top.rstrip(),
        "```",
        "",
    ]
    for prog, text in helps:
        lines += [f"## {prog}", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


def build_page() -> str:
    """Run ``collect`` in a child process and render the page."""
    env = dict(os.environ, COLUMNS=WIDTH, BENBEAM_CLI_REFERENCE="1")
    res = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"the CLI reference could not be generated:\n{res.stderr[-4000:]}")
    data = json.loads(res.stdout)
    return render([tuple(h) for h in data["helps"]], data["top"])


def on_files(files, config):
    """MkDocs hook: add the generated ``cli.md`` to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=build_page()))
    return files


if __name__ == "__main__":
    import contextlib
    import io

    from bigearthnet_beam.beam_pipeline.cli import main as _main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _main(["--help"])
    helps = collect()
    sys.stdout.write(json.dumps({"top": buf.getvalue(), "helps": helps}))
