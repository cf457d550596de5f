"""The documentation stays true to the code: every relative link in README.md and docs/*.md points at a
file that exists, and every command they quote for ``caco-jax`` or ``python scripts/*.py`` is accepted by
that command's own argument parser (its ``--config.KEY=VALUE`` keys by the default config).

Commands are the lines of ```bash blocks (complete commands: required flags must be there) and inline
`caco-jax ...` / `python scripts/X.py ...` spans (mentions: only the flags they name are checked);
a quoted `python tools/X.py` must name a file that exists (tools have no shared parser to check).
Nothing runs and nothing compiles: the parsers are built from ``caco_jax/cli/<module>.py``'s
``add_arguments``, exactly as ``caco-jax <command>`` builds them.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import io
import pathlib
import re
import shlex

import pytest

from caco_jax.cli import common
from caco_jax.cli.main import COMMANDS
from caco_jax.configs import default
from caco_jax.errors import CacoError
from caco_jax.flags import parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~)([^\n`]*)\n(.*?)^\1[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {">", ">>", "<", "2>", "2>>"}
# A value that stands for the reader's own: /path/to/..., UPPER_CASE words, <angle brackets>.
PLACEHOLDER = re.compile(r"/path/to|^[A-Z][A-Z0-9_]*$|<[^>]*>|\.\.\.")


@dataclasses.dataclass(frozen=True)
class Command:
    doc: pathlib.Path
    text: str
    argv: tuple[str, ...]  # the words after the program
    module: str  # caco_jax.cli.<module>
    complete: bool  # from a bash block: required flags must be there

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}: {self.text}"


def _split_fences(text: str) -> tuple[list[tuple[str, str]], str]:
    """([(language, body)] of the fenced blocks, the text outside them)."""
    blocks = [(m.group(2).strip().lower(), m.group(3)) for m in FENCE.finditer(text)]
    return blocks, FENCE.sub("", text)


def _shell_lines(body: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comment-only lines dropped."""
    joined = re.sub(r"\\\n", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line (split at &&, ||, ;, |), without redirections."""
    words = shlex.split(line, comments=True)
    out: list[list[str]] = [[]]
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in SEPARATORS:
            out.append([])
        elif word in REDIRECTS:
            skip = True
        elif re.fullmatch(r"\d?>&\d", word) or word == "...":
            continue
        else:
            out[-1].append(word)
    return [c for c in out if c]


class Unknown(Exception):
    """A quoted command whose program is not there: an unknown command, a missing script or tool."""


def _script_module(script: str) -> str:
    """The caco_jax.cli module a scripts/X.py shim runs."""
    path = ROOT / script
    if not path.is_file():
        raise Unknown(f"{script} does not exist")
    found = re.search(r"from caco_jax\.cli\.(\w+) import main", path.read_text())
    if not found:
        raise Unknown(f"{script} is not a shim over a caco_jax.cli module")
    return found.group(1)


def _as_command(doc: pathlib.Path, text: str, words: list[str], complete: bool) -> Command | None:
    """A Command if ``words`` run caco-jax (or a scripts/ shim), else None."""
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return None
    if words[0] == "caco-jax" or words[:3] in (["python", "-m", "caco_jax"], ["python3", "-m", "caco_jax"]):
        rest = words[1:] if words[0] == "caco-jax" else words[3:]
        if not rest or rest[0] in ("-h", "--help", "--version", "help", "version"):
            return Command(doc, text, tuple(rest), "main", complete)
        if rest[0].startswith("<") and rest[0].endswith(">"):
            return None  # `caco-jax <command> --help`: a pattern, not a command
        if rest[0] not in COMMANDS:
            raise Unknown(f"unknown command {rest[0]!r}")
        return Command(doc, text, tuple(rest[1:]), COMMANDS[rest[0]][0], complete)
    if words[0] in ("python", "python3") and len(words) > 1 and words[1].startswith("scripts/"):
        return Command(doc, text, tuple(words[2:]), _script_module(words[1]), complete)
    tool = words[1] if words[0] in ("python", "python3") and len(words) > 1 else ""
    if tool.startswith("tools/") and not (ROOT / tool).is_file():
        raise Unknown(f"{tool} does not exist")
    return None


def _commands() -> tuple[list[Command], list[str]]:
    """(the quoted commands, problems with quoted programs)."""
    quoted: list[tuple[pathlib.Path, str, bool]] = []
    for doc in DOCS:
        blocks, prose = _split_fences(doc.read_text())
        quoted += [(doc, line, True) for lang, body in blocks if lang in SHELL_LANGS for line in _shell_lines(body)]
        for span in INLINE_CODE.findall(prose):
            span = " ".join(span.split())
            if re.match(r"caco-jax(\s|$)|python3? -m caco_jax(\s|$)|python3? (scripts|tools)/", span):
                quoted.append((doc, span, False))
    found, problems = [], []
    for doc, text, complete in quoted:
        for words in _simple_commands(text):
            try:
                cmd = _as_command(doc, text, words, complete)
            except Unknown as err:
                problems.append(f"{doc.relative_to(ROOT)}: {err}: {text}")
                continue
            if cmd is not None:
                found.append(cmd)
    return found, problems


COMMANDS_QUOTED, UNKNOWN_PROGRAMS = _commands()


def _parser(module_name: str, complete: bool) -> tuple[argparse.ArgumentParser, bool]:
    module = importlib.import_module(f"caco_jax.cli.{module_name}")
    p = parser(f"caco-jax {module.NAME}", module.__doc__)
    module.add_arguments(p)
    if not complete:  # a mention in prose names some flags, not necessarily the required ones
        for action in p._actions:  # argparse has no public way to relax these
            action.required = False
            if not action.option_strings and action.nargs == "+":
                action.nargs = "*"
        for group in p._mutually_exclusive_groups:
            group.required = False
    return p, getattr(module, "CONFIG_OVERRIDES", False)


def _check_override(key: str, value: str, where: Command) -> None:
    """``key`` exists in the default config and ``value`` fits it (placeholder values: only the key)."""
    config = default.get_config()
    if PLACEHOLDER.search(value):
        node = config
        try:
            for part in key.split("."):
                node = node[part]
        except (KeyError, TypeError, AttributeError):
            node = ""  # unknown key: apply_overrides names it below
        value = node if isinstance(node, str) else repr(node)
    try:
        common.apply_overrides(config, [(key, value)])
    except CacoError as err:
        pytest.fail(f"{where}: {err}")


def test_quoted_programs_exist():
    assert not UNKNOWN_PROGRAMS, "\n".join(UNKNOWN_PROGRAMS)


def test_docs_quote_commands():
    modules = {c.module for c in COMMANDS_QUOTED}
    # the README's everyday commands cover every command there is
    assert {"train", "evaluate", "predict", "serve", "export", "prepare_data", "reproduce", "benchmark"} <= modules
    assert any(c.doc == README and c.complete for c in COMMANDS_QUOTED)


@pytest.mark.parametrize("command", COMMANDS_QUOTED, ids=str)
def test_quoted_command_parses(command: Command):
    if command.module == "main":
        return  # caco-jax --help / --version: main() itself, tested in test_packaging
    p, overrides = _parser(command.module, command.complete)
    argv = list(command.argv)
    if "-h" in argv or "--help" in argv:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as stop:
            p.parse_args(argv)
        assert stop.value.code == 0
        return
    try:
        args = common.parse(p, argv, overrides=overrides)
    except CacoError as err:
        pytest.fail(f"{command}: {err}")
    for key, value in getattr(args, "overrides", []):
        _check_override(key, value, command)
    for item in getattr(args, "set", None) or []:  # caco-jax reproduce --set KEY=VALUE
        key, sep, value = item.partition("=")
        assert sep, f"{command}: --set {item!r} is not KEY=VALUE"
        _check_override(key, value, command)
    config = getattr(args, "config", None)
    if command.module == "train" and config and not PLACEHOLDER.search(config):
        try:
            common.load_config(config)  # a shipped name or a file that exists, with its argument
        except CacoError as err:
            pytest.fail(f"{command}: {err}")


def _links() -> list[tuple[pathlib.Path, str]]:
    found = []
    for doc in DOCS:
        _, prose = _split_fences(doc.read_text())
        prose = INLINE_CODE.sub("", prose)
        found += [(doc, target) for target in LINK.findall(prose)]
    return found


# --------------------------------------------------------------------------- the one-step reading path
STEP_ROW = re.compile(r"^\| (\d+) \| (caco_jax/\S+\.py) \| `([\w.]+)` \| .+ \|$", re.MULTILINE)


def _defines(path: pathlib.Path, dotted: str) -> bool:
    """Whether ``path`` defines ``dotted`` (a function or class, ``Class.method`` for a method), at any depth."""
    *outer, name = dotted.split(".")
    scopes: list[ast.AST] = [ast.parse(path.read_text())]
    for part in outer:
        scopes = [n for s in scopes for n in ast.walk(s) if isinstance(n, ast.ClassDef) and n.name == part]
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return any(isinstance(n, kinds) and n.name == name for s in scopes for n in ast.walk(s))


def test_the_read_this_first_path_names_functions_that_exist():
    """docs/layout.md's 'Read this first' table: one training step, hop by hop, each hop's file and the
    function (or method) it starts at."""
    text = (ROOT / "docs" / "layout.md").read_text()
    section = re.search(r"^## Read this first: one training step\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert section, "docs/layout.md has no '## Read this first: one training step' section"
    rows = STEP_ROW.findall(section.group(1))
    assert [int(hop) for hop, _, _ in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 8
    missing = [f"{file}: {name}" for _, file, name in rows if not _defines(ROOT / file, name)]
    assert not missing, f"docs/layout.md's reading path names what does not exist: {missing}"
    assert not _defines(ROOT / "caco_jax/training/loop.py", "no_such_function")
    assert _defines(ROOT / "caco_jax/training/losses.py", "Loss.__call__")
    assert not _defines(ROOT / "caco_jax/training/losses.py", "Loss.no_such_method")


@pytest.mark.parametrize(
    "doc,target", _links(), ids=lambda x: str(x.relative_to(ROOT)) if isinstance(x, pathlib.Path) else x
)
def test_relative_link_points_at_a_file(doc: pathlib.Path, target: str):
    if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return  # a URL (https:, mailto:, doi:) or an anchor in the same page
    path = (doc.parent / target.split("#", 1)[0]).resolve()
    assert path.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"


def test_every_doc_is_linked_from_the_readme():
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for d, t in _links() if d == README}
    missing = [
        d.name for d in DOCS[1:] if d.resolve() not in linked and not re.fullmatch(r"results_.*\.md", d.name)
    ]  # generated tables: linked from results.md
    assert not missing, f"README.md does not link to {missing}"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines < README_MAX_LINES, (
        f"README.md has {lines} lines; keep it under {README_MAX_LINES} (deep dives: docs/)"
    )


# What CI runs beyond the README's test command: these checks (configured in pyproject.toml), in
# this order, after installing and before the tests; and the install pins the tested versions.
CI_CHECKS = [["ruff", "check"], ["ruff", "format", "--check"], ["mypy"]]
CONSTRAINTS = ["-c", "constraints.txt"]


def _normalise(words: list[str]) -> list[str]:
    """`python -m pip install -q X` and `pip install X` are the same step, and so is
    `pip install -c constraints.txt X` (the same packages, at the versions the tests passed on)."""
    if words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
        words = ["pip", *words[3:]]
    if words[:2] == ["pip", "install"]:
        at = next((i for i in range(len(words) - 1) if words[i : i + 2] == CONSTRAINTS), None)
        if at is not None:
            words = words[:at] + words[at + 2 :]
    return [w for w in words if w not in ("-q", "--quiet")]


def _readme_two_commands() -> list[str]:
    text = README.read_text()
    section = re.search(r"^## Two commands\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert section, "README.md has no '## Two commands' section"
    blocks, _ = _split_fences(section.group(1))
    lines = [line for lang, body in blocks if lang in SHELL_LANGS for line in _shell_lines(body)]
    assert len(lines) == 2, f"the Two commands section should hold exactly two commands, found {lines}"
    return lines


def _ci_lines() -> tuple[list[str], list[str]]:
    """.ci/run's commands outside any if-block, and those inside one (optional system packages)."""
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    steps, optional, depth = [], [], 0
    for line in lines:
        if re.match(r"if\b", line):
            depth += 1
        elif line == "fi":
            depth -= 1
        elif depth:
            optional.append(line)
        else:
            steps.append(line)
    return steps, optional


def _section(text: str, heading: str) -> str:
    found = re.search(rf"^## {heading}\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert found, f"README.md has no '## {heading}' section"
    return found.group(1)


def test_readme_two_commands_are_what_ci_runs():
    demo, tests = _readme_two_commands()
    assert demo == (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
        "python scripts/train.py --config configs/demo.py --workdir runs/demo"
    )
    ci, optional = _ci_lines()
    install = " ".join(_section(README.read_text(), "Install").split())
    for line in optional:
        for package in re.findall(r"apt-get install (?:-\S+ )*([\w.+-]+)", line):
            assert package in install, f".ci/run installs {package}; README's Install section should name it"
    steps = [
        _normalise(shlex.split(line))
        for line in ci
        if not re.match(r"(set|cd|rm)\b", line) and "--upgrade pip" not in line
    ]
    readme = [_normalise(words) for words in _simple_commands(tests)]
    assert steps == readme[:-1] + CI_CHECKS + readme[-1:], (
        f"README's test command {tests!r}, with {CI_CHECKS} before the tests, is not what .ci/run runs: {ci}"
    )
    installs = [line for line in ci if re.match(r"(python3? -m )?pip install\b", line) and "--upgrade pip" not in line]
    assert installs and all(" ".join(CONSTRAINTS) in line for line in installs), (
        f".ci/run should install with the tested versions ({' '.join(CONSTRAINTS)}): {installs}"
    )
    assert (ROOT / "constraints.txt").is_file()


GLUED_HEADING = re.compile(r"[^\s#][ \t]*#{2,6} [A-Z]")  # "...fig## What the numbers say": a heading lost mid-line


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_no_heading_is_glued_to_a_sentence_and_no_paragraph_is_a_fragment(doc: pathlib.Path):
    """Catches text damaged by an edit: a heading joined to the end of a sentence, or a stray piece of a
    sentence left as a paragraph of its own ("n is.")."""
    _, prose = _split_fences(doc.read_text())
    prose = INLINE_CODE.sub("", prose)
    glued = [line for line in prose.splitlines() if GLUED_HEADING.search(line) and not line.startswith("|")]
    assert not glued, f"{doc.name}: a heading inside a line: {glued}"
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", prose) if p.strip()]
    fragments = [p for p in paragraphs if re.fullmatch(r"[a-z][^\n]{0,20}[.:]?", p)]
    assert not fragments, f"{doc.name}: a paragraph that is a fragment of a sentence: {fragments}"
