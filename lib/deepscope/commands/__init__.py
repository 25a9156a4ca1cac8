"""deepscope's command line: the only place with argparse, one module per family of commands.

Building the parser imports no torch, Ray, Captum, OpenCV or FAISS: each command names its
function as "module:function", imported only when that command runs, so `deepscope --help` and
`deepscope COMMAND --help` answer at once. Bad input gets one error line and exit code 2; a job
over its error budget (or with a partition that keeps failing) exits 3.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from deepscope.errors import UserError

FAMILIES = ["run", "space", "units", "saliency", "dissect", "optimize", "style", "cluster"]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    p = Parser(prog="deepscope", description="Visualizing and understanding CNNs at dataset scale, on Ray.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for family in FAMILIES:
        importlib.import_module(f"deepscope.commands.{family}").add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        module, name = args.fn.split(":")
        getattr(importlib.import_module(module), name)(args)
        return 0
    except UserError as e:
        print(f"deepscope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deepscope: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:
        from deepscope.executor import PassFailed
        from deepscope.runner import JobFailed

        if isinstance(e, (JobFailed, PassFailed)):
            resume = "; run the same command again to resume" if isinstance(e, PassFailed) else ""
            print(f"deepscope: job failed: {e}{resume}", file=sys.stderr)
            return 3
        raise
