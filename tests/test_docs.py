"""The Markdown documentation stays true to the repository.

Every Markdown file (the front README, each recipe's README, docs/*.md; not .venv, experiment or
corpus folders, nor hidden ones) is checked for:

- relative links that point to no file or folder, and #anchors that name no heading of the target;
- paths in code (`recipes/...`, `ser_modules/...`, `local/...`, `utils/...`, `docs/...`, `tests/...`,
  and `conf/...` inside a recipe's README) that do not exist, and `ser_modules.x.y` modules (and the
  name after a module) that do not; paths with placeholders (`<recipe>`, `*`, `{a,b}`, `...`) and
  experiment folders (`.../exp/...`, made by a run) are skipped;
- command-line options (`--x`) that the command they follow does not accept: `run.sh` (a recipe's
  runner, utils/recipe.sh, whose `--help` lists its options; a bare `run.sh` is the recipe of the
  README it is in, else ctc_transfer), `python -m ser_modules.X`, and the scripts of utils/ and
  local/. Options are read from code blocks (a `\\`-continued command is one line) and from code
  spans, where a command's options follow it in the later spans of the same paragraph, list item or
  table row, up to the next command (a span holding only a script's path names the file, not a
  command); an option named with no command before it must be one that some command accepts.

Each command's `--help` runs once: the runners as subprocesses, every Python command in one
subprocess (torch is imported once), so the whole file takes a few seconds.
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "venv", "exp", "corpora", "node_modules", "__pycache__"}
PATH_PREFIXES = ("recipes", "ser_modules", "local", "utils", "docs", "tests")
PLACEHOLDER_MARKS = ("<", "*", "{", "...", "$")
GENERATED = {"exp"}  # experiment folders: made by a run, ignored by git
DEFAULT_RECIPE = "ctc_transfer"


# --------------------------------------------------------------------------------------------------
# Reading the Markdown


def markdown_files() -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
                             and not d.endswith(".egg-info"))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(".md")]
    return found


@dataclass
class Doc:
    path: Path
    prose: list[tuple[int, str]]  # (first line number, paragraph text) outside code blocks
    code_lines: list[tuple[int, str]]  # (line number, logical line) inside code blocks
    code_spans: list[tuple[int, str, int]]  # (line number where it starts, content, paragraph number)

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def recipe(self) -> str | None:
        """The recipe whose folder holds this file (its `run.sh` and `conf/` are meant), if any."""
        parts = self.path.relative_to(ROOT).parts
        return parts[1] if len(parts) >= 3 and parts[0] == "recipes" else None


FENCE = re.compile(r"^\s*(```|~~~)")
LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s")
CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> Doc:
    prose, code_lines, paragraph = [], [], []
    in_code, pending, pending_line = False, "", 0

    def flush():
        if paragraph:
            prose.append((paragraph[0][0], "\n".join(text for _, text in paragraph)))
            paragraph.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if FENCE.match(line):
            flush()
            in_code = not in_code
            continue
        if in_code:
            if not pending:
                pending_line = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            code_lines.append((pending_line, pending + line))
            pending = ""
        elif line.lstrip().startswith("|"):  # a table row is a unit of its own
            flush()
            prose.append((number, line))
        elif LIST_ITEM.match(line):  # so is a list item
            flush()
            paragraph.append((number, line))
        elif line.strip():
            paragraph.append((number, line))
        else:
            flush()
    flush()
    spans = []
    for paragraph_number, (first, text) in enumerate(prose):
        for m in CODE_SPAN.finditer(text):
            spans.append((first + text.count("\n", 0, m.start()), m.group(2), paragraph_number))
    return Doc(path, prose, code_lines, spans)


def docs() -> list[Doc]:
    return [parse(p) for p in markdown_files()]


# --------------------------------------------------------------------------------------------------
# Links and anchors

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def links(doc: Doc) -> list[tuple[int, str]]:
    found = []
    for first, text in doc.prose:
        # code spans hold no links: blank them out, keeping their line breaks for the line numbers
        bare = CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
        for pattern in (LINK, REF_DEF):
            for m in pattern.finditer(bare):
                found.append((first + bare.count("\n", 0, m.start()), m.group(1)))
    return found


def slug(heading: str) -> str:
    """GitHub's heading anchor: the rendered text, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    names = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").split("\n"):
        if FENCE.match(line):
            in_code = not in_code
            continue
        m = None if in_code else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            names.add(base if n == 0 else f"{base}-{n}")
    return frozenset(names)


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def link_problems(doc: Doc) -> list[str]:
    problems = []
    for line, target in links(doc):
        if is_external(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.path.parent / path_part).resolve() if path_part else doc.path
        where = f"{doc.rel}:{line}: link {target!r}"
        if not dest.exists():
            problems.append(f"{where}: no such file or folder")
        elif anchor and dest.is_file() and dest.suffix.lower() == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    return problems


# --------------------------------------------------------------------------------------------------
# Paths and modules named in code

PATH_TOKEN = re.compile(r"(?<![\w./~-])((?:%s)/[^\s`'\"(),;|\]]*)" % "|".join(PATH_PREFIXES))
CONF_TOKEN = re.compile(r"(?<![\w./~-])(conf/[^\s`'\"(),;|\]]*)")
MODULE_TOKEN = re.compile(r"(?<![\w./-])(ser_modules(?:\.\w+)+)")


def code_texts(doc: Doc) -> list[tuple[int, str]]:
    return [(line, text) for line, text, _ in doc.code_spans] + doc.code_lines


def module_problem(dotted: str) -> str | None:
    parts = dotted.split(".")
    here = ROOT / parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if (here / part).is_dir() and (here / part / "__init__.py").exists():
            here = here / part
        elif (here / f"{part}.py").exists():
            source = (here / f"{part}.py").read_text(encoding="utf-8")
            rest = parts[i + 1:]
            if rest and not re.search(rf"^\s*(?:class|def)\s+{rest[0]}\b|^{rest[0]}\s*[:=]|\bimport\b.*\b{rest[0]}\b",
                                      source, re.M):
                return f"{'.'.join(parts[:i + 1])} defines no {rest[0]}"
            return None
        else:
            return f"no module {'.'.join(parts[:i + 1])}"
    return None


def path_problems(doc: Doc) -> list[str]:
    problems = []
    for line, text in code_texts(doc):
        checks = [(m.group(1), ROOT) for m in PATH_TOKEN.finditer(text)]
        if doc.recipe:
            checks += [(m.group(1), ROOT / "recipes" / doc.recipe) for m in CONF_TOKEN.finditer(text)]
        for token, base in checks:
            token = token.rstrip(".:")
            if any(mark in token for mark in PLACEHOLDER_MARKS):
                continue
            if GENERATED & set(Path(token).parts):
                continue
            if not (base / token).exists():
                problems.append(f"{doc.rel}:{line}: `{token}` does not exist"
                                + (f" (in {base.relative_to(ROOT)})" if base != ROOT else ""))
        for m in MODULE_TOKEN.finditer(text):
            problem = module_problem(m.group(1))
            if problem:
                problems.append(f"{doc.rel}:{line}: `{m.group(1)}`: {problem}")
    return problems


# --------------------------------------------------------------------------------------------------
# Command-line options

RUNNER = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*run\.sh)(?![\w.-])")
MODULE_CMD = re.compile(r"(?<![\w.-])-m\s+(ser_modules(?:\.\w+)+)")
SCRIPT = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[\w-]+\.py)(?![\w-])")
OTHER_CMD = re.compile(r"(?<![\w.-])(torchrun|pip|pytest|git|sbatch|#SBATCH|bash)(?![\w.-])")
OPTION = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")


def script_command(token: str) -> tuple[str, ...] | None:
    """A utils/ or local/ script named as `utils/x.py`, `python local/x.py` or just `x.py`."""
    path = Path(token)
    if len(path.parts) > 1:
        candidates = [ROOT / path] if path.parts[0] in ("utils", "local") else []
    else:
        candidates = [ROOT / "utils" / path.name, ROOT / "local" / path.name]
    for c in candidates:
        if c.is_file():
            return ("python", c.relative_to(ROOT).as_posix())
    return None


def commands_and_options(doc: Doc, pieces: list[tuple[int, str]], prose: bool = False
                         ) -> list[tuple[int, tuple[str, ...], str, str]]:
    """(line, command to ask --help, how the doc wrote it, option) for each option after a command in
    the text of `pieces` ((line, text) in order: a code block's line, or a paragraph's code spans).
    In prose a code span holding nothing but a script's name names the file, not a command: it ends
    the previous command's options and starts none."""
    text, starts = "", []
    for line, piece in pieces:
        starts.append((len(text), line, piece))
        text += piece + " "
    markers = []  # (position, command or None for one whose options are not checked, as written)
    for m in RUNNER.finditer(text):
        recipe = re.search(r"recipes/([\w-]+)/run\.sh$", m.group(1))
        name = recipe.group(1) if recipe else (doc.recipe or DEFAULT_RECIPE)
        markers.append((m.start(), ("bash", f"recipes/{name}/run.sh"), m.group(1)))
    for m in MODULE_CMD.finditer(text):
        markers.append((m.start(), ("python", "-m", m.group(1)), f"-m {m.group(1)}"))
    for m in SCRIPT.finditer(text):
        markers.append((m.start(), script_command(m.group(1)), m.group(1)))
    for m in OTHER_CMD.finditer(text):
        markers.append((m.start(), ("external",), m.group(1)))
    markers.sort(key=lambda marker: marker[0])
    if prose:
        def mention(position: int, written: str) -> bool:
            piece = [piece for start, _, piece in starts if start <= position][-1]
            return piece.strip() == written and written.endswith(".py")
        markers = [(pos, None if mention(pos, written) else command, written) for pos, command, written in markers]
    found = []
    for m in OPTION.finditer(text):
        before = [marker for marker in markers if marker[0] < m.start()]
        line = [line for start, line, _ in starts if start <= m.start()][-1]
        if not before:  # no command before it: named in passing
            found.append((line, None, "", m.group(1)))
        elif before[-1][1] is not None:  # a command's option, or ("external",) another tool's
            found.append((line, before[-1][1], before[-1][2], m.group(1)))
    return found


def option_uses(doc: Doc) -> list[tuple[int, tuple[str, ...], str, str]]:
    return [use for use in all_options(doc) if use[1] not in (None, ("external",))]


def external_options() -> frozenset[str]:
    """Options the docs show on the lines of other tools (torchrun, #SBATCH, pip, ...)."""
    return frozenset(use[3] for doc in docs() for use in all_options(doc) if use[1] == ("external",))


def passing_options(doc: Doc) -> list[tuple[int, str]]:
    """Options named with no command before them (`--nj N` in a sentence): (line, option)."""
    return [(use[0], use[3]) for use in all_options(doc) if use[1] is None]


def all_options(doc: Doc) -> list[tuple[int, tuple[str, ...] | None, str, str]]:
    """Options after commands: in each code block line, and in the code spans of each paragraph (a
    command in prose is followed by its options in later spans of the same paragraph, across line
    wraps, up to the next command)."""
    uses = [use for line, text in doc.code_lines for use in commands_and_options(doc, [(line, text)])]
    paragraphs: dict[int, list[tuple[int, str]]] = {}
    for line, span, paragraph in doc.code_spans:
        paragraphs.setdefault(paragraph, []).append((line, span))
    for pieces in paragraphs.values():
        uses += commands_and_options(doc, pieces, prose=True)
    return uses


# Every Python command's --help in one interpreter (torch is imported once, not once per command):
# each runs as `python -m X --help` or `python path --help` would, its output and exit code kept.
HELP_DRIVER = r"""
import contextlib, io, json, os, runpy, sys
results = []
for target in json.loads(sys.argv[1]):
    out, code = io.StringIO(), 0
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            sys.argv = [target[-1], "--help"]
            if target[0] == "-m":
                runpy.run_module(target[1], run_name="__main__", alter_sys=True)
            else:
                sys.path.insert(0, os.path.dirname(os.path.abspath(target[0])))
                runpy.run_path(target[0], run_name="__main__")
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException as error:
        code, _ = 1, out.write(f"{type(error).__name__}: {error}")
    finally:
        sys.argv, sys.path = saved_argv, saved_path
    results.append([code, out.getvalue()])
print(json.dumps(results))
"""


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def runner_help(command: tuple[str, ...]) -> tuple[int, str]:
    done = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=environment())
    return done.returncode, done.stdout + done.stderr


def python_helps(commands: list[tuple[str, ...]]) -> list[tuple[int, str]]:
    targets = [list(command[1:]) for command in commands]
    done = subprocess.run([sys.executable, "-c", HELP_DRIVER, json.dumps(targets)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=environment())
    assert done.returncode == 0, f"the --help driver failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return [tuple(result) for result in json.loads(done.stdout.strip().splitlines()[-1])]


@functools.lru_cache(maxsize=None)
def accepted_options() -> dict[tuple[str, ...], frozenset[str] | str]:
    """Every command the docs name, mapped to the options its --help lists (or why it failed)."""
    recipes = {("bash", p.relative_to(ROOT).as_posix()) for p in (ROOT / "recipes").glob("*/run.sh")}
    commands = sorted({use[1] for doc in docs() for use in option_uses(doc)}
                      | recipes | {("python", "-m", "ser_modules.infer")})
    python = [c for c in commands if c[0] == "python"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        runners = pool.map(runner_help, [c for c in commands if c[0] != "python"])
        results = dict(zip(python, python_helps(python)))
        results.update(zip([c for c in commands if c[0] != "python"], runners))
    accepted = {}
    for command, (code, out) in results.items():
        if code != 0:
            accepted[command] = f"`{' '.join(command)} --help` failed (exit {code}): {out.strip()[-300:]}"
        else:
            accepted[command] = frozenset(re.findall(r"^\s*(?:-\w[\w ]*,\s*)?(--[a-zA-Z][\w-]*)", out, re.M))
    return accepted


def option_problems(doc: Doc) -> list[str]:
    problems = []
    for line, command, written, option in option_uses(doc):
        accepted = accepted_options()[command]
        if isinstance(accepted, str):
            problems.append(f"{doc.rel}:{line}: {accepted}")
        elif option not in accepted:
            problems.append(f"{doc.rel}:{line}: `{written}` has no option {option} "
                            f"(`{' '.join(command)} --help`)")
    return sorted(set(problems))


# --------------------------------------------------------------------------------------------------
# Tests


def report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_the_documentation_is_found():
    names = {doc.rel for doc in docs()}
    recipes = sorted(p.parent.name for p in (ROOT / "recipes").glob("*/run.sh"))
    assert "README.md" in names
    assert {f"recipes/{r}/README.md" for r in recipes} <= names, "every recipe has a README"
    assert any(name.startswith("docs/") for name in names)
    assert not any(part in SKIP_DIRS for name in names for part in Path(name).parts)


def test_relative_links_resolve():
    problems = [p for doc in docs() for p in link_problems(doc)]
    assert not problems, report(problems)


def test_paths_and_modules_in_code_exist():
    problems = [p for doc in docs() for p in path_problems(doc)]
    assert not problems, report(problems)


@pytest.mark.slow
def test_named_options_are_accepted():
    problems = [p for doc in docs() for p in option_problems(doc)]
    assert not problems, report(problems)


def test_options_named_in_passing_exist():
    """An option named without its command (`--max-seconds` in a sentence on inference) is one that a
    command of the docs or a recipe's runner accepts, or one the docs show on another tool's line
    (torchrun, #SBATCH, pip, ...: those tools' options are theirs and not checked)."""
    known = frozenset().union(*(a for a in accepted_options().values() if not isinstance(a, str)))
    known |= external_options()
    problems = [f"{doc.rel}:{line}: {option} is no option of any recipe runner or command the docs name"
                for doc in docs() for line, option in passing_options(doc) if option not in known]
    assert not problems, report(problems)


def test_the_checks_see_the_commands():
    """The option check reads what it should: the runner's and the Python entry points' --help."""
    accepted = accepted_options()
    runner = accepted[("bash", f"recipes/{DEFAULT_RECIPE}/run.sh")]
    assert {"--stage", "--stop-stage", "--nj", "--launcher"} <= runner
    upstream = accepted.get(("bash", "recipes/upstream_probe/run.sh"))
    assert upstream and "--upstream" in upstream and "--upstream" not in runner
    assert accepted[("python", "-m", "ser_modules.infer")] >= {"--out", "--variant", "--context"}
    fake = Doc(ROOT / "README.md", [], [(1, "recipes/las_adapt/run.sh --stage 2 --no-such-option x "
                                           "&& python utils/make_tiny_upstream.py --kind wavlm")],
               [(3, "--out", 0), (4, "run.sh --help", 1), (5, "--nj 2", 1)])
    uses = {(u[1][-1], u[3]) for u in option_uses(fake)}
    assert uses == {("recipes/las_adapt/run.sh", "--stage"), ("recipes/las_adapt/run.sh", "--no-such-option"),
                    ("utils/make_tiny_upstream.py", "--kind"), ("recipes/ctc_transfer/run.sh", "--help"),
                    ("recipes/ctc_transfer/run.sh", "--nj")}
