"""Network dissection: exact thresholds (numpy's quantile, any partitioning), IoU equal to a hand count
through the whole pipeline, a built red detector labelled red and a constant unit labelled nothing,
the same table from one actor and from two."""
import csv
import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deepscope import job as jobmod
from deepscope.algos import dissect as algo
from deepscope.cli import main
from deepscope.io.concepts import Concepts, encode_mask, make_concept_data
from deepscope.models.transform import Transform
from deepscope.runner import run

MEAN, STD = Transform().mean, Transform().std


class ColourUnits(torch.nn.Module):
    """Units on raw RGB in [0, 1] (the input is ImageNet-normalized): redness R-G-B, greenness G-R-B,
    and a constant 1; `pool` > 1 averages pool x pool blocks (a coarser map to upsample)."""

    def __init__(self, pool: int = 1):
        super().__init__()
        self.pool = pool
        self.conv = torch.nn.Conv2d(3, 3, 1)
        w = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [0, 0, 0]])
        with torch.no_grad():
            self.conv.weight.copy_((w * torch.tensor(STD)).view(3, 3, 1, 1))
            self.conv.bias.copy_(w @ torch.tensor(MEAN) + torch.tensor([0.0, 0, 1]))

    def forward(self, x):
        y = self.conv(x)
        return torch.nn.functional.avg_pool2d(y, self.pool) if self.pool > 1 else y


def scripted(path, pool):
    torch.jit.save(torch.jit.script(ColourUnits(pool).eval()), str(path))
    return f"torchscript:{path}"


def read_iou(out, layer="logits"):
    return pq.read_table(out / f"dissection/iou-{layer}.parquet").to_pandas()


def test_thresholds_equal_numpy_quantile_whatever_the_partitioning():
    rng = np.random.default_rng(1)
    images, units, positions = 37, 5, 49
    act = rng.normal(size=(images, units, positions)).astype(np.float32)
    act[:, 3] = np.round(act[:, 3], 1)  # many ties
    act[:, 4] = 2.0  # a constant unit
    for q in (0.005, 0.03, 0.5):
        m = algo.quantile_buffer(q, images * positions)
        per_image = [algo.top_values(a, min(m, positions)) for a in act]  # what each actor ships
        want = np.quantile(act.transpose(1, 0, 2).reshape(units, -1).astype(np.float64), 1 - q, axis=1)
        for cuts in ([images], [1] * images, [5, 20, 12]):  # partitions merged in order, as finish() does
            merged, start = np.zeros((units, 0), np.float32), 0
            for n in cuts:
                part = algo.top_values(np.concatenate(per_image[start:start + n], axis=1), m)
                merged = algo.top_values(np.concatenate([merged, part], axis=1), m)
                start += n
            np.testing.assert_array_equal(algo.threshold_from_top(merged, images * positions, q), want)


def test_upsample_keeps_constants_exact_and_is_bilinear():
    act = torch.full((2, 3, 4), 0.1)
    xs, ys = np.linspace(0, 3, 11), np.linspace(0, 2, 7)
    assert torch.all(algo.upsample(act, ys, xs) == 0.1)
    ramp = torch.arange(12.0).view(1, 3, 4)
    np.testing.assert_allclose(algo.upsample(ramp, ys, xs)[0].numpy(), ys[:, None] * 4 + xs[None, :], atol=1e-6)


# -- a hand-made Broden dataset: 256 px images of 16 px blocks, 128 px masks ---------------------
BLOCK = 16
PALETTE = {1: (200, 30, 30), 2: (40, 160, 60), 3: (40, 70, 200), 4: (235, 235, 235)}  # red, green, blue, white
NAMES = ["-", "red-c", "green-c", "blue-c", "white-c", "square", "plain"]  # 5: object, 6: scene


def hand_dataset(root, n=3, seed=0):
    """-> (root, [(rgb, colour labels, object labels or None, scene labels)] at image resolution)."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for i in range(n):
        nb = 256 // BLOCK
        colour = rng.integers(1, 5, (nb, nb))
        shade = rng.integers(-20, 21, (nb, nb, 1))  # distinct values: no plateau sits on a threshold by chance
        rgb = np.clip(np.array([PALETTE[c] for c in colour.ravel()]).reshape(nb, nb, 3) + shade, 0, 255)
        rgb = np.kron(rgb, np.ones((BLOCK, BLOCK, 1))).astype(np.uint8)
        colour = np.kron(colour, np.ones((BLOCK, BLOCK), int))
        obj = np.zeros((256, 256), int)
        y0, x0 = rng.integers(0, 160, 2) // BLOCK * BLOCK
        obj[y0:y0 + 96, x0:x0 + 96] = 5
        obj = obj if i != 2 else None  # image 2 does not annotate objects
        scene = [6] if i != 1 else []
        name = f"hand/{i}"
        (root / "images/hand").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / f"images/{name}.png")
        row = {"image": f"{name}.png", "split": "train", "ih": 256, "iw": 256, "sh": 128, "sw": 128,
               "color": f"{name}_c.png", "object": f"{name}_o.png" if obj is not None else "",
               "scene": ";".join(map(str, scene))}
        (root / f"images/{name}_c.png").write_bytes(encode_mask(colour[::2, ::2]))
        if obj is not None:
            (root / f"images/{name}_o.png").write_bytes(encode_mask(obj[::2, ::2]))
        rows.append(row)
        truth.append((rgb, colour, obj, scene))
    for fname, table in (("index.csv", rows), ("label.csv", [
            {"number": k, "name": nm, "category": "" if k == 0 else ("color(3)" if k < 5 else "object(2)" if k == 5 else "scene(2)")}
            for k, nm in enumerate(NAMES)])):
        with open(root / fname, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    return root, truth


def hand_count(module, truth, q):
    """IoU by counting mask pixels directly: mask pixel (i, j) shows original pixel (2i, 2j); the 224 px
    crop of a 256 px image starts at 16, so a mask pixel is seen when 16 <= 2i < 240, and the
    (block-constant) map value there is the model's output at input pixel (2i - 16, 2j - 16)."""
    tf = Transform().torchvision()
    with torch.no_grad():
        out = module(torch.stack([tf(Image.fromarray(rgb)) for rgb, *_ in truth])).numpy().astype(np.float64)
    thr = np.quantile(out.transpose(1, 0, 2, 3).reshape(out.shape[1], -1), 1 - q, axis=1)
    inter = np.zeros((3, len(NAMES)), np.int64)
    union = np.zeros_like(inter)
    seen = np.arange(8, 120)  # mask pixels with 16 <= 2i < 240
    for n, (rgb, colour, obj, scene) in enumerate(truth):
        a = out[n][:, 2 * seen[:, None] - 16, 2 * seen[None, :] - 16] > thr[:, None, None]  # (3, 112, 112)
        member = {lab: colour[2 * seen[:, None], 2 * seen[None, :]] == lab for lab in (1, 2, 3, 4)}
        if obj is not None:
            member[5] = obj[2 * seen[:, None], 2 * seen[None, :]] == 5
        for lab in scene:
            member[lab] = np.ones((112, 112), bool)
        for lab, m in member.items():  # an unannotated category adds nothing to its concepts' unions
            inter[:, lab] += (a & m).sum((1, 2))
            union[:, lab] += (a | m).sum((1, 2))
    return thr, inter, union


def test_iou_equals_a_hand_count(ray_cluster, tmp_path):
    root, truth = hand_dataset(tmp_path / "hand")
    model = scripted(tmp_path / "units.pt", pool=1)
    q = 0.1
    run(jobmod.validate({"out": str(tmp_path / "out"), "dataset": {"source": str(root / "images")},
                         "model": {"name": model}, "run": {"batch_size": 2, "partition_size": 2},
                         "dissect": {"layer": "logits", "concepts": str(root), "quantile": q, "concepts_per_unit": 6,
                                     "show_units": 3, "top_images": 2}}))
    thr, inter, union = hand_count(torch.jit.load(str(tmp_path / "units.pt")), truth, q)
    got = read_iou(tmp_path / "out")
    assert len(got) == 3 * 6
    for r in got.itertuples():
        assert (r.intersection, r.union) == (inter[r.unit, r.label], union[r.unit, r.label]), r
        assert r.iou == pytest.approx(inter[r.unit, r.label] / max(union[r.unit, r.label], 1), rel=1e-6)
        assert r.threshold == pytest.approx(thr[r.unit], rel=1e-6)
    best = got[got["rank"] == 1].set_index("unit")
    assert best.loc[0, "concept"] == "red-c" and best.loc[1, "concept"] == "green-c"
    assert inter[2].sum() == 0 and not best.loc[2, "detector"]  # the constant unit is never above itself


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("concepts")
    make_concept_data(root, n=16, size=96)
    c = Concepts.open(root)
    red = c.names.index("red-c")
    counts = [(m == red).mean() for e in c.entries for k, m in c.read(e)[0] if c.categories[k] == "color"]
    return root, float(np.mean(counts))


def test_red_unit_is_red_and_constant_unit_is_nothing_one_actor_or_two(ray_cluster, synthetic, tmp_path):
    root, red_share = synthetic
    model = scripted(tmp_path / "units.pt", pool=4)
    q = round(0.7 * red_share, 4)  # the reddest 70% of red's share of pixels
    out1 = tmp_path / "one"
    assert main(["dissect", str(out1), "--layer", "logits", "--concepts", str(root), "--model", model,
                 "--quantile", str(q), "--batch-size", "8"]) == 0
    one = read_iou(out1)
    best = one[one["rank"] == 1].set_index("unit")
    assert best.loc[0, "concept"] == "red-c" and best.loc[0, "iou"] > 0.5 and best.loc[0, "detector"]
    assert best.loc[2, "iou"] == 0 and not best.loc[2, "detector"] and (one[one["unit"] == 2]["intersection"] == 0).all()
    report = (out1 / "report/index.html").read_text()
    assert "dissection/detectors-logits.png" in report and (out1 / "dissection/units-logits.jpg").exists()

    out2 = tmp_path / "two"  # two actors, other batches and partitions: the same table
    run(jobmod.validate({"out": str(out2), "dataset": {"source": str(out1 / "dissection/images.csv")},
                         "model": {"name": model}, "run": {"actors": 2, "batch_size": 3, "partition_size": 5},
                         "dissect": {"layer": "logits", "concepts": str(root), "quantile": q}}))
    two = read_iou(out2)  # counts are integers: equal; thresholds may differ in the last float bits with batching
    assert two.drop(columns=["threshold"]).equals(one.drop(columns=["threshold"]))
    np.testing.assert_allclose(two["threshold"], one["threshold"], rtol=1e-6, atol=1e-6)
    top1, top2 = (pq.read_table(o / "dissection/top-logits.parquet").to_pandas() for o in (out1, out2))
    assert top2.drop(columns=["score"]).equals(top1.drop(columns=["score"]))
    np.testing.assert_allclose(top2["score"], top1["score"], rtol=1e-6, atol=1e-6)


def test_bad_layer_and_bad_concepts_are_one_line(ray_cluster, synthetic, tmp_path, capsys):
    root, _ = synthetic
    assert main(["dissect", str(tmp_path / "o"), "--layer", "logits", "--concepts", str(tmp_path / "nowhere")]) == 2
    assert "index.csv is missing" in capsys.readouterr().err
    assert main(["dissect", str(tmp_path / "p"), "--layer", "penultimate", "--concepts", str(root)]) == 2
    assert "needs units with a spatial map" in capsys.readouterr().err
