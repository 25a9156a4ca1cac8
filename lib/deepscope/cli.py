"""deepscope's command line: parse, build a job, call the runner.

Bad input gets one error line and exit code 2; a job over its error budget exits 3.
"""
from __future__ import annotations

import argparse
import sys

from deepscope.errors import UserError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{self.prog}: {message}")


def _common_run_args(p):
    p.add_argument("--model", default="lite0", help="lite0 | torchvision:NAME | timm:NAME | torchscript:FILE")
    p.add_argument("--weights", help="weights file (default: the model's own); 'random' for tests")
    p.add_argument("--batch-size", type=int, help="images per model batch (default 64)")
    p.add_argument("--actors", type=int, help="CPU model actors when there is no GPU (default 1)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")
    p.add_argument("--max-error-rate", type=float, help="fail the job when more inputs fail (default 0.5)")
    p.add_argument("--verify", action="store_true", default=None,
                   help="also check every committed part's sha256 before running (sizes are always checked)")


def _run_section(a) -> dict:
    keys = {"batch_size": a.batch_size, "actors": a.actors, "address": a.address, "precision": a.precision,
            "max_error_rate": a.max_error_rate, "verify": getattr(a, "verify", None)}
    return {k: v for k, v in keys.items() if v is not None}


def cmd_features(a):
    from deepscope import job as jobmod
    from deepscope.runner import run

    spec = jobmod.validate({
        "out": a.out, "dataset": {"source": a.data},
        "model": {"name": a.model, "weights": a.weights},
        "run": _run_section(a),
        "features": {"layer": a.layer, "dtype": a.dtype},
    }, "arguments")
    run(spec)


def cmd_run(a):
    from deepscope import job as jobmod
    from deepscope.runner import run

    spec = jobmod.load(a.job)
    if a.out:
        spec.out = a.out
    if a.address:
        spec.run.address = a.address
    if a.verify:
        spec.run.verify = True
    run(spec)


def cmd_layers(a):
    from deepscope.models.registry import load_model
    from deepscope.models.taps import list_layers

    loaded = load_model(a.model, a.weights)
    print(f"# {a.model}  weights: {loaded.weights}")
    for name, kind, shape in list_layers(loaded):
        print(f"{name:40s} {kind:28s} {'x'.join(map(str, shape))}")


def cmd_demo_data(a):
    from deepscope.demo_data import make_demo_data

    n = make_demo_data(a.dir, per_photo=a.per_photo)
    print(f"wrote {n} images to {a.dir}")


# Modules that add their own subcommands through add_commands(subparsers, Parser).
# Each stage's or service's module adds one line here.
COMMAND_MODULES = [
    "deepscope.index.commands",
    "deepscope.submit",
    "deepscope.visualize_units",
    "deepscope.stages.saliency",
    "deepscope.style_commands",
    "deepscope.stages.dissect",
    "deepscope.optimize",
]


def build_parser() -> Parser:
    p = Parser(prog="deepscope", description="Visualizing and understanding CNNs at dataset scale, on Ray.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    f = sub.add_parser("features", help="features of every image of a dataset, in Parquet")
    f.add_argument("data", help="folder, .parquet/.csv manifest with a path column, a glob of manifest shards "
                                "('shards/*.parquet'), synthetic:N, or a URL (s3://...)")
    f.add_argument("--out", required=True, help="output folder or URL (s3://bucket/prefix, gs://...)")
    f.add_argument("--layer", default="penultimate", help="fc7, penultimate, logits or a module name")
    f.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    _common_run_args(f)
    f.set_defaults(fn=cmd_features)

    r = sub.add_parser("run", help="run every stage a job file names")
    r.add_argument("job", help="job file (TOML)")
    r.add_argument("--out", help="override the job's output folder")
    r.add_argument("--address", help="Ray cluster address")
    r.add_argument("--verify", action="store_true", help="also check every committed part's sha256 before running")
    r.set_defaults(fn=cmd_run)

    la = sub.add_parser("layers", help="list a model's layers with output shapes")
    la.add_argument("model")
    la.add_argument("--weights")
    la.set_defaults(fn=cmd_layers)

    inf = sub.add_parser("info", help="what an output folder holds: job, stages, rows, errors, timings")
    inf.add_argument("out", help="output folder or URL")
    inf.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    inf.set_defaults(fn=lambda a: __import__("deepscope.report.info", fromlist=["cmd_info"]).cmd_info(a))

    d = sub.add_parser("demo-data", help="write the embedded demo dataset")
    d.add_argument("dir")
    d.add_argument("--per-photo", type=int, default=50)
    d.set_defaults(fn=cmd_demo_data)

    import importlib
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub, Parser)
    return p


def main(argv: list[str] | None = None) -> int:
    from deepscope.executor import PassFailed
    from deepscope.runner import JobFailed

    try:
        args = build_parser().parse_args(argv)
        args.fn(args)
        return 0
    except UserError as e:
        print(f"deepscope: error: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:
        print(f"deepscope: job failed: {e}", file=sys.stderr)
        return 3
    except PassFailed as e:
        print(f"deepscope: job failed: {e}; run the same command again to resume", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("deepscope: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
