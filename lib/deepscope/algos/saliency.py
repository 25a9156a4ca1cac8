"""Saliency maps for a batch: which input pixels move a class score.  Captum computes every method.

Each method gives one non-negative map per image at the input resolution, (N, H, W) float32:

  backprop              |d score / d x|, max over RGB (Simonyan et al. 2014): Captum Saliency
  guided                guided backprop (Springenberg et al. 2015), |.| max over RGB: Captum
                        GuidedBackprop, whose gating also covers ReLU6 here (lite0 uses ReLU6)
  integrated_gradients  path integral of the gradient from a constant baseline (Sundararajan et al.
                        2017), |.| summed over RGB: Captum IntegratedGradients with its default
                        quadrature, Gauss-Legendre: `steps` nodes and weights on the path (not
                        Riemann sums); each image's completeness error is returned too (ig_delta)
  occlusion             drop of the score when a window is filled with a constant (Zeiler & Fergus
                        2014), positive part: Captum Occlusion, many windows per forward pass; windows
                        start every `stride` pixels and the last one in each row and column is cut
                        off at the right/bottom border (as Captum does, so every pixel is covered);
                        a pixel's value is the mean drop over the windows that cover it
  gradcam               ReLU of the gradient-weighted channel sum of a layer's output (Selvaraju et
                        al. 2017), channel weights = the gradient's spatial mean, bilinearly upsampled
                        to the input: Captum LayerGradCam.  A module that runs several times per
                        forward pass is hooked at one call (CallTap): lite0's head is `_swish@2`

SmoothGrad (Smilkov et al. 2017) averages the raw attributions of any method over noisy copies of
the input (Captum NoiseTunnel) before the reduction above.

`score` is the unnormalized class score (the logit), as in the lecture: softmax probabilities
can rise by lowering the other classes, which says less about the target class itself.
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from captum._utils.common import _register_backward_hook
from captum.attr import (GuidedBackprop, IntegratedGradients, LayerGradCam, NoiseTunnel, Occlusion,
                         Saliency)
from torch import nn

METHODS = ("backprop", "guided", "integrated_gradients", "occlusion", "gradcam")


@dataclass(frozen=True)
class Options:
    window: int = 15  # occlusion: side of the square window, input pixels
    stride: int = 8  # occlusion: step between windows
    fill: torch.Tensor | float = 0.0  # occlusion fill and IG baseline, in normalized input space:
    #                                   a scalar or a (1, C, 1, 1) per-channel colour
    steps: int = 50  # integrated gradients: Gauss-Legendre nodes on the path (Captum's default quadrature)
    tolerance: float = 0.0  # integrated gradients: rerun images whose ig_delta exceeds it at 2x steps (0: off)
    max_steps: int = 800  # integrated gradients: the cap of those reruns
    layer: nn.Module | None = None  # gradcam: the module whose output is weighted
    layer_input: bool = False  # gradcam: weight the module's input instead of its output
    layer_call: int = 0  # gradcam: which call of `layer` (1, 2, ...) when it runs several times; 0: its only one
    smoothgrad: int = 0  # noisy samples averaged (0: no SmoothGrad)
    noise: float = 0.15  # SmoothGrad noise stdev, in normalized input units
    eval_batch: int = 4  # inputs per forward pass: images, and their windows, IG steps, noise samples
    seed: int = 0  # SmoothGrad noise (the same for every chunk of images)


class GuidedBackpropReLU6(GuidedBackprop):
    """Captum's guided backprop, gating ReLU6 modules as well as ReLU: only positive gradients
    pass back through either (ReLU6's own gradient already zeroes x <= 0 and x >= 6)."""

    def _register_hooks(self, module: nn.Module) -> None:
        if isinstance(module, nn.ReLU6):
            # the very hook Captum puts on nn.ReLU (captum._utils.common, as its ReLU code uses)
            self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))
        else:
            super()._register_hooks(module)


def attribute(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str,
              opts: Options = Options()) -> torch.Tensor:
    """(N, C, H, W) normalized inputs, (N,) class indices -> (N, H, W) non-negative maps.

    Images go through in chunks of at most `eval_batch`, and each chunk's perturbed, scaled or
    noisy copies in forward passes of about `eval_batch` inputs: the batch size a device runs
    best (on a 2-core CPU, lite0 runs fastest at 2-8 images), whatever the pipeline's batch is.
    Integrated gradients runs at `opts.steps` here, whatever the tolerance: see integrated_gradients.
    """
    return _chunked(model, x, target, method, opts)[0]


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                         opts: Options = Options(), rounds: list | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (N, H, W) maps, (N,) ig_delta, (N,) steps used.

    ig_delta = |sum of attributions - (score(x) - score(baseline))| / |score(x) - score(baseline)|,
    the relative miss of the completeness axiom (Captum's convergence delta over the score change;
    NaN where the score does not change, or under SmoothGrad).  With opts.tolerance > 0 the images
    that miss it run again, together, at twice the steps, until they meet it or reach max_steps;
    each image keeps the map of its last run.  rounds: if a list, each round's (steps, image
    indices, their ig_delta) is appended to it (the first round is the fixed-steps run)."""
    maps, delta = _chunked(model, x, target, "integrated_gradients", opts)
    steps = torch.full((x.shape[0],), opts.steps, dtype=torch.int32)
    n_steps = opts.steps
    if rounds is not None:
        rounds.append((n_steps, torch.arange(x.shape[0]), delta.clone()))
    while opts.tolerance > 0 and n_steps < opts.max_steps:
        miss = (delta > opts.tolerance).nonzero()[:, 0]  # NaN is never > tolerance
        if not len(miss):
            break
        n_steps = min(2 * n_steps, opts.max_steps)
        on = miss.to(x.device)
        more, more_delta = _chunked(model, x[on], target.to(x.device)[on], "integrated_gradients",
                                    replace(opts, steps=n_steps))
        maps[on], delta[miss], steps[miss] = more, more_delta, n_steps
        if rounds is not None:
            rounds.append((n_steps, miss.clone(), more_delta.clone()))
    return maps, delta, steps


def _chunked(model, x, target, method, opts) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) maps and (N,) ig_delta (NaN for other methods), `eval_batch` images at a time."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; one of {', '.join(METHODS)}")
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        model = ChannelsLast(model)
    target = target.to(x.device).long()
    step = max(1, opts.eval_batch)
    out = [_attribute(model, x[i:i + step], target[i:i + step], method, opts) for i in range(0, x.shape[0], step)]
    return torch.cat([m for m, _ in out]), torch.cat([d for _, d in out])


class ChannelsLast(nn.Module):
    """Feeds a channels-last model channels-last inputs: Captum's perturbed, scaled and noisy
    copies come out in the default layout, where lite0's CPU convolutions run at half speed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


def _attribute(model, x, target, method, opts) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    with_delta = method == "integrated_gradients" and not opts.smoothgrad
    per_eval = max(1, opts.eval_batch // n)  # copies of each image per forward pass
    kwargs: dict = {"target": target}
    tap = CallTap(opts.layer_call) if method == "gradcam" and opts.layer_call else None
    if method == "backprop":
        algo = Saliency(model)
        kwargs["abs"] = False  # abs after SmoothGrad's mean, as for the other methods
    elif method == "guided":
        algo = GuidedBackpropReLU6(model)
    elif method == "integrated_gradients":
        algo = IntegratedGradients(model)
        kwargs.update(baselines=_baseline(opts.fill, x), n_steps=opts.steps, method="gausslegendre",
                      internal_batch_size=n * per_eval, return_convergence_delta=with_delta)
    elif method == "occlusion":
        algo = Occlusion(model)
        c = x.shape[1]
        kwargs.update(sliding_window_shapes=(c, opts.window, opts.window), strides=(c, opts.stride, opts.stride),
                      baselines=_baseline(opts.fill, x), perturbations_per_eval=per_eval)
    else:
        if opts.layer is None:
            raise ValueError("gradcam needs a layer")
        algo = LayerGradCam(model, tap or opts.layer)
        kwargs.update(relu_attributions=True, attribute_to_layer_input=opts.layer_input)

    # input gradients are what these methods read (asking for them here also keeps Captum quiet)
    x = x.detach().clone().requires_grad_(method in ("backprop", "guided", "integrated_gradients"))
    delta = torch.full((n,), float("nan"))
    with warnings.catch_warnings(), (tap.attached(model, opts.layer) if tap else nullcontext()):
        warnings.filterwarnings("ignore", message="Setting backward hooks")  # Captum, on every guided call
        if opts.smoothgrad:
            tunnel = NoiseTunnel(algo)
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(opts.seed)
                attr = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=opts.smoothgrad, stdevs=float(opts.noise),
                                        nt_samples_batch_size=per_eval, **kwargs)
        else:
            attr = algo.attribute(x, **kwargs)
    if with_delta:
        attr, captum_delta = attr
        # Captum's delta = sum(attr) - (score(x) - score(baseline)): the score change is their difference
        change = attr.detach().double().sum((1, 2, 3)) - captum_delta.detach().double()
        delta = torch.where(change != 0, captum_delta.double().abs() / change.abs(), float("nan")).float().cpu()
    return reduce_attribution(attr.detach().float(), method, x.shape[-2:]), delta


class CallTap(nn.Identity):
    """One call of a module that runs several times per forward pass (lite0's shared `_swish`: the
    stem's activation, then the head's): on call `call` of each pass the module's output goes
    through this identity, so hooks on it (Captum's) see that call alone."""

    def __init__(self, call: int):
        super().__init__()
        self.call, self.seen = call, 0

    @contextmanager
    def attached(self, root: nn.Module, module: nn.Module):
        def reset(mod, args):
            self.seen = 0

        def pass_through(mod, args, out):
            self.seen += 1
            return self(out) if self.seen == self.call else None

        handles = [root.register_forward_pre_hook(reset), module.register_forward_hook(pass_through)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


def reduce_attribution(attr: torch.Tensor, method: str, size) -> torch.Tensor:
    """A method's raw attribution -> (N, H, W) non-negative map (see the table at the top)."""
    if method in ("backprop", "guided"):
        return attr.abs().amax(1)
    if method == "integrated_gradients":
        return attr.abs().sum(1)
    if method == "occlusion":
        return attr.mean(1).clamp_min(0)  # the window spans every channel: channels are equal
    cam = F.interpolate(attr, size=tuple(size), mode="bilinear", align_corners=False)
    return cam[:, 0].clamp_min(0)


def _baseline(fill, x: torch.Tensor):
    if isinstance(fill, torch.Tensor):
        return fill.to(x.device, x.dtype).expand(1, *x.shape[1:]).contiguous()
    return float(fill)


# activation modules: a layer whose output is theirs (or a pooling of theirs) gives activated maps
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Hardtanh,
               nn.Sigmoid, nn.Tanh, nn.PReLU, nn.SELU, nn.CELU, nn.Softplus)
PASS_THROUGH = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)


@dataclass(frozen=True)
class LayerCall:
    """One call of a module in a forward pass, as Grad-CAM can weight it."""
    module: str  # module name
    call: int  # 1, 2, ... in execution order
    calls: int  # how many times the module runs per forward pass
    shape: tuple  # its output's shape
    activated: bool  # the output of an activation function (ReLU, ReLU6, SiLU, ...), or a pooling of one

    @property
    def name(self) -> str:
        """"_blocks.15", or "_swish@2" for the 2nd call of a module that runs several times."""
        return self.module if self.calls == 1 else f"{self.module}@{self.call}"

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 4 and self.shape[-1] > 1 and self.shape[-2] > 1


def layer_calls(model: nn.Module, x: torch.Tensor) -> list[LayerCall]:
    """Every module call of one forward pass of `x`, in the order their outputs are ready
    (a container after its children)."""
    seen: list[tuple[str, int, tuple, bool]] = []
    count: dict[str, int] = {}
    activated: dict[int, torch.Tensor] = {}  # id -> tensor (kept alive so that ids stay unique)
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, args, out, name=name):
            count[name] = count.get(name, 0) + 1
            if not isinstance(out, torch.Tensor):
                return
            fed = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if isinstance(mod, ACTIVATIONS) or "swish" in type(mod).__name__.lower() or (
                    isinstance(mod, PASS_THROUGH) and fed is not None and id(fed) in activated):
                activated[id(out)] = out
            seen.append((name, count[name], tuple(out.shape), id(out) in activated))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [LayerCall(name, call, count[name], shape, act) for name, call, shape, act in seen]


def default_cam_layer(model: nn.Module, x: torch.Tensor) -> LayerCall | None:
    """The Grad-CAM layer when none is named: the last module call, in execution order, that gives
    a spatial map (N, C, H, W) with H, W > 1.  For lite0 that is the head's activation, the second
    call of the shared `_swish` (ReLU6), after `_conv_head` and `_bn1`; for resnet, `layer4`."""
    spatial = [c for c in layer_calls(model, x) if c.spatial]
    return spatial[-1] if spatial else None


# ---------------------------------------------------------------------------- per-map statistics

def map_stats(maps: torch.Tensor, top: float = 0.05) -> dict[str, torch.Tensor]:
    """(N, H, W) non-negative maps -> per-image statistics of the map as a distribution of mass:

    entropy    Shannon entropy over pixels / log(H*W): 0 = one pixel, 1 = uniform
    top_mass   share of the mass in the `top` (5%) most salient pixels (uniform: 0.05)
    com_x/y    centre of mass, as fractions of the width and height (0.5 = centre)

    An all-zero map (no gradient reached the input) gives NaN everywhere.
    """
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).double()
    total = flat.sum(1, keepdim=True)
    p = flat / total
    plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p))
    entropy = -plogp.sum(1) / math.log(h * w)
    k = max(1, math.ceil(top * h * w))
    top_mass = p.topk(k, dim=1).values.sum(1)
    p2 = p.reshape(n, h, w)
    xs = (torch.arange(w, dtype=p.dtype, device=p.device) + 0.5) / w
    ys = (torch.arange(h, dtype=p.dtype, device=p.device) + 0.5) / h
    com_x = (p2.sum(1) * xs).sum(1)
    com_y = (p2.sum(2) * ys).sum(1)
    empty = total[:, 0] <= 0
    out = {"entropy": entropy, "top_mass": top_mass, "com_x": com_x, "com_y": com_y}
    return {k: torch.where(empty, torch.full_like(v, float("nan")), v).float() for k, v in out.items()}


def shrink(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) -> (N, size, size) by area averaging, scaled so that each map's peak is 1."""
    small = F.adaptive_avg_pool2d(maps[:, None].float(), size)[:, 0]
    peak = small.flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny)
    return small / peak[:, None, None]
