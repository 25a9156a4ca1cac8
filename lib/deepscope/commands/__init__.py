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
import time

T_COMMAND = time.time()  # the command's start: the run summary's "first image after" counts from here

from deepscope.errors import UserError

FAMILIES = ["run", "space", "units", "saliency", "dissect", "optimize", "style", "cluster", "app"]


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    from deepscope import __version__

    p = Parser(prog="deepscope", description="Visualizing and understanding CNNs at dataset scale, on Ray.")
    p.add_argument("--version", action="version", version=f"deepscope {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for family in FAMILIES:
        importlib.import_module(f"deepscope.commands.{family}").add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if hasattr(args, "executor"):  # a command that runs a job: its read processes spawn and
            from deepscope.executor import prestart_readers  # import on another core while this
            prestart_readers(args.executor, getattr(args, "address", None))  # one imports torch
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
    finally:  # what was started early and not taken (a failed command, a job run elsewhere)
        if "deepscope.executor" in sys.modules:
            sys.modules["deepscope.executor"].drop_prestarted()


def entry() -> None:
    """The `deepscope` script and `python -m deepscope.cli`: main(), then a prompt exit. The executor
    shuts down what the command started (a local Ray and its processes), and the interpreter's own
    teardown of torch and the rest, a second or more here for nothing, is skipped: every output is
    written and closed (atomically) by then."""
    import logging
    import os

    rc = main()
    if "deepscope.executor" in sys.modules:
        sys.modules["deepscope.executor"].shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
