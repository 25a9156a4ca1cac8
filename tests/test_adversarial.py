"""Adversarial images that stay adversarial on disk, FGSM/PGD on the 8-bit grid, the universal
perturbation, and the robustness/dream/invert stages through the Ray pipeline (lite0 real weights)."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from deepscope.algos import adversarial as adv
from deepscope.cli import main
from deepscope.io.images import png_bytes, read_png
from deepscope.io.store import Store
from deepscope.models.registry import load_model
from deepscope.models.transform import model_input


@pytest.fixture(scope="module")
def lite0():
    return load_model("lite0")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from test_features import small_dataset

    root = small_dataset(tmp_path_factory.mktemp("photos"), n_per_label=1)  # 3 labels, 1 photo each
    return root, sorted(str(p) for p in root.rglob("*.jpg"))


def small_inputs(lite0, paths, size=112):
    """Model inputs shrunk to size (the attacks do not depend on the size; the test time does)."""
    x = torch.cat([model_input(lite0, p) for p in paths]).float()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().to(torch.uint8)


def reload(pixels):
    """Each image through a PNG file's bytes and back, as a user would load them."""
    import io

    return torch.cat([read_png(io.BytesIO(png_bytes(p))) for p in pixels.numpy()])


def test_adversarial_png_fools_the_model_from_disk(lite0, photos, tmp_path):
    path = photos[1][0]
    out = tmp_path / "adv"
    assert main(["adversarial", path, "--target", "1", "--eps", "2", "--steps", "10", "--out", str(out)]) == 0
    src, fooled = read_png(out / "source.png"), read_png(out / "adversarial.png")
    assert torch.equal(src, model_input(lite0, path))  # source.png is the model's input for the image
    with torch.no_grad():
        assert int(lite0.module(lite0.transform.normalize(fooled)).argmax(1)) == 1
        assert int(lite0.module(lite0.transform.normalize(src)).argmax(1)) != 1
    assert int((fooled.int() - src.int()).abs().max()) <= 2
    assert (out / "index.html").exists()
    assert main(["adversarial", path, "--target", "1000", "--eps", "2", "--out", str(out)]) == 2


def test_fgsm_and_pgd_stay_in_the_ball_and_grow_with_eps(lite0, photos):
    x = small_inputs(lite0, photos[1], size=96)
    clean = adv.logits_of(lite0, x).argmax(1)
    changed = {}
    for eps in (1, 4):
        a = reload(adv.pgd(lite0, x, eps, steps=2))
        assert int((a.int() - x.int()).abs().max()) <= eps
        changed[eps] = int((adv.logits_of(lite0, a).argmax(1) != clean).sum())
        f = reload(adv.fgsm(lite0, x, eps))
        assert int((f.int() - x.int()).abs().max()) == eps  # one full signed step, then clipped to [0, 255]
    assert changed[4] >= changed[1] and changed[4] > 0
    # targeted: PGD reaches the target, and what reaches it is the 8-bit picture
    t = reload(adv.pgd(lite0, x[:1], 4, target=1, steps=6, stop_early=True))
    assert int(adv.logits_of(lite0, t).argmax(1)[0]) == 1


def test_fooling_loop_reaches_target(lite0, photos):
    x = small_inputs(lite0, photos[1][:1])
    out, steps = adv.fool(lite0, x, 1, max_steps=30)
    assert steps[0] >= 0 and int(adv.logits_of(lite0, reload(out)).argmax(1)[0]) == 1


def test_universal_perturbation(lite0, photos):
    x = small_inputs(lite0, photos[1])
    v = adv.universal(lite0, [x[:2], x[2:]], 8, epochs=2)
    assert v.abs().max() <= 8 and v.shape == x.shape[1:]
    assert adv.fooling_rate(lite0, [x], v) >= 2 / 3
    assert adv.fooling_rate(lite0, [x], torch.zeros_like(v)) == 0


def test_robustness_dream_invert_stages(ray_cluster, lite0, photos, tmp_path):
    root, paths = photos
    out = str(tmp_path / "out")
    from deepscope import job as jobmod
    from deepscope.runner import run

    # one pipeline pass: features, dream and invert; then `deepscope robustness OUT` adds a stage
    run(jobmod.validate({"out": out, "dataset": {"source": str(root)}, "run": {"batch_size": 4},
                         "features": {}, "dream": {"layer": "_blocks.6", "octaves": 1, "steps": 1},
                         "invert": {"layers": ["_blocks.1", "_blocks.10"], "steps": 2}}))
    assert main(["robustness", out, "--attack", "fgsm", "--eps", "1,4", "--universal", "--universal-images", "3"]) == 0
    t = Store(out).read("robustness").to_pylist()
    assert len(t) == 3
    for r in t:  # the smallest eps, against a direct FGSM on the same pixels
        x = model_input(lite0, r["path"])
        clean = int(adv.logits_of(lite0, x).argmax(1)[0])
        assert r["pred"] == clean
        first = next((e for e in (1, 4) if int(adv.logits_of(lite0, adv.fgsm(lite0, x, e)).argmax(1)[0]) != clean), None)
        assert r["min_eps"] == first
        assert r["changed"] == [first is not None and first <= e for e in (1, 4)]
        if first is not None:  # the adversarial PNG on disk changes the prediction within eps
            a = read_png(f"{out}/{r['adversarial']}")
            assert int(adv.logits_of(lite0, a).argmax(1)[0]) == r["adv_pred"] != clean
            assert int((a.int() - x.int()).abs().max()) <= first
        assert r["universal_pred"] is not None
    classes = pq.read_table(f"{out}/robustness_classes.parquet").to_pylist()
    assert classes[0]["group"] == "(all)" and classes[0]["images"] == 3
    assert np.load(f"{out}/robustness/universal.npy").shape == (3, 224, 224)
    assert "Robustness" in open(f"{out}/report/index.html").read()

    store = Store(out)
    d, i = store.read("dream").to_pylist(), store.read("invert").to_pylist()
    assert len(d) == 3 and len(i) == 6
    for r in d + i:
        assert read_png(f"{out}/{r['image']}").shape == (1, 3, 224, 224)
    assert all(r["energy_end"] > r["energy_start"] for r in d)


def test_visualize_job_equals_direct_ascent_and_resumes(ray_cluster, lite0, tmp_path):
    from deepscope.algos.ascent import AscentSettings, visualize

    out = tmp_path / "vis"
    args = ["visualize", "lite0", "--layer", "_blocks.4", "--units", "0-2", "--steps", "2", "--size", "48",
            "--batch-size", "2", "--out", str(out)]
    assert main(args) == 0
    store = Store(out)
    rows = sorted(store.read("visualize").to_pylist(), key=lambda r: r["target"])
    assert [r["target"] for r in rows] == [0, 1, 2] and len(store.parts("visualize")) == 2
    direct = visualize(lite0, "_blocks.4", [0, 1, 2], AscentSettings(steps=2, size=48), kind="unit")
    for r, pixels in zip(rows, direct.pixels):  # the job's PNGs are the direct computation's pictures
        diff = (read_png(out / r["image"])[0].int() - torch.from_numpy(pixels).int()).abs()
        assert diff.max() <= 1
    assert (out / "index.html").exists() and (out / "visualize/grid__blocks.4.png").exists()
    assert main(args) == 0 and Store(out).summary("visualize")["computed"] == 0  # a rerun does nothing
    assert main(["visualize", "lite0", "--layer", "_blocks.4", "--units", "40", "--out", str(tmp_path / "x")]) == 2
