"""The fast style network (Johnson et al. 2016): one forward pass stylizes an image.

Downsampling convolutions, residual blocks, upsampling (nearest + convolution, which avoids the
checkerboard of transposed convolutions), with instance normalization (Ulyanov et al. 2016)
in place of batch normalization. With several styles, every normalization has a learned scale
and shift per style (conditional instance normalization, Dumoulin et al. 2017); applying the
network with weights over the styles mixes those scales and shifts convexly (blending).

A trained network is kept as bytes of {config, state_dict, meta} (`to_bytes` / `from_bytes`);
`torchscript_bytes` and `onnx_bytes` export it for serving outside deepscope.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT = "deepscope-style-net/1"


@dataclass
class StyleNetConfig:
    styles: list[str] = field(default_factory=lambda: ["style"])  # names, one per style
    widths: tuple[int, int, int] = (32, 64, 128)  # Johnson's widths; tests use (8, 16, 32)
    res_blocks: int = 5
    output: str = "linear"  # "sigmoid": outputs always in [0, 1] (the loss network never sees values the
    # picture cannot show; unbounded outputs grow saturated blobs); "linear": clamped only to show

    @property
    def n_styles(self) -> int:
        return len(self.styles)


class CondInstanceNorm(nn.Module):
    """Instance norm whose scale and shift are a mix of per-style rows: w (N, S) @ table (S, C)."""

    def __init__(self, channels: int, n_styles: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n_styles, channels))
        self.shift = nn.Parameter(torch.zeros(n_styles, channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = F.instance_norm(x, eps=1e-5)
        scale = (w @ self.scale)[:, :, None, None]
        shift = (w @ self.shift)[:, :, None, None]
        return x * scale.to(x.dtype) + shift.to(x.dtype)


class ConvNorm(nn.Module):
    """Reflection-padded convolution (optionally after a 2x nearest upsampling), norm, ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, n_styles: int, up: bool = False, relu: bool = True):
        super().__init__()
        self.up, self.relu = up, relu
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride)
        self.norm = CondInstanceNorm(cout, n_styles)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.norm(self.conv(self.pad(x)), w)
        return F.relu(x) if self.relu else x


class Residual(nn.Module):
    def __init__(self, c: int, n_styles: int):
        super().__init__()
        self.a = ConvNorm(c, c, 3, 1, n_styles)
        self.b = ConvNorm(c, c, 3, 1, n_styles, relu=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x + self.b(self.a(x, w), w)


class StyleNet(nn.Module):
    """(N, 3, H, W) in [0, 1] and style weights (N, S) -> (N, 3, H, W) (unclamped; clamp to show)."""

    def __init__(self, config: StyleNetConfig):
        super().__init__()
        self.config = config
        c1, c2, c3 = config.widths
        s = config.n_styles
        self.down = nn.ModuleList([ConvNorm(3, c1, 9, 1, s), ConvNorm(c1, c2, 3, 2, s), ConvNorm(c2, c3, 3, 2, s)])
        self.res = nn.ModuleList([Residual(c3, s) for _ in range(config.res_blocks)])
        self.up = nn.ModuleList([ConvNorm(c3, c2, 3, 1, s, up=True), ConvNorm(c2, c1, 3, 1, s, up=True)])
        self.out = nn.Sequential(nn.ReflectionPad2d(4), nn.Conv2d(c1, 3, 9, 1))
        self.sigmoid = config.output == "sigmoid"

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h, wd = x.shape[-2:]
        # two stride-2 steps: pad to a multiple of 4 so the output has the input's size exactly
        ph, pw = (-h) % 4, (-wd) % 4
        # always pad (by 0 when already a multiple): a traced export must keep the op for other sizes
        y = F.pad(x, (0, pw, 0, ph), mode="reflect")
        for m in self.down:
            y = m(y, w)
        for m in self.res:
            y = m(y, w)
        for m in self.up:
            y = m(y, w)
        y = self.out(y)[:, :, :h, :wd]
        return torch.sigmoid(y) if self.sigmoid else y


def style_weights(config: StyleNetConfig, n: int, style: int | str | None = None,
                  blend: list[float] | None = None, device=None) -> torch.Tensor:
    """(n, S) weights: one-hot for a style (index or name), a normalized blend, or style 0."""
    s = config.n_styles
    if blend is not None:
        if len(blend) != s or min(blend) < 0 or sum(blend) <= 0:
            raise ValueError(f"blend {blend} must give one non-negative weight to each of the {s} styles "
                             f"({', '.join(config.styles)})")
        w = torch.tensor(blend, dtype=torch.float32) / float(sum(blend))
    else:
        idx = style_index(config, style)
        w = torch.zeros(s)
        w[idx] = 1.0
    return w.to(device).expand(n, s)


def style_index(config: StyleNetConfig, style: int | str | None) -> int:
    if style is None:
        return 0
    if isinstance(style, str) and not style.isdigit():
        if style not in config.styles:
            raise ValueError(f"unknown style {style!r}: the network knows {', '.join(config.styles)}")
        return config.styles.index(style)
    idx = int(style)
    if not 0 <= idx < config.n_styles:
        raise ValueError(f"style {idx} out of range: the network has {config.n_styles} styles "
                         f"({', '.join(config.styles)})")
    return idx


def to_image(y: torch.Tensor) -> torch.Tensor:
    return y.float().clamp(0, 1)


# ---------------------------------------------------------------------------- saving and export

def to_bytes(net: StyleNet, meta: dict | None = None) -> bytes:
    buf = io.BytesIO()
    cfg = asdict(net.config)
    cfg["widths"] = list(cfg["widths"])
    torch.save({"format": FORMAT, "config": cfg, "state_dict": net.state_dict(), "meta": meta or {}}, buf)
    return buf.getvalue()


def from_bytes(data: bytes) -> tuple[StyleNet, dict]:
    """-> (network in eval mode, meta). Raises ValueError for anything but a saved style network."""
    try:
        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"not a style network file ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError("not a style network file (train one with `deepscope style-train`)")
    cfg = blob["config"]
    net = StyleNet(StyleNetConfig(styles=list(cfg["styles"]), widths=tuple(cfg["widths"]), res_blocks=cfg["res_blocks"],
                                  output=cfg.get("output", "linear")))
    net.load_state_dict(blob["state_dict"])
    return net.eval(), blob.get("meta", {})


class _Exported(nn.Module):
    """The network with its style weights as an input: forward(image (N,3,H,W) in [0,1], weights (N,S))
    -> stylized image in [0, 1]."""

    def __init__(self, net: StyleNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.net(x, w).clamp(0, 1)


def torchscript_bytes(net: StyleNet) -> bytes:
    """Scripted, not traced: the padding to a multiple of 4 depends on the input's size."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        torch.jit.save(torch.jit.script(_Exported(net.eval())), buf)
    return buf.getvalue()


def onnx_bytes(net: StyleNet) -> bytes:
    """ONNX export (needs the `onnx` package); height and width are dynamic."""
    example = (torch.rand(1, 3, 64, 64), style_weights(net.config, 1))
    buf = io.BytesIO()
    torch.onnx.export(_Exported(net.eval()), example, buf, input_names=["image", "style_weights"],
                      output_names=["stylized"], dynamo=False,
                      dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "style_weights": {0: "n"}, "stylized": {0: "n", 2: "h", 3: "w"}})
    return buf.getvalue()


def stylize_images(net, images: list, weights: torch.Tensor, device, half: bool = False) -> list:
    """PIL images -> stylized uint8 arrays (H, W, 3); images of one size go through together."""
    out = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.size, []).append(i)
    for idx in groups.values():
        x = torch.stack([torch.from_numpy(np.asarray(images[i], dtype=np.uint8).copy()).permute(2, 0, 1) for i in idx])
        x = x.to(device).float().div_(255)
        if half and device.type == "cuda":
            x = x.half()
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            y = to_image(net(x, weights[: len(idx)].to(x.dtype)))
            y = (y.mul_(255).add_(0.5).clamp_(0, 255)).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for j, i in enumerate(idx):
            out[i] = y[j]
    return out
