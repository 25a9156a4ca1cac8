"""The documentation's runnable examples, run on a miniature of the demo output so they cannot rot.

A fenced block is runnable when its info string says so (the MkDocs hook drops these words, GitHub
ignores them, both highlight the block as its language):
  ```console runnable   lines starting with `$ ` are commands, the lines under one its expected output
  ```bash runnable      a script: it must exit 0
  ```python runnable    a Python script: it must exit 0
  ... runnable slow     run only with DEEPSCOPE_DOCS_ALL=1 (the default subset takes about a minute)
A block whose info string is `text output`, right after a runnable one, is that block's expected output.
Expected output matches line for line; `...` stands for any text (also several lines). A command whose
expected output has a `deepscope: error:` or `deepscope: job failed:` line must exit non-zero, every
other command 0.

Every block runs in one working folder (README first, then docs/*.md; a block needs only the blocks above it
on its page), where the module's fixture made `data/demo` (12 demo images) and `runs/demo` (their lite0 features and
both indexes): what `make demo` gives, in small.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))  # not incoming/
ALL = os.environ.get("DEEPSCOPE_DOCS_ALL") == "1"
FENCE = re.compile(r"^(```+|~~~+)[ \t]*(\S*)[ \t]*(.*)$")
FAILS = ("deepscope: error:", "deepscope: job failed:")
WORLD_JOB = """out = "runs/demo"
[dataset]
source = "data/demo"
[run]
executor = "local"
[features]
[pixels]
[index]
spaces = ["features", "pixels"]
"""  # jobs/demo.toml's first stages: one pass for features and pixels, then both indexes


def blocks(page: Path) -> list[dict]:
    """Every fenced block of a page: its language, its info words, its text and its first line."""
    out, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(m.group(1)):
            j += 1
        indent = len(lines[i]) - len(lines[i].lstrip())
        body = "\n".join(line[indent:] for line in lines[i + 1:j])
        out.append({"lang": m.group(2), "words": m.group(3).split(), "text": body, "line": i + 1})
        i = j + 1
    return out


def runnable() -> list:
    found = []
    for rel in PAGES:
        page_blocks = blocks(ROOT / rel)
        for k, b in enumerate(page_blocks):
            if "runnable" not in b["words"]:
                continue
            nxt = page_blocks[k + 1] if k + 1 < len(page_blocks) else None
            b["expected"] = nxt["text"] if nxt and nxt["lang"] == "text" and "output" in nxt["words"] else None
            marks = [] if ALL or "slow" not in b["words"] else [pytest.mark.skip("slow: DEEPSCOPE_DOCS_ALL=1 runs it")]
            found.append(pytest.param(b, id=f"{rel}:{b['line']}", marks=marks))
    return found


def matches(expected: str, actual: str) -> bool:
    """Line for line, `...` standing for any text (several lines too); trailing spaces ignored."""
    norm = lambda s: "\n".join(line.rstrip() for line in s.strip("\n").splitlines())
    pattern = ".*?".join(re.escape(piece) for piece in norm(expected).split("..."))
    return re.fullmatch(pattern, norm(actual), flags=re.S) is not None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The working folder: 12 demo images, their features and both indexes (the demo's output, in small)."""
    where = tmp_path_factory.mktemp("docs")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONUNBUFFERED="1")  # stdout and stderr in the order they were written, as on a terminal
    (where / "world.toml").write_text(WORLD_JOB)
    for cmd in ["deepscope demo-data data/demo --per-photo 2", "deepscope run world.toml"]:
        done = subprocess.run(cmd, shell=True, cwd=where, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return where, env


def run(cmd: list[str] | str, world, **kw) -> subprocess.CompletedProcess:
    where, env = world
    return subprocess.run(cmd, cwd=where, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900, **kw)


def sessions(text: str) -> list[tuple[str, str]]:
    """A console block as (command, expected output) pairs; a command may go on over `\\` lines."""
    pairs, lines = [], text.splitlines()
    for line in lines:
        if line.startswith("$ "):
            pairs.append([line[2:], ""])
        elif pairs and pairs[-1][0].endswith("\\") and not pairs[-1][1]:
            pairs[-1][0] += "\n" + line
        elif pairs:
            pairs[-1][1] += line + "\n"
    return [(c, o) for c, o in pairs]


@pytest.mark.parametrize("block", runnable())
def test_example(block, world):
    if block["lang"] == "console":
        for cmd, expected in sessions(block["text"]):
            done = run(["bash", "-c", cmd], world)
            should_fail = any(line.startswith(FAILS) for line in expected.splitlines())
            assert (done.returncode != 0) == should_fail, f"$ {cmd}\nexit {done.returncode}\n{done.stdout}"
            if expected.strip():
                assert matches(expected, done.stdout), f"$ {cmd}\nexpected:\n{expected}\ngot:\n{done.stdout}"
        return
    if block["lang"] in ("bash", "sh"):
        done = run(["bash", "-euo", "pipefail", "-c", block["text"]], world)
    elif block["lang"] == "python":
        done = run([sys.executable, "-c", block["text"]], world)
    else:
        pytest.fail(f"runnable block of unknown language {block['lang']!r}")
    assert done.returncode == 0, f"{block['text']}\nexit {done.returncode}\n{done.stdout}"
    if block["expected"] is not None:
        assert matches(block["expected"], done.stdout), f"expected:\n{block['expected']}\ngot:\n{done.stdout}"


def test_every_page_has_an_example_that_runs_by_default():
    """The fast subset is not empty, and every runnable block parses (a console block has a command)."""
    fast = [p for p in runnable() if not p.marks]
    assert len(fast) >= 5
    for p in runnable():
        b = p.values[0]
        assert b["lang"] in ("console", "bash", "sh", "python"), p.id
        if b["lang"] == "console":
            assert sessions(b["text"]), p.id


def test_matches():
    assert matches("done: ... images -> x\n", "done: 12 images -> x")
    assert matches("a\n...\nz", "a\nb\nc\nz")
    assert not matches("done: 12 images", "done: 13 images")
    assert not matches("a\nz", "a\nb\nz")


def test_site_builds_without_warnings_and_documents_every_command(tmp_path):
    """`make docs`' build (--strict: a broken link or anchor fails it); the CLI page names every command."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    from deepscope.commands import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    cli_page = (tmp_path / "site" / "cli" / "index.html").read_text()
    missing = [name for name in commands if f'id="deepscope-{name}"' not in cli_page]
    assert not missing, missing
