"""README.md and docs/ stay true to the tree: links resolve, the commands the README names exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lcnet.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Markdown links and images outside code spans: [text](target) / ![alt](target).
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`]*`", "", text)


def _relative_links(path: Path) -> list[str]:
    links = LINK.findall(_prose(path.read_text()))
    return [t.split("#")[0] for t in links if not re.match(r"[a-z]+://|#|mailto:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    missing = [t for t in _relative_links(doc) if t and not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"


def _readme_commands() -> list[list[str]]:
    """Every `lcnet ...` line in the README's bash blocks, as argv (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [
        shlex.split(line.split(" #")[0])[1:]
        for line in text.splitlines()
        if line.startswith("lcnet ")
    ]


def test_the_readme_names_lcnet_commands() -> None:
    names = {argv[0] for argv in _readme_commands()}
    assert {"synth", "train", "eval", "deblur", "plot", "export"} <= names


@pytest.mark.parametrize("argv", _readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_lcnet_command_parses(argv: list[str]) -> None:
    """Each command line the README shows is accepted by the parser as written."""
    build_parser().parse_args(argv)  # argparse exits (SystemExit) on a wrong flag or choice


def test_the_readme_op_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    example = next(b for b in blocks if "local_correlation(" in b)
    exec(compile(example, "README.md", "exec"), {})
