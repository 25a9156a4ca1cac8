"""The house's rules (issue 15): layers that point down, and a command line that imports no torch."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_down_only():
    """The import-linter contracts in .importlinter: a new back-edge, or a stage importing another, fails here."""
    p = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), str(ROOT / ".importlinter"),
                        "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "2 kept, 0 broken" in p.stdout


def test_help_imports_no_heavy_library():
    """`deepscope --help` and every `deepscope COMMAND --help` build the parser without torch, Ray,
    FAISS, OpenCV or Captum: each command's code is imported only when it runs."""
    code = ("import sys\nfrom deepscope.commands import build_parser\np = build_parser()\n"
            "for c in p._subparsers._group_actions[0].choices.values():\n    c.format_help()\n"
            "heavy = [m for m in ('torch', 'ray', 'faiss', 'cv2', 'captum', 'sklearn') if m in sys.modules]\n"
            "print(len(p._subparsers._group_actions[0].choices), heavy)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    n, heavy = p.stdout.split(" ", 1)
    assert int(n) >= 28 and heavy.strip() == "[]", p.stdout


def test_every_command_names_an_existing_function():
    import importlib

    from deepscope.commands import build_parser

    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        module, fn = sub.get_default("fn").split(":")
        assert callable(getattr(importlib.import_module(module), fn)), name


def test_index_kinds_offered_are_the_builder_kinds():
    from deepscope.commands.space import KINDS
    from deepscope.index.build import KINDS as BUILT

    assert tuple(KINDS) == tuple(BUILT)
