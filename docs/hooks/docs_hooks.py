"""MkDocs hooks: the CLI reference generated from argparse at build time (so it cannot drift), and
the `runnable`, `slow` and `output` words of a fenced block's info string (read by tests/test_docs.py) dropped
before rendering, so the block is highlighted as its language."""
from __future__ import annotations

import importlib
import os
import re

CLI_MARKER = "<!-- generated: cli reference -->"
RUNNABLE_FENCE = re.compile(r"^(\s*(?:```+|~~~+)\s*\w+)(?:[ \t]+(?:runnable|slow|output))+[ \t]*$", re.M)

# where each family of commands is explained (docs pages)
FAMILY_PAGES = {"run": ("Jobs, features, information", "features.md"), "space": ("Feature space", "neighbours.md"),
                "units": ("Units", "units.md"), "saliency": ("Saliency", "saliency.md"),
                "dissect": ("Dissection", "dissection.md"), "optimize": ("Pictures by optimization", "optimize.md"),
                "style": ("Style", "style.md"), "cluster": ("Clusters", "clusters.md")}


def cli_reference() -> str:
    from deepscope import commands

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: a fixed width gives the same page everywhere
    out = ["```text", commands.build_parser().format_help().rstrip(), "```"]
    for family in commands.FAMILIES:
        title, page = FAMILY_PAGES.get(family, (family, None))
        out.append(f"## {title}" + (f" ([guide]({page}))" if page else ""))
        sub = commands.Parser(prog="deepscope").add_subparsers(parser_class=commands.Parser)
        importlib.import_module(f"deepscope.commands.{family}").add_commands(sub)
        for name, parser in sub.choices.items():
            out += [f"### deepscope {name}", "```text", parser.format_help().rstrip(), "```"]
    return "\n\n".join(out)


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return RUNNABLE_FENCE.sub(r"\1", markdown)
