"""What the CLI reports instead of a traceback, and with which exit code.

Exit codes: 0 success; 1 the model cannot be explained (an op without a rule, a capture failure,
a map that is not finite); 2 a usage error (unknown model, unreadable image or weights, bad flag,
a model whose outputs are not finite, ...). Either way the user sees one line on stderr.
"""

from __future__ import annotations

__all__ = ["CLIError", "ExplainError", "first_line"]


class CLIError(Exception):
    """A user error: the CLI prints it as one line and exits with code 2."""

    exit_code = 2


class ExplainError(CLIError):
    """The input is fine but lrpfx cannot explain the model: one line, exit code 1."""

    exit_code = 1


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none)."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(e).__name__
