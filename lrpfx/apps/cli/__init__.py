"""The ``lrpfx`` command line: explain images and sentences, check a model's rule coverage,
evaluate maps.

Run ``lrpfx --help`` (or ``python -m lrpfx --help``) for the commands and examples. Everything a
command does is also a function here (:func:`load_model`, :func:`main`), so the CLI can be driven
from Python and tested in-process.

One module a concern:

- :mod:`~lrpfx.apps.cli.app`: the parser and :func:`main` (errors as one line, exit codes);
- :mod:`~lrpfx.apps.cli.explain`, :mod:`~lrpfx.apps.cli.explain_text`,
  :mod:`~lrpfx.apps.cli.check`, :mod:`~lrpfx.apps.cli.evaluate`: one command each (its flags
  and what it does);
- :mod:`~lrpfx.apps.cli.options`: shared flags and the parsing of their values;
- :mod:`~lrpfx.apps.cli.models` and :mod:`~lrpfx.apps.cli.weights`: ``--model`` and
  ``--weights`` (every file read with ``weights_only=True``);
- :mod:`~lrpfx.apps.cli.common`: load, compile, run, with the checks every command needs;
- :mod:`~lrpfx.apps.cli.output`: the output folder, strict JSON, statistics, names.

Exit codes: 0 success; 1 the model cannot be explained (an op without a rule, a capture failure);
2 a usage error (unknown model, unreadable image, bad target, ...), reported as one line on
stderr without a traceback.
"""

from lrpfx.apps.cli.app import build_parser, main
from lrpfx.apps.cli.errors import CLIError
from lrpfx.apps.cli.models import LoadedModel, load_model
from lrpfx.apps.cli.options import parse_rule_options, parse_target, resolve_device

# bench/speed.py parses its KEY=VALUE options with the CLI's parser under this older name
_rule_options = parse_rule_options

__all__ = ["CLIError", "LoadedModel", "build_parser", "load_model", "main", "parse_rule_options",
           "parse_target", "resolve_device"]
