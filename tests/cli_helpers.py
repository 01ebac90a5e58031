"""Run the command line in-process, as a user would run it (parse errors, EdgecapError -> one line and exit 2)."""

from __future__ import annotations

from edgecap.cli import main


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `edgecap ARGV`."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
