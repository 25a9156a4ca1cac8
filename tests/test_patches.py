"""Maximally activating patches: the exact top k against brute force, the same tables whatever the
actor count, batch size and partitioning, bad names as one error line; and the filters /
activations figures."""
import io
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deepscope import job as jobmod
from deepscope.algos.topk import top_k_rows
from deepscope.cli import main
from deepscope.errors import UserError
from deepscope.io.store import Store
from deepscope.models.receptive import receptive_field
from deepscope.models.registry import load_model
from deepscope.models.taps import forward_with_taps
from deepscope.runner import load_spec, run
from deepscope.stages.patches import Patches, PatchesConfig, original_box
from deepscope.io.ranges import parse_channels
from imagezoo import reference_rgb
from test_features import small_dataset

K = 3
CHANNELS = "0-39,100,255"  # of features.10 (256) and fc7 (4096)


def spec(data, out, model, weights, layers=None, channels=None, **run_args):
    """A features job (penultimate), plus patches of `layers` when given, in one pass."""
    job = {"out": str(out), "dataset": {"source": str(data)}, "model": {"name": model, "weights": weights},
           "run": {"batch_size": 2, "partition_size": 2, **run_args},  # 3 parts to merge
           "features": {"layer": "penultimate"}}
    if layers:
        job["patches"] = {"layers": layers, "k": K, "max_side": 0, **({"channels": channels} if channels else {})}
    return jobmod.validate(job)


def brute_force(model, weights, layer, paths, ids, channels):
    """Every activation of every image computed directly -> {channel: [(max, argmax, id, all values)]},
    images sorted by max descending, then id."""
    loaded = load_model(model, weights)
    tf = loaded.transform.torchvision()
    with torch.inference_mode():
        _, taps = forward_with_taps(loaded, torch.stack([tf(reference_rgb(p)) for p in paths]), [layer])
    act = taps[layer].numpy()
    act = act.reshape(act.shape[0], act.shape[1], -1)[:, channels]  # (N, C, H*W)
    return {c: sorted(((float(act[n, ci].max()), int(act[n, ci].argmax()), ids[n], act[n, ci]) for n in range(len(ids))),
                      key=lambda t: (-t[0], t[2]))
            for ci, c in enumerate(channels)}


def decided(values, best, tol) -> bool:
    """Is the first maximum of `values` the same whatever float noise of size tol: no other value
    within tol of it, or all of those exactly equal (an exact tie goes to the first)?"""
    near = np.abs(np.asarray(values) - best) <= tol * (1 + abs(best))
    return near.sum() == 1 or bool(np.all(np.asarray(values)[near] == best))


def check_top_k(table, map_w, want, tol=1e-4):
    """Ranks, ids, scores and positions equal the brute force; where two values differ by less than
    float noise (batching changes the last bits) the order between them is not checked."""
    got = table.to_pandas()
    got["position"] = got["row"] * map_w + got["col"]
    assert sorted(got["channel"].unique()) == sorted(want)
    checked = 0
    for c, ranked in want.items():
        rows = got[got["channel"] == c].sort_values("rank")
        assert list(rows["rank"]) == list(range(K))
        np.testing.assert_allclose(rows["score"], [s for s, *_ in ranked[:K]], rtol=tol, atol=tol)
        scores = [s for s, *_ in ranked]
        for r, (s, pos, image_id, values) in enumerate(ranked[:K]):
            if decided(scores, s, tol):
                assert rows["id"].iloc[r] == image_id, (c, r)
                if decided(values, s, tol):
                    assert rows["position"].iloc[r] == pos, (c, r)
                    checked += 1
    assert checked >= len(want)  # most places are clear: the check is not vacuous


def read_top(out, layer):
    return pq.read_table(out / f"patches/top-{layer}.parquet")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("photos"), n_per_label=2)  # 6 images


@pytest.fixture(scope="module")
def alexnet_runs(ray_cluster, photos, tmp_path_factory):
    """Patches added to a features folder by the CLI (one actor, batches of 2, 3 parts), and features +
    patches in one job (two actors, batches of 4, 2 parts)."""
    root = tmp_path_factory.mktemp("alexnet")
    run(spec(photos, root / "one", "torchvision:alexnet", "random", actors=1))
    assert main(["patches", str(root / "one"), "--layer", "features.10", "--layer", "fc7", "--k", str(K),
                 "--channels", CHANNELS, "--max-side", "0"]) == 0
    actors = 2  # CPU actors reserve half a CPU each, so decode tasks still run beside them
    run(spec(photos, root / "two", "torchvision:alexnet", "random", ["features.10", "fc7"], parse_channels(CHANNELS),
             actors=actors, batch_size=4, partition_size=4))
    return root


def test_alexnet_top_k_equals_brute_force(alexnet_runs, photos):
    ids = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.jpg"))
    channels = parse_channels(CHANNELS)
    for layer, map_w in (("features.10", 13), ("fc7", 1)):
        table = read_top(alexnet_runs / "one", layer)
        assert table.num_rows == len(channels) * K
        check_top_k(table, map_w, brute_force("torchvision:alexnet", "random", layer, [photos / i for i in ids],
                                              ids, channels))


def test_one_actor_and_two_give_the_same_tables(alexnet_runs):
    for layer in ("features.10", "fc7"):
        one, two = (read_top(alexnet_runs / a, layer) for a in ("one", "two"))
        assert one.drop(["score"]).equals(two.drop(["score"]))
        np.testing.assert_allclose(one["score"].to_numpy(), two["score"].to_numpy(), rtol=1e-5, atol=1e-5)


def test_lite0_top_k_equals_brute_force_and_patches_are_the_boxes(ray_cluster, photos, tmp_path):
    layer, channels = "_blocks.4", list(range(40))  # every channel (none named)
    out = tmp_path / "out"
    run(spec(photos, out, "lite0", None, [layer]))
    table = read_top(out, layer)
    ids = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.jpg"))
    check_top_k(table, 28, brute_force("lite0", None, layer, [photos / i for i in ids], ids, channels))
    # each patch is its box cut from the original picture, at full resolution (max_side = 0)
    loaded = load_model("lite0")
    rf = receptive_field(loaded, layer)
    for r in table.to_pylist()[:6]:
        original = reference_rgb(photos / r["id"])
        box = original_box(rf.box(r["row"], r["col"], 224), *original.size, loaded.transform)
        assert (r["x0"], r["y0"], r["x1"], r["y1"]) == box
        patch = np.asarray(Image.open(io.BytesIO(r["patch"])))
        np.testing.assert_array_equal(patch, np.asarray(original.crop(box)))
    # the features of the same job came from the same single pass
    assert Store(out).read("features").num_rows == 6
    grid = Image.open(out / "patches/grid-_blocks.4-000.jpg")
    assert grid.size[1] == 2 + 32 * (64 + 2)  # rows = channels (32 a page), tile 64, pad 2
    assert Image.open(out / "patches/grid-_blocks.4-001.jpg").size[1] == 2 + 8 * (64 + 2)
    assert "_blocks.4" in (out / "report/index.html").read_text()


def test_merge_is_exact_for_any_partition_and_order():
    """Many exact ties: every split into parts, merged in any order, gives the brute-force order."""
    rng = random.Random(0)
    n, k = 60, 5
    cand = [(c, float(rng.randint(0, 6)), f"img{i:03d}") for c in range(4) for i in rng.sample(range(200), n)]
    want = {c: sorted((x for x in cand if x[0] == c), key=lambda x: (-x[1], x[2]))[:k] for c in range(4)}

    def reduce(rows):
        keep, _ = top_k_rows(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                             np.array([r[2] for r in rows]), k)
        return [rows[i] for i in keep]

    for trial in range(5):
        rng.shuffle(cand)
        cuts = sorted(rng.sample(range(1, len(cand)), 7))
        parts = [reduce(cand[a:b]) for a, b in zip([0] + cuts, cuts + [len(cand)])]
        rng.shuffle(parts)
        best = []
        for p in parts:
            best = reduce(best + p)
        assert best == [x for c in range(4) for x in want[c]]


def test_bad_layer_or_channel_is_one_error_line(alexnet_runs, capsys):
    out = str(alexnet_runs / "one")
    job = load_spec(out)  # a job file's [patches]: checked on the driver before the pass
    with pytest.raises(UserError, match="unknown layer 'features.99'"):
        Patches(PatchesConfig(layers=["features.99"]), job).prepare(None)
    with pytest.raises(UserError, match="channel 300 does not exist in layer 'features.10'.*256 channels"):
        Patches(PatchesConfig(layers=["features.10"], channels=[1, 300]), job).prepare(None)
    for argv, needle in ((["patches", out, "--layer", "nope"], "unknown layer 'nope'"),
                         (["patches", out, "--layer", "features.10", "--channels", "9-2"], "bad --channels"),
                         (["patches", out, "--layer", "features.10", "--channels", "256"], "channel 256 does not"),
                         (["patches", "/no/such/folder", "--layer", "x"], "not a deepscope output folder"),
                         (["filters", "torchvision:alexnet", "--weights", "random", "--layer", "classifier.1",
                           "--out", "/tmp/never.png"], "not a convolution"),
                         (["activations", "torchvision:alexnet", "/no/such.jpg", "--weights", "random",
                           "--layer", "features.10", "--out", "/tmp/never.png"], "image not found")):
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (argv, err)


def test_filters_figure_is_the_normalized_weights(tmp_path, capsys):
    w = load_model("torchvision:alexnet", "random").module.features[0].weight.detach().numpy()  # 64x3x11x11
    assert main(["filters", "torchvision:alexnet", "--weights", "random", "--out", str(tmp_path / "f.png")]) == 0
    img = np.asarray(Image.open(tmp_path / "f.png"))
    side = 44  # 4 px per weight, 8 x 8 filters, 2 px apart
    assert img.shape == (8 * (side + 2) + 2, 8 * (side + 2) + 2, 3)
    f = w[9]  # row 1, column 1 of the grid
    want = np.rint((f - f.min()) / (f.max() - f.min()) * 255).transpose(1, 2, 0)
    y0 = x0 = 2 + (side + 2)
    np.testing.assert_array_equal(img[y0:y0 + side:4, x0:x0 + side:4], want)
    assert main(["filters", "torchvision:alexnet", "--weights", "random", "--layer", "features.3",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(tmp_path / "g.png").size == (32 * (24 + 1) + 1, 64 * (24 + 1) + 1)  # 64 filters x 32 inputs
    assert "features.3: weights 192x64x5x5" in capsys.readouterr().out


def test_activations_figure_and_strongest_channels(photos, tmp_path, capsys):
    image = sorted(photos.rglob("*.jpg"))[0]
    args = ["activations", "torchvision:alexnet", str(image), "--weights", "random", "--layer", "features.10",
            "--out", str(tmp_path / "a.png"), "--top", "3"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    loaded = load_model("torchvision:alexnet", "random")
    from deepscope.io.decode import decode
    x = loaded.transform.normalize(torch.from_numpy(loaded.transform.geometry(decode(image.read_bytes())[0]))[None])
    _, taps = forward_with_taps(loaded, x, ["features.10"])
    maxes = taps["features.10"][0].flatten(1).max(1).values.numpy()
    assert [int(line.split()[0]) for line in lines[2:]] == list(np.argsort(-maxes, kind="stable")[:3])
    assert Image.open(tmp_path / "a.png").size == (16 * (26 + 1) + 1,) * 2  # 256 maps of 13x13, 16 x 16 grid
