"""What every command of the project (node, signer, wallet, bridge, settlement, faucet) does
the same way at its edges, so that an operator meets one behaviour everywhere:

* a usage error is one line on stderr and exit status 2 - never argparse's usage block,
  which buries the one line that says what was wrong;
* an error message is one line, whatever newlines the exception carried;
* a reader that goes away (``status | head``) ends the command quietly - never a
  BrokenPipeError traceback from the interpreter's last flush of stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2) instead of the usage block;
    its sub-commands' parsers are of the same class (argparse's default for subparsers)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(what: BaseException | str) -> str:
    """``what`` as one line: its words joined by single spaces (an exception with no message
    says its type instead)."""
    text = " ".join(str(what).split())
    return text or (type(what).__name__ if isinstance(what, BaseException) else "")


def stdout_closed() -> None:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's
    final flush cannot raise again (the command then ends with the status it chooses)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
