"""Style: losses equal their definitions, Gatys and texture synthesis lower the style loss, a fast
network learns, blends are exact, and bulk stylization writes every image exactly once."""
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deepscope import job as jobmod
from deepscope.algos import style as st
from deepscope.algos import style_net as sn
from deepscope.algos.gatys_batch import gatys
from deepscope.algos.style_train import ContentImages, TrainConfig, Trainer, load_style_image, to_tensor
from deepscope.io.decode import decode
from deepscope.io.store import Store
from deepscope.models.registry import load_model
from deepscope.runner import run
from test_features import small_dataset


@pytest.fixture(autouse=True)
def one_thread():
    # the shared 2-core machine is loaded: two torch threads spinning against other jobs are 10x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return small_dataset(tmp_path_factory.mktemp("photos"), n_per_label=3)  # 9 images, 3 labels


@pytest.fixture(scope="module")
def lite0():
    loaded = load_model("lite0")
    c, s = st.default_layers(loaded)
    return st.LossNetwork(loaded, c + s), c, s


def test_gram_and_losses_equal_definitions():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 4, 5, generator=g)
    a = {"l": torch.randn(1, 3, 3, generator=g)}
    p = {"l": torch.randn(2, 3, 4, 5, generator=g)}
    img = torch.rand(2, 3, 6, 7, generator=g)
    fn, an, pn, xn = f.double().numpy(), a["l"].double().numpy(), p["l"].double().numpy(), img.double().numpy()
    for i in range(2):
        gram = np.zeros((3, 3))
        for c in range(3):
            for d in range(3):
                gram[c, d] = sum(fn[i, c, y, x] * fn[i, d, y, x] for y in range(4) for x in range(5)) / (3 * 4 * 5)
        np.testing.assert_allclose(st.gram(f)[i].numpy(), gram, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(st.style_loss({"l": f}, a, {"l": 0.5})[i]),
                                   0.5 * ((gram - an[0]) ** 2).sum(), rtol=1e-5)
        np.testing.assert_allclose(float(st.content_loss({"l": f}, p)[i]), ((fn[i] - pn[i]) ** 2).mean(), rtol=1e-5)
        dy = sum((xn[i, c, y + 1, x] - xn[i, c, y, x]) ** 2 for c in range(3) for y in range(5) for x in range(7)) / (3 * 5 * 7)
        dx = sum((xn[i, c, y, x + 1] - xn[i, c, y, x]) ** 2 for c in range(3) for y in range(6) for x in range(6)) / (3 * 6 * 6)
        np.testing.assert_allclose(float(st.tv_loss(img)[i]), dy + dx, rtol=1e-5)
    # gram_weights turn each layer's loss into a relative error: the style loss of a zero Gram is 1
    w = st.gram_weights(a)
    np.testing.assert_allclose(float(st.style_loss({"l": torch.zeros(1, 3, 4, 5)}, a, w)[0]), 1.0, rtol=1e-5)


def test_gatys_lowers_style_loss_and_mix_one_zero_is_first_style(lite0, photos):
    net, c, s = lite0
    content = to_tensor(Image.open(sorted(photos.rglob("*.jpg"))[0]).convert("RGB"), 64)
    brick, coffee = to_tensor(load_style_image("skimage:brick"), 64), to_tensor(load_style_image("skimage:coffee"), 64)
    start = st.neural_style(net, content, [brick], c, s, steps=0)
    r = st.neural_style(net, content, [brick], c, s, steps=30)
    assert r.image.shape == content.shape and float(r.image.min()) >= 0 and float(r.image.max()) <= 1
    assert r.style_loss[0] < start.style_loss[0] / 5, (start.style_loss, r.style_loss)
    assert start.content_loss[0] == 0 and r.content_loss[0] < 1.0  # features move less than their own size
    # mixing Gram matrices with weights (1, 0) is exactly the first style alone
    one = st.style_targets(net, [brick], s)
    mixed = st.style_targets(net, [brick, coffee], s, mix=[1.0, 0.0])
    assert all(torch.equal(one[k], mixed[k]) for k in s)
    half = st.style_targets(net, [brick, coffee], s, mix=[0.5, 0.5])
    assert not torch.equal(one[s[0]], half[s[0]])
    a = st.neural_style(net, content, [brick], c, s, steps=3)
    b = st.neural_style(net, content, [brick, coffee], c, s, mix=[1, 0], steps=3)
    assert torch.equal(a.image, b.image)
    # colour preservation keeps the content's chrominance: its YIQ I and Q channels
    kept = st.keep_colours(r.image, content)
    yiq = lambda x: torch.einsum("ij,njhw->nihw", st._YIQ, x)  # noqa: E731
    inside = (kept > 0.01) & (kept < 0.99)  # away from clamping
    diff = (yiq(kept)[:, 1:] - yiq(content)[:, 1:]).abs()[inside[:, 1:]]
    assert float(diff.median()) < 1e-4


def test_texture_synthesis_any_size(lite0):
    net, _, s = lite0
    sample = to_tensor(load_style_image("skimage:brick"), 64)
    r = st.synthesize_texture(net, sample, (40, 56), s, steps=60)
    assert r.image.shape == (1, 3, 40, 56)
    assert r.style_loss[0] < r.history[0] / 5, (r.history[0], r.style_loss)


def _tiny_cfg(photos, styles, steps, model="lite0", weights=None):
    return TrainConfig(styles=styles, content=str(photos), model=model, weights=weights, size=48, style_size=64,
                       steps=steps, batch_size=2, lr=5e-3, widths=(8, 16, 16), res_blocks=1)


def test_fast_style_training_lowers_held_out_style_loss(photos):
    labels = sorted(p.name for p in photos.iterdir())  # held out: the photos of one label
    train_paths = [str(p) for p in sorted(photos.rglob("*.jpg")) if p.parent.name != labels[0]]
    held = [str(p) for p in sorted(photos.rglob("*.jpg")) if p.parent.name == labels[0]]
    assert train_paths and held
    trainer = Trainer(_tiny_cfg(photos, ["skimage:brick"], 200))
    untrained = sn.StyleNet(trainer.net.config)
    untrained.load_state_dict(trainer.net.state_dict())
    x = ContentImages("", 48, seed=1, paths=held).batch(3)
    with torch.no_grad():
        before = float(trainer.losses(x, 0, untrained.eval())[1])
    trainer.train_steps(ContentImages("", 48, seed=0, paths=train_paths), 200)
    with torch.no_grad():
        after = float(trainer.losses(x, 0)[1])
    assert after < before / 2, (before, after)


def test_structure_check_rejects_a_collapsed_network(photos):
    """Issue 14: a stylization keeps structure when each output's edges follow its own input far more
    than any other input's.  A collapsed network (a constant, or the same picture for every input,
    as the demo's old 3-style network painted) fails; the inputs themselves pass."""
    from deepscope.algos.quality import keeps_structure, structure_kept

    paths = [str(sorted(d.glob("*.jpg"))[0]) for d in sorted(photos.iterdir())]
    x = torch.stack([ContentImages("", 96, seed=0, paths=paths).crop(p) for p in paths])
    assert keeps_structure(x, x)
    assert not keeps_structure(torch.full_like(x, 0.5), x)
    assert not keeps_structure(x[:1].expand_as(x).contiguous(), x)
    own, other = structure_kept(x[[1, 2, 0]], x)  # outputs in the wrong order: structure of others
    assert (own < other).all()


def test_multi_style_blend_one_zero_is_exactly_style_a(tmp_path):
    torch.manual_seed(0)
    net = sn.StyleNet(sn.StyleNetConfig(styles=["a", "b"], widths=(4, 8, 8), res_blocks=1)).eval()
    with torch.no_grad():  # distinct per-style scales and shifts, as training would make them
        for m in net.modules():
            if isinstance(m, sn.CondInstanceNorm):
                m.scale.normal_(1, 0.5)
                m.shift.normal_(0, 0.5)
    x = torch.rand(2, 3, 30, 42)
    with torch.no_grad():
        a = net(x, sn.style_weights(net.config, 2, "a"))
        blend = net(x, sn.style_weights(net.config, 2, blend=[1.0, 0.0]))
        b = net(x, sn.style_weights(net.config, 2, 1))
        mid = net(x, sn.style_weights(net.config, 2, blend=[0.5, 0.5]))
    assert a.shape == x.shape
    assert torch.equal(a, blend)
    assert not torch.equal(a, b) and not torch.equal(a, mid)
    # saving and TorchScript keep the network exactly (TorchScript at a size that needs padding)
    net2, _ = sn.from_bytes(sn.to_bytes(net))
    path = tmp_path / "m.ts"
    path.write_bytes(sn.torchscript_bytes(net))
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        assert torch.equal(net2(x, sn.style_weights(net.config, 2, blend=[0.3, 0.7])),
                           net(x, sn.style_weights(net.config, 2, blend=[0.3, 0.7])))
        torch.testing.assert_close(scripted(x, sn.style_weights(net.config, 2, "b")), b.clamp(0, 1))
    # ONNX, run by onnxruntime at another size than the export's example (dynamic height and width)
    import onnxruntime

    session = onnxruntime.InferenceSession(sn.onnx_bytes(net), providers=["CPUExecutionProvider"])
    w = sn.style_weights(net.config, 2, blend=[0.3, 0.7])
    (got,) = session.run(None, {"image": x.numpy(), "style_weights": w.numpy()})
    with torch.no_grad():
        want = net(x, w).clamp(0, 1)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def outputs(out) -> dict:
    """Every output file and its modification time, but the snapshot and the run history (which a
    rerun appends its record to)."""
    return {p: p.stat().st_mtime_ns for p in out.rglob("*")
            if p.is_file() and p.name != "manifest.json" and "history" not in p.relative_to(out).parts}


def _stylize_job(data, out, model_path, **cfg):
    return jobmod.validate({"out": str(out), "dataset": {"source": str(data)},
                            "model": {"name": "torchvision:alexnet", "weights": "random"},
                            "run": {"batch_size": 2, "partition_size": 4},
                            "stylize": {"style_model": str(model_path), **cfg}})


def test_bulk_stylization_exactly_once_and_rerun_writes_nothing(ray_cluster, photos, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted(photos.rglob("*.jpg")):
        (data / p.parent.name).mkdir(exist_ok=True)
        (data / p.parent.name / p.name).write_bytes(p.read_bytes())
    (data / "broken.jpg").write_bytes(b"not an image")
    torch.manual_seed(0)
    net = sn.StyleNet(sn.StyleNetConfig(styles=["a", "b"], widths=(4, 8, 8), res_blocks=1)).eval()
    model = tmp_path / "m.pt"
    model.write_bytes(sn.to_bytes(net))
    out = tmp_path / "out"
    res = run(_stylize_job(data, out, model, size=40, format="png", blend=[0.25, 0.75]))
    assert res.failed == 1
    t = pq.read_table(out / "stylized.parquet").to_pandas()
    good = sorted(str(p.relative_to(data)) for p in data.rglob("*.jpg") if p.name != "broken.jpg")
    assert sorted(t["id"]) == good  # every good input exactly once
    files = sorted(str(p.relative_to(out)) for p in (out / "stylized" / "images").rglob("*") if p.is_file())
    assert files == sorted(f"stylized/images/{i}.png" for i in good)  # one file each, the relative path kept
    assert set(t["style"]) == {"blend(a=0.25,b=0.75)"}
    w = sn.style_weights(net.config, 1, blend=[0.25, 0.75])
    for row in t.itertuples():
        data_bytes = (out / row.output).read_bytes()
        img = Image.open(out / row.output)
        src = Image.open(row.path)
        assert img.size == (row.width, row.height) and max(img.size) == 40
        assert abs(img.width / img.height - src.width / src.height) < 0.06  # aspect kept
        assert len(data_bytes) == row.bytes and __import__("hashlib").sha256(data_bytes).hexdigest() == row.sha256
        # the image equals the network applied directly (to within rounding of uint8)
        dec = decode(Path(row.path).read_bytes(), draft_size=40)[0]  # JPEG draft decoding, as the stage does
        s = 40 / max(dec.size)
        x = to_tensor(dec.resize((round(dec.width * s), round(dec.height * s)), Image.Resampling.LANCZOS))
        with torch.no_grad():
            ref = (net(x, w).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        assert np.abs(np.asarray(img.convert("RGB"), np.int16) - ref).max() <= 1
    assert not list(out.rglob(".*.tmp"))
    errors = Store(out).read("errors").to_pandas()
    assert list(errors["id"]) == ["broken.jpg"]

    before = outputs(out)
    res2 = run(_stylize_job(data, out, model, size=40, format="png", blend=[0.25, 0.75]))
    assert res2.computed == 0
    after = outputs(out)
    assert after == before  # a rerun of a finished job writes no image and no table
    assert [r["status"] for r in Store(out).history()][-1] == "nothing to do"  # only its history record


def test_stylize_with_dying_workers_is_exactly_once(ray_cluster, photos, tmp_path, monkeypatch):
    from deepscope.mapper import KILL_ENV

    torch.manual_seed(0)
    net = sn.StyleNet(sn.StyleNetConfig(styles=["a"], widths=(4, 8, 8), res_blocks=1)).eval()
    model = tmp_path / "m.pt"
    model.write_bytes(sn.to_bytes(net))
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ENV, f"{marker}@2")  # the model actor dies at its second partition, once
    out = tmp_path / "out"
    job = _stylize_job(photos, out, model, size=32)
    job.run.executor = "ray"  # the killed worker is an actor, never the test's own process
    res = run(job)
    assert marker.exists(), "a model actor was killed mid-job"
    assert res.failed == 0
    t = pq.read_table(out / "stylized.parquet").to_pandas()
    ids = sorted(str(p.relative_to(photos)) for p in photos.rglob("*.jpg"))
    assert sorted(t["id"]) == ids
    files = sorted(str(p.relative_to(out)) for p in (out / "stylized" / "images").rglob("*") if p.is_file())
    assert files == sorted(f"stylized/images/{i}" for i in ids)
    for row in t.itertuples():
        assert __import__("hashlib").sha256((out / row.output).read_bytes()).hexdigest() == row.sha256
    assert not list(out.rglob(".*.tmp"))


# ---------------------------------------------------------------------------- Gatys per image as a stage

def test_gatys_batched_equals_per_image_and_lowers_style_loss(lite0, photos):
    """One optimization over a batch is, per image, the optimization of that image alone (per-image
    losses, L-BFGS history, scaling and line search; Adam is elementwise). Checked in float64: in
    float32 a batch's convolutions round differently from one image's (~1e-7), and L-BFGS on this
    non-convex problem amplifies that to ~1e-2 within 10-20 steps, with or without batching."""
    net32, c, s = lite0
    loaded = load_model("lite0")
    loaded.module.double()
    net = st.LossNetwork(loaded, c + s)
    paths = [str(sorted(d.glob("*.jpg"))[0]) for d in sorted(photos.iterdir())]  # 3 photos
    x = torch.cat([to_tensor(Image.open(p).convert("RGB").resize((56, 40))) for p in paths])
    style = to_tensor(load_style_image("painting:swirls"))
    targets = st.style_targets(net, [style.double()], s, long_side=56)
    seeds = [11, 12, 13]
    for kw in ({"optimizer": "lbfgs", "steps": 10}, {"optimizer": "adam", "lr": 0.05, "init": "noise", "steps": 5}):
        batch = gatys(net, x.double(), targets, c, seed=seeds, **kw)
        assert batch.image.dtype == torch.float64 and batch.image.shape == x.shape
        for i in range(len(paths)):
            one = gatys(net, x[i:i + 1].double(), targets, c, seed=seeds[i], **kw)
            torch.testing.assert_close(batch.image[i:i + 1], one.image, atol=1e-9, rtol=0)  # measured: ~1e-14
            assert batch.style_loss[i] == pytest.approx(one.style_loss[0], rel=1e-9)
    # the real thing, float32: the style loss falls for every image of the batch
    targets = st.style_targets(net32, [style], s, long_side=56)
    start = gatys(net32, x, targets, c, steps=0)
    r = gatys(net32, x, targets, c, steps=10)
    assert 0 <= float(r.image.min()) and float(r.image.max()) <= 1
    for i in range(len(paths)):
        assert r.style_loss[i] < start.style_loss[i] / 2, (start.style_loss, r.style_loss)


def test_bulk_gatys_exactly_once_and_rerun_writes_nothing(ray_cluster, photos, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted(photos.rglob("*.jpg"))[:4]:
        (data / p.parent.name).mkdir(exist_ok=True)
        (data / p.parent.name / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"

    def job():
        return jobmod.validate({"out": str(out), "dataset": {"source": str(data)}, "model": {"name": "lite0"},
                                "run": {"batch_size": 4, "partition_size": 2},
                                "stylize": {"method": "gatys", "style": "painting:glass", "size": 40, "steps": 4,
                                            "format": "png"}})

    res = run(job())
    assert res.failed == 0 and res.computed == 4
    t = pq.read_table(out / "stylized.parquet")
    assert t.schema.remove_metadata() == __import__("deepscope.io.schemas", fromlist=["x"]).STYLIZED
    t = t.to_pandas()
    ids = sorted(str(p.relative_to(data)) for p in data.rglob("*.jpg"))
    assert sorted(t["id"]) == ids  # every input exactly once
    files = sorted(str(p.relative_to(out)) for p in (out / "stylized" / "images").rglob("*") if p.is_file())
    assert files == sorted(f"stylized/images/{i}.png" for i in ids)
    assert set(t["style"]) == {"glass"}
    for row in t.itertuples():
        img = Image.open(out / row.output)
        src = Image.open(row.path)
        assert img.size == (row.width, row.height) and max(img.size) == 40
        assert abs(img.width / img.height - src.width / src.height) < 0.06  # aspect kept
        assert __import__("hashlib").sha256((out / row.output).read_bytes()).hexdigest() == row.sha256
        dec = np.asarray(src.convert("RGB").resize(img.size), np.float32)
        assert np.abs(np.asarray(img.convert("RGB"), np.float32) - dec).mean() > 2  # it changed the picture
    assert "Gatys" in (out / "report" / "index.html").read_text()
    assert not list(out.rglob(".*.tmp"))

    before = outputs(out)
    res2 = run(job())
    assert res2.computed == 0
    after = outputs(out)
    assert after == before  # a rerun of a finished job writes no image and no table
    assert [r["status"] for r in Store(out).history()][-1] == "nothing to do"  # only its history record
