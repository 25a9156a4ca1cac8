"""deepscope installs like a package: a wheel built with `python -m build` goes into a clean venv and
`deepscope --version` and `deepscope features` run from it.

The clean venv sees the test venv's site-packages through a .pth line (torch, Ray and the rest are not
installed again: that would take minutes and the network), but not its editable deepscope: a .pth line
adds a folder without running the .pth files in it, and the wheel's own site-packages comes first.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "runs", "data", "site", "build", "dist", "__pycache__", "*.egg-info",
                              ".pytest_cache", ".import_linter_cache")


def sh(cmd: list, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)  # a copy: building writes egg-info and build/ into the tree
    # --no-isolation: the build backend (setuptools) of this venv, nothing fetched from an index
    sh([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)])
    (found,) = (tmp / "dist").glob("deepscope-*.whl")
    return found


def test_wheel_holds_the_package_and_its_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "lib" / "deepscope"
    expected = {p.relative_to(ROOT / "lib").as_posix() for p in package.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert expected <= names, sorted(expected - names)  # every module and data file (serve/static, ...)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines() if line.startswith("Requires-Dist")]
    runtime = [r for r in requires if "extra ==" not in r]
    for test_only in ("pytest", "moto", "selenium", "import-linter", "mkdocs"):
        assert not any(r.split()[1].startswith(test_only) for r in runtime), (test_only, runtime)
    assert any("extra == \"test\"" in r and "pytest" in r for r in requires)


def test_wheel_installs_and_runs_in_a_clean_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    sh([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    purelib = sh([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "shared-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, Ray, ...
    # --ignore-installed: never touch the shared venv's editable deepscope; --no-deps: nothing downloaded
    sh([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--ignore-installed",
        "--no-index", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    where = sh([str(py), "-c", "import deepscope; print(deepscope.__file__)"], env=env, cwd=tmp_path).stdout
    assert where.startswith(purelib), where  # the wheel's copy, not the checkout's

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert sh([str(venv / "bin" / "deepscope"), "--version"], env=env, cwd=tmp_path).stdout.strip() == f"deepscope {version}"

    sh([str(py), "-c", "from deepscope.io.demo_data import make_demo_data; make_demo_data('tiny', per_photo=1)"],
       env=env, cwd=tmp_path)
    done = sh([str(venv / "bin" / "deepscope"), "features", "tiny", "--out", "out", "--executor", "local"],
              env=env, cwd=tmp_path)
    assert "done: 6 images, 0 failed, 6 computed" in done.stdout + done.stderr
    import pyarrow.parquet as pq

    rows = sum(pq.read_table(p).num_rows for p in (tmp_path / "out" / "features").glob("*.parquet"))
    assert rows == 6
