"""Post stages on an output folder of N images (issue 22): `deepscope index`, `knn`, `map` as a user
types them (start-up included, fresh processes), then each again with nothing to do; this tree
beside a baseline commit (checked out in a temporary git worktree) in the same run, each on a copy
of the same output. Prints the load average beside every number: a time taken above load 1 is not
a result.

    python bench/post.py                      # 1,000 images, baseline de1ed23 (before issue 22)
    python bench/post.py --images 1000 --baseline HEAD~3
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load() -> float:
    return os.getloadavg()[0]


def timed(args: list[str], lib: Path) -> tuple[float, float, int]:
    env = {**os.environ, "PYTHONPATH": str(lib)}
    env.pop("RAY_ADDRESS", None)
    before = load()
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        print(p.stderr[-2000:], file=sys.stderr)
    return wall, before, p.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--baseline", default="de1ed23", help="a commit to compare with (default: before issue 22)")
    ap.add_argument("--work", default=None, help="folder for the outputs (default: a temporary one)")
    a = ap.parse_args()

    work = Path(a.work or tempfile.mkdtemp(prefix="deepscope-post-"))
    base_tree = work / "baseline-tree"
    if not base_tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), a.baseline],
                       check=True, capture_output=True)
    trees = {"this tree": ROOT / "lib", f"baseline {a.baseline}": base_tree / "lib"}

    source = work / "source"
    if not (source / "manifest.json").exists():
        print(f"features of synthetic:{a.images} (AlexNet, random weights: a benchmark, no real network) ...",
              file=sys.stderr)
        _, _, rc = timed(["features", f"synthetic:{a.images}", "--out", str(source), "--model", "torchvision:alexnet",
                          "--weights", "random", "--layer", "fc7"], trees["this tree"])
        assert rc == 0
    rows = []
    for name, lib in trees.items():
        out = work / f"out-{name.split()[0]}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(source, out)
        for cmd in (["index"], ["knn"], ["map", "--method", "pca"], ["map", "--method", "tsne"]):
            for attempt in ("first", "nothing to do"):
                wall, before, rc = timed([cmd[0], str(out), *cmd[1:]], lib)
                rows.append((name, " ".join(cmd), attempt, wall, before, rc))
    print(f"\n{a.images} images; {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'tree':<22} {'command':<16} {'run':<14} {'wall s':>8} {'load before':>12} {'rc':>3}")
    for name, cmd, attempt, wall, before, rc in rows:
        print(f"{name:<22} {cmd:<16} {attempt:<14} {wall:>8.2f} {before:>12.2f} {rc:>3}")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], capture_output=True)


if __name__ == "__main__":
    main()
