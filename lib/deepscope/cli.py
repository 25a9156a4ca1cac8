"""`python -m deepscope.cli` and the `deepscope` script: the command line lives in deepscope.commands."""
from deepscope.commands import build_parser, entry, main  # noqa: F401

if __name__ == "__main__":
    entry()
