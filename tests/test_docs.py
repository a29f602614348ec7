"""Every code block in README.md and docs/*.md is run or checked, so the docs cannot rot.

How a markdown file is tested (new ``docs/*.md`` files are picked up automatically):

- A `````python`` block runs, in order, in one namespace per file, like a notebook: a block may
  use what an earlier block of the same file defined. A block written with ``>>>`` prompts runs
  as a doctest: its printed output must match (``...`` matches anything).
- A setup comment runs at its place in that namespace and is not shown to readers. Use it for
  the tiny random-init models and inputs a block needs::

      <!-- doc-test: setup
      model = torch.nn.Linear(3, 2)
      -->

  ``<!-- doc-test: check ... -->`` is the same, after a block: hidden assertions that what the
  text promises about the block's result holds.

- A `````bash`` block is checked, not run: each command must be one this file knows how to
  check: ``bash scripts/X.sh`` (the script exists and parses), ``pip install -e ".[extra]"``
  (the extras exist), ``lrpfx SUB ...`` / ``python -m MODULE ...`` / ``python FILE.py ...`` /
  ``torchrun ... -m MODULE ...`` (the command's ``--help`` works and lists every ``--flag`` the
  line uses).
- In a `````console`` block (or any shell block with ``$ `` prompts) only the ``$ `` lines are
  commands.
- `````text`` blocks are not code (diagrams, trees, output); any other language, or none, fails.
- ``<!-- doc-test: skip REASON -->`` right before a block skips it; the skip and its reason show
  in pytest's summary (``-ra``), so skipped blocks stay counted.

Beyond code blocks: every ``lrpfx.name`` in inline code resolves (without the deprecated old
paths), every repository path in inline code exists, relative links and their ``#anchors``
resolve, and ``docs/architecture.md`` lists exactly the files in ``lrpfx/``.
"""

from __future__ import annotations

import contextlib
import doctest
import functools
import glob
import importlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHON_LANGS = {"python", "py"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
TEXT_LANGS = {"text", "txt"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(?P<what>\w+)(?P<rest>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block (or setup comment) of a markdown file; ``line`` is 1-based."""

    path: Path
    line: int
    lang: str
    code: str
    skip: str | None = None

    @property
    def name(self) -> str:
        where = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{where}:{self.line}"


def parse(path: Path) -> tuple[list[Block], list[str]]:
    """The blocks of one markdown file, in order, and the problems found while parsing."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    problems: list[str] = []
    skip: str | None = None
    i = 0
    while i < len(lines):
        directive = DIRECTIVE.match(lines[i])
        fence = FENCE.match(lines[i])
        if directive:
            what, rest = directive["what"], directive["rest"]
            if what == "skip":
                reason = rest.split("-->")[0].strip()
                if not reason or "-->" not in rest:
                    problems.append(f"{path.name}:{i + 1}: write <!-- doc-test: skip REASON -->")
                skip = reason or "no reason given"
                i += 1
            elif what in ("setup", "check"):
                end = next((j for j in range(i, len(lines)) if "-->" in lines[j]), None)
                if end is None:
                    problems.append(f"{path.name}:{i + 1}: setup comment never closed (-->)")
                    break
                body = lines[i + 1:end + 1]  # the closing line may hold code before -->
                if body:
                    body[-1] = body[-1].split("-->")[0]
                blocks.append(Block(path, i + 2, "setup", "\n".join(body)))
                i = end + 1
            else:
                problems.append(f"{path.name}:{i + 1}: unknown doc-test directive {what!r}")
                i += 1
        elif fence:
            indent, marker = len(fence["indent"]), fence["fence"]
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j].strip().startswith(marker)
                        and lines[j].strip() == marker[0] * len(lines[j].strip())), None)
            if end is None:
                problems.append(f"{path.name}:{i + 1}: code block never closed")
                break
            body = [ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[i + 1:end]]
            blocks.append(Block(path, i + 2, fence["lang"].lower(), "\n".join(body), skip))
            skip = None
            i = end + 1
        else:
            i += 1
    if skip is not None:
        problems.append(f"{path.name}: a skip comment is not followed by a code block")
    return blocks, problems


PARSED = {path: parse(path) for path in DOCS}
ALL = [b for blocks, _ in PARSED.values() for b in blocks]


def _ids(blocks: list[Block]) -> list[str]:
    return [b.name for b in blocks]


# --- python blocks ------------------------------------------------------------------------

class _Notebook:
    """One namespace per markdown file; blocks run once, in file order."""

    def __init__(self) -> None:
        self.namespaces: dict[Path, dict[str, Any]] = {}
        self.done: dict[Path, int] = {}
        self.failed: dict[Path, str] = {}

    def run_through(self, block: Block, workdir: Path) -> None:
        runnable = [b for b in PARSED[block.path][0]
                    if b.lang == "setup" or (b.lang in PYTHON_LANGS and b.skip is None)]
        upto = runnable.index(block)
        ns = self.namespaces.setdefault(block.path, {"__name__": "__doc_test__"})
        while self.done.get(block.path, 0) <= upto:
            k = self.done.get(block.path, 0)
            if block.path in self.failed:
                pytest.fail(f"an earlier block of this file failed: {self.failed[block.path]}")
            self.done[block.path] = k + 1
            try:
                run_python(runnable[k], ns, workdir)
            except NameError as e:
                self.failed[block.path] = runnable[k].name
                line = next((f.lineno for f in traceback.extract_tb(e.__traceback__)
                             if f.filename == str(block.path)), runnable[k].line)
                pytest.fail(f"{block.path.name}:{line}: {e}. A block sees only what earlier "
                            "blocks of its file define: give it what it needs in a hidden "
                            "<!-- doc-test: setup ... --> comment before it (see the docstring "
                            "of tests/test_docs.py)")
            except BaseException:
                self.failed[block.path] = runnable[k].name
                raise


def run_python(block: Block, ns: dict[str, Any], workdir: Path) -> None:
    """Run ``block`` in ``ns``; tracebacks point at the markdown file's own line numbers.
    A block written as a doctest (``>>>`` prompts) runs as one, its printed output compared."""
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "explained in eval mode"
            if block.code.lstrip().startswith(">>>"):
                run_doctest(block, ns)
            else:
                exec(compile("\n" * (block.line - 1) + block.code, str(block.path), "exec"), ns)
    finally:
        os.chdir(cwd)


def run_doctest(block: Block, ns: dict[str, Any]) -> None:
    test = doctest.DocTestParser().get_doctest(block.code, ns, block.name, str(block.path),
                                               block.line - 1)
    report = io.StringIO()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=report.write, clear_globs=False)
    assert not result.failed, report.getvalue()


@pytest.fixture(scope="module")
def notebook() -> _Notebook:
    return _Notebook()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docs")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")


PYTHON_BLOCKS = [b for b in ALL if b.lang in PYTHON_LANGS | {"setup"} and b.skip is None]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=_ids(PYTHON_BLOCKS))
def test_python_block(block: Block, notebook: _Notebook, workdir: Path) -> None:
    notebook.run_through(block, workdir)


SKIPPED = [b for b in ALL if b.skip is not None]

if SKIPPED:  # (an empty parameter list would show as a skip of its own)
    @pytest.mark.parametrize("block", SKIPPED, ids=_ids(SKIPPED))
    def test_skipped_block(block: Block) -> None:
        pytest.skip(f"{block.name}: {block.skip}")


# --- shell blocks -------------------------------------------------------------------------

PYTHONS = {"python", "python3", ".venv/bin/python"}


@functools.cache
def help_text(*argv: str) -> str:
    """What ``python ARGV --help`` prints, run in this process (a subprocess per command would
    import torch again each time); fails unless it exits with status 0."""
    out = io.StringIO()
    saved = sys.argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:], "--help"]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = [argv[0], *argv[1:], "--help"]
                runpy.run_path(argv[0], run_name="__main__")
        status: object = 0
    except SystemExit as exit_:
        status = exit_.code
    finally:
        sys.argv = saved
    assert status in (0, None), f"`python {' '.join(argv)} --help` failed:\n{out.getvalue()}"
    return out.getvalue()


def check_flags(argv: tuple[str, ...], args: list[str]) -> None:
    text = help_text(*argv)
    for word in args:
        flag = word.split("=")[0]
        if re.match(r"^--?[A-Za-z]", flag):
            assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", text), (
                f"`{flag}` is not an option of `python {' '.join(argv)}`")


def check_python(args: list[str]) -> None:
    """``python -m MODULE ARGS`` or ``python FILE.py ARGS``."""
    if args[:1] == ["-m"]:
        module, rest = args[1], args[2:]
        if module == "pip":
            return check_pip(rest)
        if module == "lrpfx" and rest and not rest[0].startswith("-"):
            return check_flags(("-m", "lrpfx", rest[0]), rest[1:])
        return check_flags(("-m", module), rest)
    script = REPO / args[0]
    assert script.is_file(), f"no script {args[0]}"
    check_flags((str(script),), args[1:])


def check_pip(args: list[str]) -> None:
    assert args[:2] == ["install", "-e"] and len(args) == 3, (
        f"only `pip install -e .[extras]` is checked, not {args}: mark the block skip")
    extras = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", args[2])
    assert extras, f"install target {args[2]!r} is not this project"
    known = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    known = set(known.get("optional-dependencies", {}))
    for extra in filter(None, (extras[1] or "").split(",")):
        assert extra in known, f"pyproject.toml has no extra {extra!r}"


def check_command(command: str) -> None:
    """Check one shell command as far as it can be checked offline, without running it."""
    words = shlex.split(command, comments=True)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]  # environment assignments
    if not words:
        return
    program, args = words[0], words[1:]
    if program == "bash":
        script = REPO / args[0]
        assert script.is_file(), f"no script {args[0]}"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{args[0]} does not parse:\n{proc.stderr}"
    elif program == "pip":
        check_pip(args)
    elif program == "lrpfx":
        assert args and not args[0].startswith("-"), "`lrpfx` needs a command"
        check_flags(("-m", "lrpfx", args[0]), args[1:])
    elif program in PYTHONS:
        check_python(args)
    elif program == "torchrun":
        while args and args[0].startswith("--"):  # torchrun's own options
            args = args[1:] if "=" in args[0] else args[2:]
        check_python(args)
    else:
        pytest.fail(f"no check for `{program}`: use a command test_docs.py knows or mark the "
                    "block with <!-- doc-test: skip REASON -->")


def commands(block: Block) -> list[str]:
    """The commands of a shell block: one a line, with backslash continuations joined. In a
    ``console`` block (or one using ``$ `` prompts) only the ``$ `` lines are commands; the
    rest is their output."""
    lines = [ln.strip() for ln in block.code.replace("\\\n", " ").split("\n") if ln.strip()]
    if block.lang == "console" or any(ln.startswith("$ ") for ln in lines):
        return [ln.removeprefix("$ ") for ln in lines if ln.startswith("$ ")]
    return lines


SHELL_BLOCKS = [b for b in ALL if b.lang in SHELL_LANGS and b.skip is None]


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=_ids(SHELL_BLOCKS))
def test_shell_block(block: Block) -> None:
    for command in commands(block):
        check_command(command)


# --- the rest of the text -----------------------------------------------------------------

@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_blocks_say_what_they_are(path: Path) -> None:
    blocks, problems = PARSED[path]
    known = PYTHON_LANGS | SHELL_LANGS | TEXT_LANGS | {"setup"}
    problems += [f"{b.name}: a block in {b.lang or 'no language'}: say python, bash or text"
                 for b in blocks if b.lang not in known]
    assert not problems, "\n".join(problems)


def prose(path: Path) -> str:
    """The file without its code blocks and comments (what inline checks read)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return re.sub(r"^\s*(`{3,}|~{3,}).*?^\s*\1\s*$", "", text, flags=re.S | re.M)


def inline_code(path: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(path))


def resolve(name: str) -> Any:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        with contextlib.suppress(ModuleNotFoundError):
            obj = importlib.import_module(".".join(parts[:k]))
            break
    for attr in parts[k:]:
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_inline_names_resolve(path: Path) -> None:
    names = {m for span in inline_code(path)
             for m in re.findall(r"\blrpfx(?:\.[A-Za-z_]\w*)+", span)}
    problems = []
    for name in sorted(names):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            try:
                resolve(name)
            except DeprecationWarning as e:
                problems.append(f"`{name}` is an old path: {e}")
            except (ImportError, AttributeError) as e:
                problems.append(f"`{name}` does not exist: {e}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_inline_paths_exist(path: Path) -> None:
    paths = {m for span in inline_code(path)
             for m in re.findall(r"(?<![\w./])(?:lrpfx|tests|bench|examples|scripts|docs)/"
                                 r"[\w./*-]*", span)}
    missing = sorted(p for p in paths if not glob.glob(str(REPO / p.rstrip("."))))
    assert not missing, f"{path.name} names paths that do not exist: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", prose(path), flags=re.M)}


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_links_resolve(path: Path) -> None:
    problems, images_missing = [], []
    for image, target in re.findall(r"(!?)\[[^\]]*\]\(([^)\s]+)\)", prose(path)):
        if re.match(r"^[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            (images_missing if image else problems).append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target} (no heading gives #{anchor})")
    assert not problems, f"{path.name} links to what does not exist: {problems}"
    if images_missing:
        pytest.skip(f"{path.name}: image not in the tree yet: {images_missing}")


def architecture_tree() -> set[str]:
    """The files the package tree of docs/architecture.md lists, as paths."""
    blocks = [b for b in PARSED[REPO / "docs" / "architecture.md"][0]
              if b.lang in TEXT_LANGS and b.code.startswith("lrpfx/\n")]
    assert len(blocks) == 1, "docs/architecture.md needs one text block starting with lrpfx/"
    stack = ["lrpfx"]
    listed = set()
    for line in blocks[0].code.split("\n")[1:]:
        m = re.match(r"^([│ ]*)[├└]── (\S+)", line)
        if not m:
            continue
        depth = len(m[1]) // 4
        del stack[depth + 1:]
        name = m[2].rstrip("/")
        if m[2].endswith("/"):
            stack.append(name)
        else:
            listed.add("/".join([*stack, name]))
    return listed


def test_architecture_lists_every_file() -> None:
    actual = {p.relative_to(REPO).as_posix() for p in (REPO / "lrpfx").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts}
    listed = architecture_tree()
    assert not actual - listed, f"add to docs/architecture.md's tree: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/architecture.md lists files that do not exist: " \
                                f"{sorted(listed - actual)}"


# --- the checks themselves fail on broken docs --------------------------------------------

def test_a_broken_block_fails(tmp_path: Path) -> None:
    doc = tmp_path / "broken.md"
    doc.write_text("text\n\n<!-- doc-test: setup\nn = 2\n-->\n\n```python\nassert n == 3\n```\n"
                   "<!-- doc-test: check\nm = 1 -->\n")
    blocks, problems = parse(doc)
    assert not problems and [b.lang for b in blocks] == ["setup", "python", "setup"]
    assert [b.code for b in blocks] == ["n = 2\n", "assert n == 3", "m = 1 "]
    ns: dict[str, Any] = {}
    run_python(blocks[0], ns, tmp_path)
    with pytest.raises(AssertionError) as failure:
        run_python(blocks[1], ns, tmp_path)
    assert failure.traceback[-1].lineno + 1 == 8  # the markdown file's own line
    for command in ["lrpfx check --no-such-flag", "bash scripts/no_such.sh",
                    'pip install -e ".[no-such-extra]"', "curl https://example.org"]:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_command(command)
    check_command('pip install -e ".[demo]"  # a comment')


def test_doctest_blocks_and_console_prompts(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text("```python\n>>> 1 + 1\n2\n```\n\n```python\n>>> 1 + 1\n3\n```\n\n"
                   "```console\n$ lrpfx check --help\nusage: ...\n```\n")
    good, bad, console = parse(doc)[0]
    ns: dict[str, Any] = {}
    run_python(good, ns, tmp_path)
    with pytest.raises(AssertionError, match="Expected:\\s+3\\s+Got:\\s+2"):
        run_python(bad, ns, tmp_path)
    assert commands(console) == ["lrpfx check --help"]


def test_parse_finds_skips_and_unknown_languages(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text("<!-- doc-test: skip needs a GPU -->\n```python\n1/0\n```\n\n"
                   "  ```\n  x\n  ```\n")
    blocks, problems = parse(doc)
    assert [(b.lang, b.skip) for b in blocks] == [("python", "needs a GPU"), ("", None)]
    assert blocks[1].code == "x" and not problems
