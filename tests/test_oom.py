"""Out of memory never fails a batch (issue 17): the batch is split in halves down to one image,
and the size that worked is kept for the following batches."""
import numpy as np
import pytest

from deepscope.io.decode import DecodeLimits, decode_partition
from deepscope.io.plan import plan
from deepscope.mapper import ModelMapper
from deepscope.models.registry import load_model
from deepscope.runner import build_stages
from test_features import small_dataset, spec


@pytest.fixture(scope="module")
def partition(tmp_path_factory):
    photos = small_dataset(tmp_path_factory.mktemp("photos"), n_per_label=3)
    job = spec(photos, tmp_path_factory.mktemp("out") / "o", "torchvision:alexnet", "random", "fc7",
               batch_size=8, partition_size=100)
    p = next(x for x in plan(str(photos), 100))
    rows = decode_partition(p, load_model("torchvision:alexnet", "random").transform, DecodeLimits())
    return job, rows


def mapped(job, rows, oom_above: int):
    m = ModelMapper(job.model_dump(mode="json"), build_stages(job), threads=2)
    m.oom_above = oom_above
    return m, m._map(rows)


def test_out_of_memory_splits_the_batch_and_keeps_the_size_that_worked(partition):
    job, rows = partition
    n = len(rows["id"])
    assert n >= 8
    _, want = mapped(job, rows, 0)
    m, got = mapped(job, rows, 3)  # the model "runs out of memory" on more than 3 images
    assert (got["error"] == "").all(), "no image failed"
    assert m.batch_size == 2, "8 -> 4 -> 2, and 2 kept for the following batches"
    np.testing.assert_allclose(got["features:feature"], want["features:feature"], rtol=1e-4, atol=1e-5)


def test_out_of_memory_on_one_image_fails_only_that_batch(partition):
    job, rows = partition
    m, got = mapped(job, rows, -1)  # even one image is too many: every good image fails, with the reason
    assert (got["error_stage"] == "model").all() and "out of memory" in got["error"][0]


def test_release_memory_gives_the_freed_heap_back():
    """Between stages the runner hands back what the last one freed (glibc keeps freed small blocks:
    2.5 GB after the index stage of 100,000 images): 240 MB of 4 KB arrays, all but one in a thousand freed."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    code = ("import numpy as np, psutil; from deepscope.runner import release_memory\n"
            "rss = lambda: psutil.Process().memory_info().rss / 2**20\n"
            "arrays = [np.ones(512) for _ in range(60_000)]; kept = arrays[999::1000]; del arrays\n"
            "before = rss(); release_memory(); print(before, rss())")
    before, after = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert before - after > 150, (before, after)
