"""The README, docs/ and theory/README.md: every relative link resolves, every quoted command parses.

A command is checked by parsing it with the current command line (`cli.build_parser()`), never by
running it, so the check takes a second and trains nothing.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import shlex

import pytest

from subliminal_mnist import cli, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")), "theory/README.md"]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^ *```")
CODE_SPAN = re.compile(r"`([^`]+)`")
COMMAND = re.compile(r"(?<![\w/.-])subliminal-mnist(?![\w/.-])(.*)")  # not a path like ~/.cache/subliminal-mnist
COMMAND_END = re.compile(r"\s#|;|&&|\|")  # a comment, or the next command of a shell line

# Placeholders the pages write in commands, each replaced by what the reader is meant to type:
PLACEHOLDERS = (
    # `theorem [--cases N] [--seed S]`: an optional option whose value, a one-letter metavar, is a number the
    # reader chooses; checked given, with the number 1.
    (re.compile(r"\[(--[\w-]+) [A-Z]\]"), r"\1 1"),
    # `data [--verify]`: an optional flag in brackets; checked given.
    (re.compile(r"\[(--[\w-]+)\]"), r"\1"),
)
# `subliminal-mnist sweep NAME`: the sweep a reader chooses. NAME parses as any positional would; a real
# name written in a page is checked against the sweeps there are (see `command_problem`).
SWEEP_PLACEHOLDER = "NAME"


def links(text: str) -> list[str]:
    """The relative link and image targets of a Markdown page, without their #anchors."""
    targets = (match.group(1) for match in LINK.finditer(text))
    relative = (t for t in targets if not re.match(r"(https?|mailto):|#", t))
    return [target.split("#")[0] for target in relative]


def broken_links(root: pathlib.Path, page: str) -> list[str]:
    """`page: target` for every relative link of `page` (a path under `root`) that names no file there."""
    where = (root / page).parent
    problems = []
    for target in links((root / page).read_text()):
        path = pathlib.Path(os.path.normpath(where / target))
        if not path.is_relative_to(root) or not path.exists():
            problems.append(f"{page}: {target}")
    return problems


def quoted_commands(text: str) -> list[str]:
    """What follows `subliminal-mnist` in each code span and each line of a code block.

    A code span may wrap onto the next line (Markdown reads the line break as a space); in a code
    block (fenced, or indented by four spaces) a command ends with its line, or, as in a shell, goes on
    to the next where the line ends with a backslash. Either ends at a `#` comment, `;`, `&&` or `|`.
    """
    code, prose, fenced, continued = [], [], False, False
    for line in text.splitlines():
        if continued:  # the previous code line ended with a backslash: this one is the rest of it
            code[-1] = code[-1][:-1] + " " + line.strip()
        elif FENCE.match(line):
            fenced = not fenced
            continue
        elif fenced or line.startswith("    ") and line.lstrip().startswith("subliminal-mnist"):
            code.append(line.rstrip())
        else:
            prose.append(line)
            continue
        continued = code[-1].endswith("\\")
    spans = [span for span in CODE_SPAN.findall("\n".join(prose)) if "subliminal-mnist" in span]
    found = [COMMAND.search(" ".join(piece.split())) for piece in (*spans, *code)]
    return [COMMAND_END.split(match.group(1))[0].strip() for match in found if match]


def command_problem(command: str) -> str | None:
    """Why `subliminal-mnist COMMAND` would not parse with the current command line, or None."""
    for pattern, replacement in PLACEHOLDERS:
        command = pattern.sub(replacement, command)
    words = shlex.split(command)
    if "--help" in words or "-h" in words:
        return None  # argparse's own; it prints the help and exits 0
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = cli.build_parser().parse_args(words)
    except SystemExit as e:
        return (stderr.getvalue().strip() or f"exit {e.code}") if e.code else None
    if args.command == "sweep" and args.name != SWEEP_PLACEHOLDER and args.name not in sweep.SWEEPS:
        return f"no sweep named {args.name!r}"
    return None


def bad_commands(root: pathlib.Path, page: str) -> list[str]:
    """`page: subliminal-mnist COMMAND: why` for every quoted command of `page` that does not parse."""
    problems = []
    for command in quoted_commands((root / page).read_text()):
        why = command_problem(command)
        if why:
            problems.append(f"{page}: subliminal-mnist {command}: {why}")
    return problems


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    assert broken_links(ROOT, page) == []


@pytest.mark.parametrize("page", PAGES)
def test_every_quoted_command_parses(page):
    assert bad_commands(ROOT, page) == []


def test_the_pages_quote_the_commands_they_are_about():
    quoted = {page: quoted_commands((ROOT / page).read_text()) for page in PAGES}
    assert "demo" in quoted["README.md"] and "defend mnist" in quoted["docs/defenses.md"]
    assert "llm --trait misaligned" in quoted["docs/misaligned.md"]
    assert "sweep lora --out figures" in quoted["docs/lora.md"] and "llm-lora --out figures" in quoted["docs/lora.md"]
    # A shell line continued with a backslash is one command.
    assert quoted_commands("```bash\nsubliminal-mnist defend owl --mode hard \\\n  --defenses sort\n```") == [
        "defend owl --mode hard --defenses sort"
    ]
    # A span wrapped onto the next line is read whole, and a comment is not part of a command.
    assert quoted_commands("see `subliminal-mnist llm\n  --mode soft` and\n    subliminal-mnist theorem   # 30 s") == [
        "llm --mode soft",
        "theorem",
    ]


def test_the_docs_directory_has_a_page_per_topic():
    topics = {"mnist", "theorem", "alignment", "owl", "misaligned", "sweeps", "defenses", "lora", "speed", "teaching"}
    assert {f"docs/{topic}.md" for topic in topics} <= set(PAGES)
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for topic in topics:
        assert f"(docs/{topic}.md" in readme, f"the README does not link docs/{topic}.md"


def test_the_checks_report_a_broken_link_and_a_bad_option(tmp_path):
    # A copy of the repository where README.md and one docs page are the edited copies: every other
    # file the pages link to is the repository's own, linked in.
    for entry in ROOT.iterdir():
        if entry.name not in {"README.md", "docs", ".git"}:
            (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / "docs").mkdir()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "owl.md":
            (tmp_path / "docs" / page.name).symlink_to(page)
    readme = (ROOT / "README.md").read_text()
    assert "(docs/owl.md)" in readme
    (tmp_path / "README.md").write_text(readme.replace("(docs/owl.md)", "(docs/owls.md)", 1))
    owl = (ROOT / "docs/owl.md").read_text()
    assert "subliminal-mnist llm --seeds 1 --mode soft" in owl
    (tmp_path / "docs/owl.md").write_text(owl.replace("llm --seeds 1 --mode soft", "llm --seedz 1 --mode soft", 1))

    problems = [problem for page in PAGES for problem in (*broken_links(tmp_path, page), *bad_commands(tmp_path, page))]
    assert len(problems) == 2, problems
    assert problems[0] == "README.md: docs/owls.md"
    assert problems[1].startswith("docs/owl.md: subliminal-mnist llm --seedz 1 --mode soft: ")
    assert "unrecognized arguments: --seedz" in problems[1]
