"""Receptive fields: known answers (AlexNet, stacks built by hand), and boxes that hold every pixel
an activation depends on (checked by gradient, in the model input and in the original image)."""
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms import functional as TF

from deepscope.errors import UserError
from deepscope.models.receptive import ReceptiveField, gradient_support, receptive_field
from deepscope.models.registry import LoadedModel, load_model
from deepscope.models.transform import Transform
from deepscope.stages.patches import original_box
from imagezoo import chelsea


def stack_model(*layers, crop=224) -> LoadedModel:
    torch.manual_seed(0)
    module = nn.Sequential(*layers).eval()
    return LoadedModel("stack", module, Transform(resize=crop, crop=crop), "random", True, None, {})


@pytest.fixture(scope="module")
def alexnet():
    return load_model("torchvision:alexnet", "random")


@pytest.fixture(scope="module")
def lite0():
    return load_model("lite0")


# size, stride, start of AlexNet's layers, by the usual recursion r += (k - 1) * j, j *= s, start -= p * j
ALEXNET = {"features.0": (11, 4, -2), "features.2": (19, 8, -2), "features.3": (51, 8, -18),
           "features.5": (67, 16, -18), "features.10": (163, 16, -66), "features.12": (195, 32, -66)}


@pytest.mark.parametrize("layer", list(ALEXNET))
def test_alexnet_known_fields(alexnet, layer):
    size, stride, start = ALEXNET[layer]
    assert receptive_field(alexnet, layer) == ReceptiveField((size, size), (stride, stride), (start, start))


def test_hand_built_stack_with_relu_pooling_dilation_and_a_rectangular_kernel():
    model = stack_model(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),  # 3, stride 1, start -1
        nn.MaxPool2d(2),  # 4, stride 2, start -1
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU(),  # 4 + 4*2 = 12, start -1 - 2*2 = -5
        nn.AvgPool2d(3, stride=2, padding=1),  # 12 + 2*2 = 16, stride 4, start -5 - 2 = -7
        nn.Conv2d(8, 8, (5, 3), padding=(0, 1)),  # y: 16 + 4*4 = 32, start -7; x: 16 + 2*4 = 24, start -11
    )
    assert receptive_field(model, "6") == ReceptiveField((32, 24), (4, 4), (-7, -11))
    assert receptive_field(model, "2") == ReceptiveField((4, 4), (2, 2), (-1, -1))


def test_field_larger_than_the_input_is_measured_on_a_larger_one():
    dilated = [nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=16, dilation=16) for i in range(3)]
    model = stack_model(*dilated, crop=64)  # 3 x (2*16) + 1 = 97 > 64
    assert receptive_field(model, "2") == ReceptiveField((97, 97), (1, 1), (-48, -48))


def test_global_pooling_sees_the_whole_input():
    model = stack_model(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), crop=32)
    rf = receptive_field(model, "1")
    assert rf.whole and rf.box(0, 0, 32) == (0, 0, 32, 32)


def test_layer_without_a_map_is_a_user_error(alexnet):
    with pytest.raises(UserError, match="spatial"):
        receptive_field(alexnet, "classifier.1")


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_box_holds_every_input_pixel_the_unit_depends_on(lite0):
    """A real image through the real model: the gradient's support of each unit (corner, edge, interior)
    lies in its box, and fills an interior unit's box to the edges."""
    layer = "_blocks.4"  # 28 x 28 map
    rf = receptive_field(lite0, layer)
    img = chelsea()
    x = lite0.transform.normalize(torch.from_numpy(lite0.transform.geometry(img))[None])
    units = [(0, 0), (0, 27), (27, 13), (14, 14), (5, 20)]
    support = gradient_support(lite0, layer, x.repeat(len(units), 1, 1, 1), units).numpy()
    for (i, j), mask in zip(units, support):
        x0, y0, x1, y1 = rf.box(i, j, 224)
        inside = np.zeros_like(mask)
        inside[y0:y1, x0:x1] = True
        assert mask.any() and not (mask & ~inside).any(), (i, j)
    assert _bbox(support[3]) == rf.box(14, 14, 224)


@pytest.mark.parametrize("size", [(300, 200), (451, 700)])  # enlarged, shrunk by a scale that is not whole
def test_original_box_holds_every_original_pixel_the_unit_depends_on(lite0, size):
    """Through the resize and crop too: differentiate with respect to the original pixels (torch's
    antialiased bilinear resize is PIL's, differentiable). At 451x700 the resize filter reaches
    a pixel beyond the plainly scaled box, so the widening is needed."""
    layer, (i, j) = "_blocks.2", (20, 5)
    t = lite0.transform
    rgb = np.asarray(chelsea(size), np.float32) / 255
    orig = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None].requires_grad_(True)
    small = TF.resize(orig, t.resize, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    x = (TF.center_crop(small, t.crop) - torch.tensor(t.mean).view(1, 3, 1, 1)) / torch.tensor(t.std).view(1, 3, 1, 1)
    from deepscope.models.taps import LayerTaps
    with LayerTaps(lite0, [layer], detach=False) as taps:
        taps.forward(x)
        (grad,) = torch.autograd.grad(taps.outputs[layer][0, :, i, j].sum(), orig)
    mask = (grad[0].abs().sum(0) > 0).numpy()
    x0, y0, x1, y1 = original_box(receptive_field(lite0, layer).box(i, j, t.crop), *size, t)
    gx0, gy0, gx1, gy1 = _bbox(mask)
    assert x0 <= gx0 and y0 <= gy0 and gx1 <= x1 and gy1 <= y1, ((x0, y0, x1, y1), (gx0, gy0, gx1, gy1))
    # and the widening is the resize filter's reach, no more
    assert gx0 - x0 <= 3 and gy0 - y0 <= 3 and x1 - gx1 <= 3 and y1 - gy1 <= 3
