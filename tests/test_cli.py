"""Bad arguments and job files: one clear error line, exit code 2, no traceback."""
import subprocess
import sys

import pytest

from deepscope import job as jobmod
from deepscope.cli import main
from deepscope.errors import UserError


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("argv,needle", [
    ([], "required"),
    (["features"], "required"),
    (["features", "/nonexistent/dir", "--out", "/tmp/x"], "dataset not found"),
    (["features", "d", "--out", "o", "--batch-size", "zero"], "invalid int"),
    (["features", "d", "--out", "o", "--batch-size", "0"], "batch_size"),
    (["run", "/no/such/job.toml"], "job file not found"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_one_line(capsys, argv, needle):
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("deepscope: error:") and needle in err[0], err


@pytest.mark.parametrize("text,needle", [
    ('out="o"\n[dataset]\nsource="d"\n[features]\nlayr="fc7"\n', "unknown key 'features.layr'"),
    ('out="o"\n[dataset]\nsource="d"\n[run]\nbatch_size="big"\n', "'run.batch_size'"),
    ('out="o"\n[features]\n', "missing key 'dataset'"),
    ('out="o"\n[dataset]\nsource="d"\n[bogus]\n', "unknown key 'bogus'"),
    ('out = \n', "not valid TOML"),
])
def test_bad_job_files(capsys, tmp_path, text, needle):
    (tmp_path / "j.toml").write_text(text)
    code, err = run_cli(capsys, "run", str(tmp_path / "j.toml"))
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_job_without_stage_is_an_error(tmp_path):
    spec = jobmod.validate({"out": str(tmp_path / "o"), "dataset": {"source": str(tmp_path)}})
    from deepscope.runner import run
    with pytest.raises(UserError, match="names no stage"):
        run(spec)


def test_missing_weights_file_names_it(capsys, tmp_path):
    code, err = run_cli(capsys, "features", str(tmp_path), "--out", str(tmp_path / "o"),
                        "--model", "torchvision:alexnet", "--weights", "/no/such/alexnet.pth")
    assert code == 2 and len(err) == 1 and "/no/such/alexnet.pth" in err[0]


def test_console_script_exit_code():
    p = subprocess.run([sys.executable, "-m", "deepscope.cli", "features"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


def test_shipped_jobs_validate():
    from pathlib import Path
    for f in sorted((Path(__file__).parents[1] / "jobs").glob("*.toml")):
        assert jobmod.load(f).stage_configs(), f
