"""Receptive fields of a layer's units, measured by gradient rather than derived by hand.

Unit (i, j) of a conv layer sees the input pixels rows [start_y + i*stride_y, start_y + i*stride_y + size_y)
and columns likewise (`start` is negative where padding comes first).  Walking the modules
(kernel, stride, padding, dilation) only works for plain chains; the gradient works for any
network: the input pixels that an activation depends on are the support of d act / d input.

The measure: a batch of random inputs at the model's crop size; the gradient of (every channel
of) the centre unit, and of its diagonal neighbour, with respect to the input.  Summing over
channels and over several random inputs keeps a dead ReLU or a max-pool's single winner from
hiding part of the field.  When the centre unit's support reaches the input's border the field
is larger than the input, so it is measured again on an input twice the crop; when it still
reaches the border, the field is over two crops wide: every unit of a crop, wherever its centre,
reaches at least a crop each way, so it sees the whole crop (`whole`).
Only the gradient pass (not the probe) stops at the layer, when its module runs once per pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from deepscope.errors import UserError
from deepscope.models.registry import LoadedModel
from deepscope.models.taps import LayerTaps, _device

SAMPLES = 2  # random inputs whose supports are united
GROWTH = (1, 2)  # input sizes tried, in crops


@dataclass(frozen=True)
class ReceptiveField:
    size: tuple[int, int]  # (height, width) in input pixels
    stride: tuple[int, int]  # input pixels between neighbouring units, (y, x)
    start: tuple[int, int]  # (y, x) of the first input pixel of unit (0, 0)
    whole: bool = False  # every unit sees the whole input (global pooling, or a field > 2 crops)

    def box(self, i: int, j: int, limit: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), x1/y1 exclusive, of unit (row i, column j) in an input of side `limit`."""
        if self.whole:
            return 0, 0, limit, limit
        y0 = self.start[0] + i * self.stride[0]
        x0 = self.start[1] + j * self.stride[1]
        clip = lambda v: max(0, min(limit, v))  # noqa: E731
        return clip(x0), clip(y0), clip(x0 + self.size[1]), clip(y0 + self.size[0])

    def to_dict(self) -> dict:
        return {"size": list(self.size), "stride": list(self.stride), "start": list(self.start), "whole": self.whole}


class _Reached(Exception):
    """Raised once the tapped layer ran: the rest of the network is not needed."""


def layer_output(loaded: LoadedModel, layer: str, x: torch.Tensor, stop_early: bool = False) -> torch.Tensor:
    """The layer's output for x (in the autograd graph when x requires grad). stop_early: run the model
    only up to the layer, which is right only for a module that runs once per forward pass."""
    taps = LayerTaps(loaded, [layer], detach=not x.requires_grad)
    tap = taps.taps[0]
    with taps:  # our hook is registered after the tap's, so it fires after the capture
        handle = None
        if stop_early and tap.module_name:
            module = dict(loaded.module.named_modules())[tap.module_name]

            def reached(*_):
                raise _Reached

            handle = (module.register_forward_pre_hook(reached) if tap.kind == "input"
                      else module.register_forward_hook(reached))
        try:
            taps.forward(x)
        except _Reached:
            pass
        finally:
            if handle is not None:
                handle.remove()
    act = taps.outputs[layer]
    if act.ndim != 4:
        raise UserError(f"layer {layer!r} of {loaded.spec} has output shape {tuple(act.shape[1:])}: "
                        "a receptive field needs a spatial (C, H, W) layer")
    return act


def _probe(loaded: LoadedModel, layer: str, x: torch.Tensor) -> tuple[tuple[int, ...], bool]:
    """(the layer's output shape for x, does its module run once per forward pass?) from one whole pass."""
    taps = LayerTaps(loaded, [layer])
    name = taps.taps[0].module_name
    calls = []
    handle = dict(loaded.module.named_modules())[name].register_forward_pre_hook(lambda *_: calls.append(1)) if name else None
    try:
        with torch.no_grad(), taps:
            taps.forward(x)
    finally:
        if handle is not None:
            handle.remove()
    return tuple(taps.outputs[layer].shape), len(calls) == 1


def gradient_support(loaded: LoadedModel, layer: str, x: torch.Tensor, units: list[tuple[int, int]],
                     stop_early: bool = False) -> torch.Tensor:
    """Bool (N, H_in, W_in): input pixels whose change moves unit units[n] (every channel of it) of
    sample n.  x: (N, 3, H_in, W_in) normalized input."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        act = layer_output(loaded, layer, x, stop_early)
        picked = torch.stack([act[n, :, i, j].sum() for n, (i, j) in enumerate(units)])
        (grad,) = torch.autograd.grad(picked.sum(), x)
    return grad.abs().sum(1) > 0


def _span(mask: torch.Tensor) -> tuple[int, int] | None:
    idx = torch.nonzero(mask).flatten()
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else None


def receptive_field(loaded: LoadedModel, layer: str, input_size: int | None = None, seed: int = 0) -> ReceptiveField:
    """The receptive field of `layer`'s units for inputs of the model's crop size (or input_size)."""
    crop = input_size or loaded.transform.crop
    gen = torch.Generator().manual_seed(seed)
    for factor in GROWTH:
        n = crop * factor
        # a field wider than the crop is measured once more on one input: a pixel lost at its rim is noise
        samples = SAMPLES if factor == 1 else 1
        x = torch.randn(samples, 3, n, n, generator=gen).to(_device(loaded.module))
        shape, once = _probe(loaded, layer, x[:1])
        if len(shape) != 4:
            raise UserError(f"layer {layer!r} of {loaded.spec} has output shape {shape[1:]}: "
                            "a receptive field needs a spatial (C, H, W) layer")
        h, w = shape[2:]
        if h < 2 or w < 2:
            continue  # one unit (global pooling, or an input too small to move by a stride)
        ci, cj = (h - 1) // 2, (w - 1) // 2
        units = [(ci, cj)] * samples + [(ci + 1, cj + 1)] * samples
        support = gradient_support(loaded, layer, torch.cat([x, x]), units, stop_early=once)
        centre, neighbour = support[:samples].any(0), support[samples:].any(0)
        spans = [_span(m.any(axis)) for m in (centre, neighbour) for axis in (1, 0)]  # rows, cols of each
        if any(s is None for s in spans):
            raise UserError(f"layer {layer!r} of {loaded.spec}: its centre unit does not depend on the input")
        (r0, r1), (c0, c1), (nr0, _), (nc0, _) = spans
        if r0 == 0 or c0 == 0 or r1 == n or c1 == n:
            continue  # the field reaches past the input: measure it on a larger one
        stride = (nr0 - r0, nc0 - c0)
        return ReceptiveField(size=(r1 - r0, c1 - c0), stride=stride,
                              start=(r0 - ci * stride[0], c0 - cj * stride[1]))
    return ReceptiveField(size=(crop, crop), stride=(0, 0), start=(0, 0), whole=True)
