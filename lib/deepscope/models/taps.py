"""Capture named layers during a forward pass, with forward hooks (works for every nn.Module family).

A layer is named by a module name from `model.named_modules()` ("features.8", "layer4",
"_blocks.15"), by an alias of the loaded model ("logits", "penultimate", "fc7"), or as
"MODULE:input" for the first positional input of a module instead of its output.

Modules called several times in one forward pass (lite0's shared top-level `_swish` runs for
the stem and again for the head) keep the LAST call's value.

Captured tensors are copies: code after a layer may update its output in place (resnet's
`out += identity` right after `bn2`), which would otherwise change what was captured.
"""
from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass

import torch

from deepscope.errors import UserError
from deepscope.models.registry import LoadedModel

ROOT = ""  # module name of the model itself: its output is the logits


@dataclass(frozen=True)
class Tap:
    name: str  # the layer as asked (an alias or a module name): the key of outputs
    module_name: str  # "" = the whole model
    kind: str = "output"  # "output" or "input"
    flatten: bool = False  # penultimate is defined as a flat vector per image


def resolve(loaded: LoadedModel, layer: str) -> Tap:
    layer = (layer or "").strip()
    spec = loaded.aliases.get(layer)
    if spec is None:
        if layer == "fc7":
            raise UserError(f"fc7 exists only for torchvision:alexnet and torchvision:vgg*; for {loaded.spec} "
                            "use penultimate (the input of the final classifier layer)")
        if layer == "penultimate":
            raise UserError(f"{loaded.spec} has no final nn.Linear layer, so no penultimate: name a layer instead")
        spec = layer
    module_name, _, kind = spec.partition(":")
    kind = kind or "output"
    if not layer or kind not in ("output", "input"):
        raise UserError(f"bad layer {layer!r}: use a module name, MODULE:input, or an alias "
                        f"({', '.join(loaded.aliases)})")
    if loaded.scripted and module_name != ROOT:
        raise UserError(f"layer {layer!r} is not available for {loaded.spec}: TorchScript modules cannot be "
                        "hooked, so they only give logits; load the Python model (lite0, torchvision:NAME, "
                        "timm:NAME) to tap layers")
    names = [n for n, _ in loaded.module.named_modules() if n]
    if module_name != ROOT and module_name not in names:
        close = difflib.get_close_matches(layer, list(loaded.aliases) + names, n=6, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else f"list them with `deepscope layers {loaded.spec}`"
        raise UserError(f"unknown layer {layer!r} in {loaded.spec}; {hint}")
    return Tap(layer, module_name, kind, flatten=(layer == "penultimate"))


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]  # e.g. nn.MultiheadAttention returns (output, weights)
    return None


class LayerTaps:
    """with LayerTaps(loaded, ["fc7", "features.8"]) as taps:
           logits = taps.forward(x)
       taps.outputs["fc7"]  # (N, 4096)

    Call `taps.forward(x)` rather than `loaded.module(x)`: the logits tap is taken from the
    return value, because TorchScript modules do not accept hooks.

    detach=True: captured tensors are detached copies.  detach=False: they stay in the autograd
    graph (for gradient methods), and the hooked module's output is replaced downstream by a
    clone, so in-place code after the layer cannot change the captured tensor.  Parameters are
    frozen, so a graph exists only when x requires grad (x.requires_grad_()).
    """

    def __init__(self, loaded: LoadedModel, layers: list[str], detach: bool = True):
        self.loaded = loaded
        self.taps = [resolve(loaded, layer) for layer in dict.fromkeys(layers)]
        self.detach = detach
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> LayerTaps:
        self.outputs = {}
        modules = {} if self.loaded.scripted else dict(self.loaded.module.named_modules())
        for tap in self.taps:
            if tap.module_name == ROOT:
                continue
            module = modules[tap.module_name]
            if tap.kind == "output":
                self._handles.append(module.register_forward_hook(self._output_hook(tap)))
            else:
                self._handles.append(module.register_forward_pre_hook(self._input_hook(tap)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def forward(self, x: torch.Tensor):
        logits = self.loaded.module(x)
        for tap in self.taps:
            if tap.module_name == ROOT:
                self._store(tap, logits)
        missing = [t.name for t in self.taps if t.name not in self.outputs]
        if missing:
            raise UserError(f"layers {', '.join(missing)} did not run in the forward pass of {self.loaded.spec}: "
                            "pick layers that compute the prediction")
        return logits

    def _store(self, tap: Tap, value) -> None:
        t = _first_tensor(value)
        if t is None:
            raise UserError(f"layer {tap.name!r} of {self.loaded.spec} gives a {type(value).__name__}, "
                            "not a tensor: pick another layer")
        if tap.flatten:
            t = t.flatten(1)
        self.outputs[tap.name] = t.detach().clone() if self.detach else t  # last call wins

    def _output_hook(self, tap: Tap):
        def hook(module, args, output):
            self._store(tap, output)
            if not self.detach and isinstance(output, torch.Tensor):
                return output.clone()  # downstream in-place ops now hit the clone, not the capture

        return hook

    def _input_hook(self, tap: Tap):
        def hook(module, args):
            if not args:
                raise UserError(f"layer {tap.name!r} of {self.loaded.spec} gets no positional input to capture")
            self._store(tap, args[0])
            if not self.detach and isinstance(args[0], torch.Tensor):
                return (args[0].clone(),) + tuple(args[1:])

        return hook


def forward_with_taps(loaded: LoadedModel, x: torch.Tensor, layers: list[str], detach: bool = True):
    """-> (logits, {layer: tensor}).  detach=True also runs under torch.no_grad() (inference path)."""
    with LayerTaps(loaded, layers, detach) as taps, (torch.no_grad() if detach else contextlib.nullcontext()):
        logits = taps.forward(x)
    return logits, taps.outputs


def _device(module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def list_layers(loaded: LoadedModel, input_size: int | None = None) -> list[tuple[str, str, tuple]]:
    """(name, module type, output shape without batch) for every module that runs, then the aliases.

    One forward pass on zeros at the transform's crop size (or input_size).  Modules that do not
    run in eval mode (aux heads) are left out, since tapping them would capture nothing.
    """
    size = input_size or loaded.transform.crop
    x = torch.zeros(1, 3, size, size, device=_device(loaded.module))
    seen: dict[str, tuple] = {}
    handles = []
    modules = [] if loaded.scripted else [(n, m) for n, m in loaded.module.named_modules() if n]
    for name, module in modules:
        def hook(mod, args, output, name=name):
            t = _first_tensor(output)
            seen[name] = tuple(t.shape[1:]) if t is not None else ()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad(), LayerTaps(loaded, list(loaded.aliases)) as taps:
            taps.forward(x)
    finally:
        for h in handles:
            h.remove()
    rows = [(n, type(m).__name__, seen[n]) for n, m in modules if n in seen]
    for alias, spec in loaded.aliases.items():
        what = "model output" if spec == ROOT else spec
        rows.append((alias, f"alias of {what}", tuple(taps.outputs[alias].shape[1:])))
    return rows


def layer_width(loaded, layer: str) -> int:
    """Channels (or classes) of a layer's output, from one forward pass at the crop size."""
    x = torch.zeros(1, 3, loaded.transform.crop, loaded.transform.crop)
    _, taps = forward_with_taps(loaded, x, [layer])
    out = taps[layer]
    if out.ndim not in (2, 4):
        raise UserError(f"layer {layer!r} gives shape {tuple(out.shape[1:])}: pick a layer with channels (N, C, H, W) or (N, C)")
    return int(out.shape[1])
