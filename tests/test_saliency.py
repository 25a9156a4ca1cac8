"""Saliency: each method against a direct computation or Captum itself, occlusion and the bias
finder against answers known by construction, batches against single images, and the pipeline."""
import copy
import json
import math
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from captum.attr import GuidedBackprop, IntegratedGradients, Occlusion
from PIL import Image
from torch import nn

from deepscope.algos import saliency as sal
from deepscope.algos.grabcut import grabcut_from_saliency, iou
from deepscope.cli import main
from deepscope.errors import UserError
from deepscope.io.objects import object_coverage
from deepscope.io.store import Store
from deepscope.models.transform import Transform
from deepscope.stages.saliency import label_index

torch.manual_seed(0)


@pytest.fixture(scope="module")
def resnet():
    from deepscope.models.registry import load_model

    return load_model("torchvision:resnet18", "random")


def batch(n=3, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


# ---------------------------------------------------------------------------- methods

def test_backprop_equals_autograd(resnet):
    x, t = batch(), torch.tensor([3, 7, 999])
    xr = x.clone().requires_grad_()
    resnet.module(xr).gather(1, t[:, None]).sum().backward()  # images are independent in eval mode
    want = xr.grad.abs().amax(1)
    got = sal.attribute(resnet.module, x, t, "backprop")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


def test_guided_and_integrated_gradients_equal_captum(resnet):
    x, t = batch(), torch.tensor([1, 2, 3])
    want = GuidedBackprop(resnet.module).attribute(x.clone(), target=t).abs().amax(1)
    torch.testing.assert_close(sal.attribute(resnet.module, x, t, "guided"), want)
    fill = torch.tensor([0.5, -1.0, 0.25]).view(1, 3, 1, 1)
    want = IntegratedGradients(resnet.module).attribute(
        x.clone(), baselines=fill.expand(1, 3, 64, 64), target=t, n_steps=8).abs().sum(1)
    got = sal.attribute(resnet.module, x, t, "integrated_gradients", sal.Options(steps=8, fill=fill, eval_batch=5))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def _tiny(act):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), act(), nn.Conv2d(8, 8, 3, padding=1), act(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.2)  # activations stay far below 6: ReLU6 computes exactly what ReLU does
    return m.eval()


def test_guided_backprop_gates_relu6_like_relu():
    x, t = batch(2, 16), torch.tensor([0, 3])
    with_relu, with_relu6 = _tiny(nn.ReLU), _tiny(nn.ReLU6)
    want = GuidedBackprop(with_relu).attribute(x.clone(), target=t).abs().amax(1)
    got = sal.attribute(with_relu6, x, t, "guided")
    torch.testing.assert_close(got, want)
    plain = GuidedBackprop(with_relu6).attribute(x.clone(), target=t).abs().amax(1)
    assert not torch.allclose(plain, want)  # Captum alone leaves ReLU6 ungated


class Linear(nn.Module):
    """score_c = sum(w_c * x): occluding a window changes score_c by exactly sum_window w_c * (x - fill)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        return torch.einsum("nchw,kchw->nk", x, self.w)


@pytest.mark.parametrize("stride", [3, 4])
def test_occlusion_known_answer(stride):
    # stride 3: whole windows reach the border; stride 4: the last window of each row and column is
    # cut off by the right/bottom border (starts 0, 4, .., 16 of 20 px: 4 px wide), as Captum does
    g = torch.Generator().manual_seed(5)
    size, win = 20, 5
    w = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    fill = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64).view(1, 3, 1, 1)
    t = torch.tensor([0, 1])
    acc, cnt = torch.zeros(2, size, size, dtype=torch.float64), torch.zeros(size, size, dtype=torch.float64)
    starts = range(0, size - win + stride, stride)  # up to the first start at or past size - win
    for i in starts:
        for j in starts:
            sl = (slice(None), slice(None), slice(i, i + win), slice(j, j + win))
            drop = (w[t][sl] * (x - fill)[sl]).sum((1, 2, 3))  # the score's drop when this window is filled
            acc[:, i:i + win, j:j + win] += drop[:, None, None]
            cnt[i:i + win, j:j + win] += 1
    want = torch.where(cnt > 0, acc / cnt.clamp_min(1), torch.zeros_like(acc)).clamp_min(0)
    got = sal.attribute(Linear(w), x, t, "occlusion", sal.Options(window=win, stride=stride, fill=fill, eval_batch=7))
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-9)
    assert (want > 0).any() and (want == 0).any()  # some windows raise the score, some lower it


def test_gradcam_equals_its_definition(resnet):
    x, t = batch(), torch.tensor([5, 6, 7])
    layer = resnet.module.layer4
    feats = {}
    h = layer.register_forward_hook(lambda m, a, o: feats.setdefault("a", o))
    scores = resnet.module(x.clone().requires_grad_()).gather(1, t[:, None]).sum()
    h.remove()
    grads = torch.autograd.grad(scores, feats["a"])[0]
    cam = (grads.mean((2, 3), keepdim=True) * feats["a"]).sum(1, keepdim=True).clamp_min(0)
    want = torch.nn.functional.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    got = sal.attribute(resnet.module, x, t, "gradcam", sal.Options(layer=layer))
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6)
    assert sal.default_cam_layer(resnet.module, x[:1]).name == "layer4"


def test_ig_delta_is_the_completeness_miss(resnet):
    x, t = batch(3, 32), torch.tensor([4, 8, 15])
    fill = torch.tensor([0.5, -1.0, 0.25]).view(1, 3, 1, 1)
    base = fill.expand(1, 3, 32, 32)
    raw = IntegratedGradients(resnet.module).attribute(x.clone(), baselines=base, target=t, n_steps=6)
    with torch.no_grad():
        change = resnet.module(x)[range(3), t] - resnet.module(base.expand(3, -1, -1, -1))[range(3), t]
    want = ((raw.sum((1, 2, 3)) - change).abs() / change.abs()).double()
    maps, delta, steps = sal.integrated_gradients(resnet.module, x, t, sal.Options(steps=6, fill=fill))
    torch.testing.assert_close(delta.double(), want, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(maps, raw.abs().sum(1))
    assert steps.tolist() == [6, 6, 6] and (want > 1e-3).all()  # 6 steps miss: the test can tell


def test_tolerance_reruns_only_the_images_that_miss(resnet):
    x, t = batch(4, 32), torch.tensor([1, 2, 3, 4])
    fill = torch.tensor([0.5, -1.0, 0.25]).view(1, 3, 1, 1)
    fixed, fixed_delta, _ = sal.integrated_gradients(resnet.module, x, t, sal.Options(steps=4, fill=fill))
    tol = float(fixed_delta.median())  # two images meet it at 4 steps, two miss it
    miss = fixed_delta > tol
    assert miss.sum() == 2
    rows = []
    hook = resnet.module.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    try:
        maps, delta, steps = sal.integrated_gradients(resnet.module, x, t, sal.Options(steps=4, fill=fill,
                                                                                        tolerance=tol, max_steps=16))
    finally:
        hook.remove()
    assert steps[~miss].tolist() == [4, 4] and (steps[miss] > 4).all()
    torch.testing.assert_close(maps[~miss], fixed[~miss])
    for i in miss.nonzero()[:, 0].tolist():  # each rerun image: the map and delta of a direct run at its steps
        m, d, _ = sal.integrated_gradients(resnet.module, x[i:i + 1], t[i:i + 1],
                                          sal.Options(steps=int(steps[i]), fill=fill))
        torch.testing.assert_close(maps[i:i + 1], m, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(delta[i:i + 1], d, rtol=1e-3, atol=1e-5)
        assert d[0] <= tol or steps[i] == 16
    # Captum evaluates steps + 2 inputs per image (the path, then x and the baseline for the delta):
    # only the images that missed went through the reruns
    rounds = [s for s in (8, 16) if s <= int(steps.max())]
    want = 4 * (4 + 2) + sum(int((steps >= s).sum()) * (s + 2) for s in rounds)
    assert sum(rows) == want


def _lite0_head_activated(model):
    """lite0 with its head's activation as a module of its own (the shared `_swish` stays the stem's):
    the activated head that Captum's LayerGradCam can hook directly."""
    ref = copy.deepcopy(model)
    ref.head_act = nn.ReLU6()

    def extract_features(self, x):
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)  # eval mode: no drop-connect
        return self.head_act(self._bn1(self._conv_head(x)))

    ref.extract_features = extract_features.__get__(ref)
    return ref


def test_gradcam_on_lite0_is_the_activated_head():
    from captum.attr import LayerGradCam

    from deepscope.models.registry import load_model

    model = load_model("lite0", "random").module  # random weights: a test of the hooks, not of lite0
    x, t = batch(2, 96, seed=4), torch.tensor([3, 500])
    layer = sal.default_cam_layer(model, x[:1])
    assert (layer.name, layer.activated) == ("_swish@2", True)
    calls = {c.name: c for c in sal.layer_calls(model, x[:1])}
    assert not calls["_bn1"].activated and calls["_swish@1"].activated and calls["_blocks.15"].shape[-1] == 3
    ref_model = _lite0_head_activated(model)
    ref = LayerGradCam(ref_model, ref_model.head_act).attribute(x.clone(), target=t, relu_attributions=True)
    want = torch.nn.functional.interpolate(ref, size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    got = sal.attribute(model, x, t, "gradcam", sal.Options(layer=model._swish, layer_call=2))
    assert float(want.amax()) > 0
    for g, w in zip(got, want.detach()):
        assert np.corrcoef(g.flatten(), w.flatten())[0, 1] >= 0.999
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6 * float(want.amax()))
    pre = sal.attribute(model, x, t, "gradcam", sal.Options(layer=model._bn1))  # the old default differs
    assert not torch.allclose(pre, got, rtol=1e-2, atol=1e-2 * float(got.amax()))


@pytest.mark.parametrize("method", sal.METHODS)
def test_batched_equals_per_image(resnet, method):
    # float64: float32 convolutions pick other kernels for other batch sizes, and a random deep
    # net's input gradients amplify that rounding to ~1% of the peak
    model = copy.deepcopy(resnet.module).double()
    x, t = batch(5, 32).double(), torch.tensor([10, 20, 30, 40, 50])
    # chunks of 4 images and 1: one copy of each image per pass, then 4 (windows, steps) of one image
    opts = sal.Options(window=8, stride=8, steps=6, layer=model.layer3, eval_batch=4)
    together = sal.attribute(model, x, t, method, opts)
    alone = torch.cat([sal.attribute(model, x[i:i + 1], t[i:i + 1], method, sal.Options(
        window=8, stride=8, steps=6, layer=model.layer3, eval_batch=1)) for i in range(5)])
    assert float(alone.max()) > 0
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-9 * float(alone.max()))


@pytest.mark.parametrize("method", ["backprop", "occlusion", "gradcam"])
def test_channels_last_inputs_give_the_same_maps(resnet, method):
    model = copy.deepcopy(resnet.module).double()
    x, t = batch(2, 32).double(), torch.tensor([1, 2])
    opts = sal.Options(window=8, stride=8, layer=model.layer3)
    want = sal.attribute(model, x, t, method, opts)
    model = model.to(memory_format=torch.channels_last)
    got = sal.attribute(model, x.contiguous(memory_format=torch.channels_last), t, method, opts)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9 * float(want.max()))


def test_smoothgrad_is_reproducible_and_tends_to_the_gradient(resnet):
    x, t = batch(2), torch.tensor([1, 2])
    noisy = sal.Options(smoothgrad=4, noise=0.5)
    a, b = (sal.attribute(resnet.module, x, t, "backprop", noisy) for _ in range(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, sal.attribute(resnet.module, x, t, "backprop"))
    tiny = sal.attribute(resnet.module, x, t, "backprop", sal.Options(smoothgrad=3, noise=1e-7))
    torch.testing.assert_close(tiny, sal.attribute(resnet.module, x, t, "backprop"), rtol=1e-3, atol=1e-6)


def test_map_stats_known_answers():
    uniform = torch.ones(1, 20, 20)
    spot = torch.zeros(1, 20, 20)
    spot[0, 3, 15] = 2.0
    s = sal.map_stats(torch.cat([uniform, spot, torch.zeros(1, 20, 20)]))
    np.testing.assert_allclose(s["entropy"][:2].numpy(), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(s["top_mass"][:2].numpy(), [0.05, 1.0], atol=1e-6)  # 20 of 400 pixels
    np.testing.assert_allclose(s["com_x"][:2].numpy(), [0.5, 15.5 / 20], atol=1e-6)
    np.testing.assert_allclose(s["com_y"][:2].numpy(), [0.5, 3.5 / 20], atol=1e-6)
    assert all(math.isnan(float(v[2])) for v in s.values())
    small = sal.shrink(spot, 5)
    assert float(small.max()) == 1.0 and small[0, 0, 3] == 1.0 and float(small.sum()) == 1.0


def test_grabcut_finds_the_object_a_rough_seed_points_at():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:112, :112]
    disc = (yy - 60) ** 2 + (xx - 50) ** 2 < 25 ** 2
    img = (rng.integers(0, 256, (112, 112, 3)) // 2 + 60).astype(np.uint8)  # textured grey background
    img[disc] = np.clip(np.array([200, 40, 40]) + rng.integers(-20, 20, (disc.sum(), 3)), 0, 255)
    seed = np.exp(-((yy - 55) ** 2 + (xx - 55) ** 2) / (2 * 15 ** 2)) + 0.05 * rng.random((112, 112))
    cut = grabcut_from_saliency(img, seed)
    threshold = seed > np.quantile(seed, 1 - disc.mean())  # the seed alone, at the object's size
    assert iou(cut, disc) > 0.95 > 0.8 > iou(threshold, disc)
    assert not grabcut_from_saliency(img, np.zeros((112, 112))).any()


def test_label_index():
    names = ["tench", "goldfish", "great white shark", "Egyptian cat"]
    got = label_index(["1", "goldfish", "egyptian_cat", "shark", "two"], {"shark": "great white shark", "two": 2},
                      names, 4)
    assert got == {"1": 1, "goldfish": 1, "egyptian_cat": 3, "shark": 2, "two": 2}
    with pytest.raises(UserError, match="'dog'"):
        label_index(["dog", "1"], {}, names, 4)
    with pytest.raises(UserError, match="'7'"):
        label_index(["7"], {}, names, 4)  # no class 7 in a 4-class model
    with pytest.raises(UserError, match="no label"):
        label_index(["1", ""], {}, names, 4)


def test_box_coverage_follows_resize_and_crop():
    tf = Transform()  # 448 px square: resized x 256/448, then 16 px cropped off each side
    # the crop spans original pixels [28, 420): a box over its left half covers exactly the left half of the map
    _, cover = object_coverage(("box", (28, 28, 224, 420)), 448, 448, tf, 8)
    np.testing.assert_allclose(cover, np.repeat([[1.0] * 4 + [0.0] * 4], 8, axis=0), atol=1e-9)
    _, cover = object_coverage(("box", (0, 0, 448, 448)), 448, 448, tf, 8)
    assert np.all(cover == 1)


# ---------------------------------------------------------------------------- the pipeline

class MaskedColour(nn.Module):
    """score_c = mean of colour channel c over a fixed region of the model input: a 'model' that
    decides from that region only (the border = the background, or the centre = the object)."""

    def __init__(self, region):
        super().__init__()
        self.register_buffer("region", region / region.sum())

    def forward(self, x):
        return (x[:, :2] * self.region).sum((2, 3))


def _bias_dataset(root):
    """224 px images: class red/green decided by the BACKGROUND colour; the centre object is a
    random colour.  A manifest with the object's box (or mask) in original pixels."""
    rng = np.random.default_rng(0)
    root.mkdir()
    lines = ["id,path,label,box,mask"]
    for i in range(8):
        label = ("red", "green")[i % 2]
        img = np.zeros((224, 224, 3), np.uint8)
        img[..., i % 2] = rng.integers(150, 230)
        img[..., 2] = 40
        img[72:152, 72:152] = rng.integers(0, 255, 3)  # the object
        Image.fromarray(img).save(root / f"{i}.png")
        mask = ""
        if i < 2:  # a mask for two of them, a box for the others
            m = np.zeros((224, 224), np.uint8)
            m[72:152, 72:152] = 255
            Image.fromarray(m).save(root / f"{i}_mask.png")
            mask = f"{i}_mask.png"
        lines.append(f"img{i},{i}.png,{label},\"72,72,152,152\",{mask}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root / "data.csv"


def _scripted(tmp_path, name, region):
    path = tmp_path / f"{name}.pt"
    torch.jit.save(torch.jit.script(MaskedColour(region)), str(path))
    return f"torchscript:{path}"


def test_bias_finder_flags_the_background_model(ray_cluster, tmp_path):
    from deepscope import job as jobmod
    from deepscope.runner import run

    data = _bias_dataset(tmp_path / "data")
    centre = torch.zeros(224, 224)
    centre[80:144, 80:144] = 1  # inside the object (which spans 66..158 of the model input)
    results = {}
    for name, region in (("background", 1 - torch.nn.functional.pad(torch.ones(144, 144), (40,) * 4)),
                         ("object", centre)):
        out = tmp_path / name
        run(jobmod.validate({"out": str(out), "dataset": {"source": str(data)},
                             "model": {"name": _scripted(tmp_path, name, region)},
                             "run": {"batch_size": 4, "partition_size": 4},
                             "saliency": {"method": "backprop", "target": "label",
                                          "labels": {"red": 0, "green": 1}}}, "test"))
        store = Store(out)
        results[name] = (store.summary("saliency")["methods"]["backprop"],
                         pq.read_table(out / "saliency_stats/objects.parquet").to_pandas(),
                         pq.read_table(out / "saliency_stats/classes.parquet").to_pandas())
        assert sorted(store.read("saliency").column("target").to_pylist()) == [0] * 4 + [1] * 4
    bg, obj = results["background"], results["object"]
    assert sorted(bg[0]["flagged"]) == ["green", "red"] and obj[0]["flagged"] == []
    assert bg[1]["inside_mass"].max() < 0.01 and obj[1]["inside_mass"].min() > 0.99
    assert sorted(bg[1]["truth"]) == ["box"] * 6 + ["mask"] * 2
    np.testing.assert_allclose(obj[1]["area"], (80 * 256 / 224 / 224) ** 2, rtol=0.01)  # resized x 256/224
    assert obj[1]["grabcut_iou"].min() > 0.6 and bg[1]["grabcut_iou"].max() < 0.2
    assert list(bg[2]["flagged"]) == [True, True] and not obj[2]["flagged"].any()
    report = (tmp_path / "background/report/index.html").read_text()
    assert "FLAGGED" in report and "saliency/backprop_objects.png" in report
    assert (tmp_path / "background/report/saliency/backprop_objects.png").stat().st_size > 1000


class Saturating(nn.Module):
    """score_c = mean of sigmoid(4 x_c) over the centre: curved along IG's path, so few steps miss completeness."""

    def forward(self, x):
        return torch.sigmoid(4 * x[:, :2, 64:160, 64:160]).mean((2, 3))


def test_ig_tolerance_through_the_stage(ray_cluster, tmp_path):
    from imagezoo import reference_rgb

    from deepscope import job as jobmod
    from deepscope.models.registry import load_model
    from deepscope.runner import run

    data = _bias_dataset(tmp_path / "data")
    path = tmp_path / "saturating.pt"
    torch.jit.save(torch.jit.script(Saturating()), str(path))
    loaded = load_model(f"torchscript:{path}")
    tf = loaded.transform.torchvision()

    def delta(name, target, steps):  # the completeness error of Captum's IG, computed here
        x = tf(reference_rgb(data.parent / name))[None]
        raw = IntegratedGradients(loaded.module).attribute(x, baselines=0.0, target=target, n_steps=steps)
        with torch.no_grad():
            change = float(loaded.module(x)[0, target] - loaded.module(torch.zeros_like(x))[0, target])
        return abs(float(raw.sum()) - change) / abs(change)

    at_two = {f"{i}.png": delta(f"{i}.png", i % 2, 2) for i in range(8)}  # target: the label (red 0, green 1)
    tol = float(np.median(list(at_two.values())))  # half of the images miss it at 2 steps
    out = tmp_path / "out"
    run(jobmod.validate({"out": str(out), "dataset": {"source": str(data)}, "model": {"name": f"torchscript:{path}"},
                         "run": {"batch_size": 4, "partition_size": 4},
                         "saliency": {"method": "integrated_gradients", "target": "label", "labels": {"red": 0, "green": 1},
                                      "steps": 2, "ig_tolerance": tol, "ig_max_steps": 8, "grabcut": False}}, "test"))
    t = Store(out).read("saliency").to_pandas()
    for _, r in t.iterrows():
        name = r["path"].split("/")[-1]
        assert r["ig_delta"] == pytest.approx(delta(name, int(r["target"]), int(r["ig_steps"])), rel=1e-3, abs=1e-6)
        assert (r["ig_steps"] == 2) == (at_two[name] <= tol)  # only the images that missed ran again
        assert r["ig_delta"] <= tol or r["ig_steps"] == 8
    assert (t["ig_steps"] == 2).sum() == 4
    ig = Store(out).summary("saliency")["methods"]["integrated_gradients"]["ig"]
    assert ig["more_steps"] == 4 and ig["still_miss"] == (t["ig_delta"] > tol).sum()
    assert ig["median"] == pytest.approx(float(t["ig_delta"].median()), rel=1e-6)
    assert (out / "report/saliency/integrated_gradients_ig_delta.png").stat().st_size > 1000
    assert "completeness error ig_delta" in (out / "report/index.html").read_text()


def test_cli_stage_equals_direct_per_image(ray_cluster, tmp_path, resnet, capsys):
    from deepscope.models.taps import forward_with_taps
    from imagezoo import reference_rgb

    from deepscope.io.demo_data import PHOTOS, make_demo_data

    data = tmp_path / "photos"
    make_demo_data(data, per_photo=2)
    for name in set(PHOTOS) - {"astronaut", "chelsea", "coffee"}:
        shutil.rmtree(data / name)
    out = tmp_path / "out"
    assert main(["features", str(data), "--out", str(out), "--model", "torchvision:resnet18", "--weights", "random",
                 "--batch-size", "4"]) == 0
    bare = tmp_path / "bare"  # a copy without saliency, for the error cases (its job must name it)
    shutil.copytree(out, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["spec"]["out"] = str(bare)
    (bare / "manifest.json").write_text(json.dumps(manifest))
    assert main(["saliency", str(out), "--method", "backprop,gradcam", "--target", "label", "--label", "astronaut=7",
                 "--label", "chelsea=tabby", "--label", "coffee=12", "--batch-size", "4", "--map-size", "28"]) == 0
    t = Store(out).read("saliency").to_pandas()
    assert sorted(t["method"].unique()) == ["backprop", "gradcam"] and len(t) == 12
    assert Store(out).summary("saliency")["gradcam_layer"] == {"name": "layer4", "activated": True, "input": False}
    assert t["ig_delta"].isna().all() and t["ig_steps"].isna().all()  # integrated gradients only
    names = resnet.class_names or [str(i) for i in range(1000)]
    want_target = {"astronaut": 7, "chelsea": 281, "coffee": 12}  # 281 = tabby
    assert (t["target"] == t["label"].map(want_target)).all()
    tf = resnet.transform.torchvision()
    layer = resnet.module.layer4  # the default: the last spatial layer that runs once
    for _, r in t.iterrows():
        x = tf(reference_rgb(data / r["id"]))[None]
        tgt = torch.tensor([r["target"]])
        maps = sal.attribute(resnet.module, x, tgt, r["method"], sal.Options(layer=layer))
        np.testing.assert_allclose(np.asarray(r["map"], np.float32), sal.shrink(maps, 28).flatten().numpy(), atol=3e-3)
        stats = sal.map_stats(maps)
        assert abs(r["entropy"] - float(stats["entropy"][0])) < 1e-4
        with torch.no_grad():
            logits, _ = forward_with_taps(resnet, x, [])
        assert abs(r["score"] - float(logits[0, r["target"]])) < 1e-3 * max(1, abs(r["score"]))
        assert r["target_name"] == names[r["target"]]
        assert 0 < sum(r["grabcut"]) < 28 * 28
    # the same folder refuses other settings; bad input is one line, before any image is computed
    capsys.readouterr()
    for folder, args, needle in ((out, ["--method", "occlusion"], "other [saliency] settings"),
                                 (bare, ["--method", "sobel"], "method"),
                                 (tmp_path / "nowhere", [], "not a deepscope output folder"),
                                 (bare, ["--target", "label"], "'astronaut'"),
                                 (bare, ["--target", "5000"], "does not exist"),
                                 (bare, ["--method", "gradcam", "--layer", "layer9"], "unknown layer"),
                                 (bare, ["--method", "gradcam", "--layer", "fc"], "spatial"),
                                 (bare, ["--method", "gradcam", "--layer", "layer4@2"], "runs 1 time"),
                                 (bare, ["--ig-tolerance", "-1"], "ig_tolerance"),
                                 (bare, ["--fill", "white"], "--fill"),
                                 (bare, ["--label", "chelsea"], "LABEL=CLASS")):
        assert main(["saliency", str(folder), *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (args, err)
    assert not (bare / "saliency").exists()
