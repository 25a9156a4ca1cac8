"""Model registry and layer taps: real weights for lite0, seeded random weights for torchvision models."""
import warnings

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deepscope.errors import UserError
from deepscope.models.registry import load_model, parse_spec
from deepscope.models.taps import LayerTaps, forward_with_taps, list_layers, resolve

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def lite0():
    return load_model("lite0")


@pytest.fixture(scope="module")
def alexnet():
    return load_model("torchvision:alexnet", weights="random")


@pytest.fixture(scope="module")
def resnet18():
    return load_model("torchvision:resnet18", weights="random")


def _x(loaded, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = loaded.transform.crop
    return torch.randn(n, 3, c, c, generator=g)


def test_lite0_real_weights_see_a_cat(lite0):
    import skimage.data

    img = Image.fromarray(skimage.data.chelsea())
    x = lite0.transform.torchvision()(img).unsqueeze(0)
    with torch.no_grad():
        top1 = lite0.module(x).argmax(1).item()
    assert top1 in {281, 282, 285}, (top1, lite0.class_names[top1])
    assert lite0.weights.startswith("imagenet: ") and lite0.weights.endswith(".pth")
    assert not lite0.random_weights
    assert len(lite0.class_names) == 1000 and lite0.class_names[285] == "Egyptian cat"
    assert lite0.transform.mean == (0.5, 0.5, 0.5) and lite0.transform.crop == 224


def test_lite0_frozen_and_eval(lite0):
    assert not lite0.module.training
    assert not any(p.requires_grad for p in lite0.module.parameters())


def test_lite0_penultimate_is_pooled_features(lite0):
    m, x = lite0.module, _x(lite0)
    logits, out = forward_with_taps(lite0, x, ["penultimate", "logits", "_swish"])
    with torch.no_grad():
        feats = m.extract_features(x)
        direct = m._avg_pooling(feats).flatten(1)
        assert torch.allclose(out["penultimate"], direct, atol=1e-5)
        assert torch.allclose(out["logits"], m(x), atol=1e-5)
    assert out["penultimate"].shape == (2, 1280)
    # the shared top-level _swish runs for the stem and the head: the head's (last) call is kept
    assert torch.allclose(out["_swish"], feats, atol=1e-5)


def test_alexnet_fc7_penultimate_logits(alexnet):
    m, x = alexnet.module, _x(alexnet)
    assert "random" in alexnet.weights and alexnet.random_weights
    logits, out = forward_with_taps(alexnet, x, ["fc7", "penultimate", "logits"])
    with torch.no_grad():
        h = torch.flatten(m.avgpool(m.features(x)), 1)
        h = F.relu(m.classifier[1](h))  # dropout is the identity in eval
        fc7 = F.relu(m.classifier[4](h))
        full = m(x)
    assert out["fc7"].shape == (2, 4096)
    assert torch.allclose(out["fc7"], fc7, atol=1e-5)
    assert torch.equal(out["penultimate"], out["fc7"])  # both are the input of classifier.6
    assert torch.allclose(logits, full, atol=1e-5) and torch.allclose(out["logits"], full, atol=1e-5)


def test_random_weights_are_reproducible(alexnet):
    again = load_model("torchvision:alexnet", weights="random")
    a, b = alexnet.module.state_dict(), again.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_inplace_disabled(alexnet):
    assert not any(getattr(m, "inplace", False) for m in alexnet.module.modules())


def test_resnet18_penultimate_is_avgpool(resnet18):
    m, x = resnet18.module, _x(resnet18)
    _, out = forward_with_taps(resnet18, x, ["penultimate", "avgpool"])
    assert resnet18.aliases["penultimate"] == "fc:input"
    assert out["penultimate"].shape == (2, 512)
    assert torch.allclose(out["penultimate"], out["avgpool"].flatten(1))


def test_capture_survives_later_inplace_add(resnet18):
    # BasicBlock does `out = bn2(out); out += identity`: the tap must keep bn2's own output
    m, x = resnet18.module, _x(resnet18)
    _, out = forward_with_taps(resnet18, x, ["layer1.0.bn2", "maxpool"])
    b = m.layer1[0]
    with torch.no_grad():
        direct = b.bn2(b.conv2(b.relu(b.bn1(b.conv1(out["maxpool"])))))
    assert torch.allclose(out["layer1.0.bn2"], direct, atol=1e-5)


def test_gradients_flow_through_undetached_taps(resnet18):
    x = _x(resnet18, n=1).requires_grad_()  # params are frozen: the graph starts at the input
    with LayerTaps(resnet18, ["layer4", "layer1.0.bn2"], detach=False) as taps:
        logits = taps.forward(x)
    act = taps.outputs["layer4"]
    (grad,) = torch.autograd.grad(logits[0, 3], act)
    assert grad.shape == act.shape and grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.allclose(logits, resnet18.module(x), atol=1e-5)  # the clones do not change the result


def test_missing_default_weights_say_where(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as e:
        load_model("torchvision:alexnet")
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    with pytest.raises(UserError, match="/nope.pt"):
        load_model("torchvision:alexnet", weights="/nope.pt")


def test_default_weights_from_hub_cache(monkeypatch, tmp_path, resnet18):
    # a file under the expected cache name is used, never downloaded
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(resnet18.module.state_dict(), ckpt / "resnet18-f37072fd.pth")
    loaded = load_model("torchvision:resnet18")
    assert loaded.weights == f"imagenet: {ckpt / 'resnet18-f37072fd.pth'}" and not loaded.random_weights
    assert loaded.transform.resize == 256 and loaded.transform.crop == 224
    x = _x(loaded)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), resnet18.module(x))


def test_weights_file_round_trip(tmp_path, alexnet):
    state = {"module." + k: v for k, v in alexnet.module.state_dict().items()}
    path = tmp_path / "alexnet.pt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = load_model("torchvision:alexnet", weights=str(path))
    assert loaded.weights == f"file: {path}" and not loaded.random_weights
    x = _x(alexnet)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), alexnet.module(x))


def test_weights_file_that_does_not_fit(tmp_path, resnet18):
    path = tmp_path / "r18.pt"
    torch.save(resnet18.module.state_dict(), path)
    with pytest.raises(UserError, match="does not fit"):
        load_model("torchvision:alexnet", weights=str(path))


def test_layer_errors(resnet18, alexnet):
    with pytest.raises(UserError, match="penultimate"):
        resolve(resnet18, "fc7")
    with pytest.raises(UserError) as e:
        resolve(resnet18, "layer9")
    assert "layer1" in str(e.value) and "layer4" in str(e.value)
    assert resolve(alexnet, "classifier.6:input").kind == "input"
    with pytest.raises(UserError):
        resolve(alexnet, "classifier.6:weights")


def test_spec_errors():
    assert parse_spec("torchvision:resnet50") == ("torchvision", "resnet50")
    assert parse_spec("lite0") == ("lite0", "lite0")
    for bad in ("foo:bar", "resnet50", "torchvision:"):
        with pytest.raises(UserError):
            parse_spec(bad)
    with pytest.raises(UserError, match="resnet18"):
        load_model("torchvision:resnet81", weights="random")
    with pytest.raises(UserError, match="pip install timm"):
        load_model("timm:resnet18")


def test_list_layers_lite0(lite0):
    rows = {name: (kind, shape) for name, kind, shape in list_layers(lite0)}
    assert len(rows["_blocks.15"][1]) == 3  # (C, H, W): 4-D with the batch
    assert rows["penultimate"][1] == (1280,)
    assert rows["logits"][1] == (1000,)
    assert rows["_fc"][0] == "Linear"


def test_torchscript_logits_only(tmp_path):
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the format we read
        torch.jit.save(torch.jit.trace(tiny, torch.zeros(1, 3, 224, 224)), str(path))
        loaded = load_model(f"torchscript:{path}")
    x = torch.randn(2, 3, 224, 224)
    logits, out = forward_with_taps(loaded, x, ["logits"])
    with torch.no_grad():
        assert torch.allclose(logits, tiny(x), atol=1e-6) and torch.allclose(out["logits"], tiny(x), atol=1e-6)
    assert loaded.weights == f"file: {path}" and loaded.class_names is None
    assert [r[0] for r in list_layers(loaded)] == ["logits"]
    with pytest.raises(UserError, match="TorchScript"):
        resolve(loaded, "4")
    with pytest.raises(UserError, match="TorchScript"):
        load_model("torchscript:/nope.pt")


@pytest.mark.parametrize("resize,crop,interp", [(256, 224, "bilinear"), (256, 224, "bicubic"), (224, 224, "bilinear"),
                                                (200, 224, "bilinear"), (71, 64, "nearest")])
def test_geometry_equals_torchvision_resize_and_crop(resize, crop, interp):
    """The decode workers' Pillow-only geometry gives torchvision's pixels exactly (odd sizes,
    portrait and landscape, a crop larger than the resized image)."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from deepscope.models.transform import Transform

    rng = np.random.default_rng(0)
    t = Transform(resize=resize, crop=crop, interpolation=interp)
    for h, w in [(300, 224), (217, 641), (100, 80), (256, 256), (333, 500)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = np.asarray(TF.center_crop(TF.resize(img, resize, interpolation=InterpolationMode(interp)), crop))
        assert np.array_equal(t.geometry(img), want.transpose(2, 0, 1)), (h, w)
