"""Run and features: `run JOB`, `features DATA`, `info OUT`, `layers MODEL`, `demo-data DIR`."""
from __future__ import annotations

from deepscope.commands.common import model_options, run_options, run_section


def add_commands(sub) -> None:
    f = sub.add_parser("features", help="features of every image of a dataset, in Parquet")
    f.add_argument("data", help="folder, .parquet/.csv manifest with a path column, a glob of manifest shards "
                                "('shards/*.parquet'), synthetic:N, or a URL (s3://...)")
    f.add_argument("--out", required=True, help="output folder or URL (s3://bucket/prefix, gs://...)")
    f.add_argument("--layer", default="penultimate", help="fc7, penultimate, logits or a module name")
    f.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    f.add_argument("--thumbs", action="store_true", help="also a 256-px thumbnail and a pixel hash of every image "
                                                          "(the explorer's gallery; `knn` verifies duplicates on them)")
    model_options(f)
    run_options(f, errors=True)
    f.set_defaults(fn="deepscope.commands.run:cmd_features")

    r = sub.add_parser("run", help="run every stage a job file names")
    r.add_argument("job", help="job file (TOML)")
    r.add_argument("--out", help="override the job's output folder")
    r.add_argument("--address", help="Ray cluster address")
    r.add_argument("--executor", choices=["auto", "local", "ray"], help="override the job's [run] executor")
    r.add_argument("--verify", action="store_true", help="also check every committed part's sha256 before running")
    r.set_defaults(fn="deepscope.commands.run:cmd_run")

    i = sub.add_parser("info", help="what an output folder holds: job, stages, rows, errors, timings")
    i.add_argument("out", help="output folder or URL")
    i.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    i.set_defaults(fn="deepscope.report.info:cmd_info")

    la = sub.add_parser("layers", help="list a model's layers with output shapes")
    la.add_argument("model")
    la.add_argument("--weights")
    la.set_defaults(fn="deepscope.commands.run:cmd_layers")

    d = sub.add_parser("demo-data", help="write the embedded demo dataset")
    d.add_argument("dir")
    d.add_argument("--per-photo", type=int, default=50)
    d.set_defaults(fn="deepscope.commands.run:cmd_demo_data")


def cmd_features(a):
    from deepscope import job as jobmod
    from deepscope.commands import T_COMMAND
    from deepscope.runner import run

    run(jobmod.validate({
        "out": a.out, "dataset": {"source": a.data},
        "model": {"name": a.model, "weights": a.weights},
        "run": run_section(a),
        "features": {"layer": a.layer, "dtype": a.dtype}, **({"thumbs": {}} if a.thumbs else {}),
    }, "arguments"), t_command=T_COMMAND)


def cmd_run(a):
    from deepscope import job as jobmod
    from deepscope.commands import T_COMMAND
    from deepscope.runner import run

    spec = jobmod.load(a.job)
    if a.out:
        spec.out = a.out
    if a.address:
        spec.run.address = a.address
    if a.executor:
        spec.run.executor = a.executor
    if a.verify:
        spec.run.verify = True
    run(spec, t_command=T_COMMAND)


def cmd_layers(a):
    from deepscope.models.registry import load_model
    from deepscope.models.taps import list_layers

    loaded = load_model(a.model, a.weights)
    print(f"# {a.model}  weights: {loaded.weights}")
    for name, kind, shape in list_layers(loaded):
        print(f"{name:40s} {kind:28s} {'x'.join(map(str, shape))}")


def cmd_demo_data(a):
    from deepscope.io.demo_data import make_demo_data

    n = make_demo_data(a.dir, per_photo=a.per_photo)
    print(f"wrote {n} images to {a.dir}")
