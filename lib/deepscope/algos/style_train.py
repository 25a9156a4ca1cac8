"""Training a fast style network on a folder of content images, with checkpoints and resume.

`deepscope style-train --style IMG --content DIR --out M.pt` (one style) or `--styles A,B,C`
(one network, conditional instance norm). The loss network is any supported model (lite0 by
default) through models/registry and models/taps. Every `checkpoint_every` steps the network,
optimizer and step are written atomically to M.pt.ckpt; a rerun of the same command resumes
from there, and a finished M.pt with the same settings means nothing to do.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepscope.algos import style_net as sn
from deepscope.algos.style import (LossNetwork, content_loss, content_weights, gram, gram_weights, network_layers,
                                   style_loss, tv_loss)
from deepscope.errors import UserError
from deepscope.io.location import write_single_file
from deepscope.models.registry import best_device

SKIMAGE_PREFIX = "skimage:"
PAINTING_PREFIX = "painting:"  # generated style images (io/demo_data.painting): painting:swirls, painting:glass


@dataclass
class TrainConfig:
    styles: list[str]  # image files or skimage:NAME (brick, gravel, grass, ...)
    content: str  # folder (or manifest) of content images
    model: str = "lite0"  # the loss network
    weights: str | None = None
    size: int = 256  # content crops are size x size
    style_size: int = 256  # style images are scaled to this longer side
    steps: int = 2000
    batch_size: int = 4
    lr: float = 5e-3  # short CPU trainings (hundreds of steps) need more than Johnson's 1e-3 over 40k
    content_weight: float = 1.0
    style_weight: float = 20.0
    tv_weight: float = 1.0
    widths: tuple[int, int, int] = (32, 64, 128)
    res_blocks: int = 5
    output: str = "sigmoid"  # the network's last activation (style_net.StyleNetConfig.output)
    seed: int = 0
    content_layers: list[str] = field(default_factory=list)  # empty: the loss network's defaults
    style_layers: list[str] = field(default_factory=list)

    def key(self) -> str:
        """What a checkpoint must share with the command that resumes it (not the step count)."""
        d = {k: v for k, v in asdict(self).items() if k != "steps"}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def load_style_image(spec: str) -> Image.Image:
    """An RGB style image from a file, from scikit-image's bundled samples (skimage:brick), or generated
    (painting:swirls, painting:glass)."""
    if spec.startswith(PAINTING_PREFIX):
        from deepscope.io.demo_data import painting

        try:
            return painting(spec[len(PAINTING_PREFIX):])
        except ValueError as e:
            raise UserError(str(e)) from None
    if spec.startswith(SKIMAGE_PREFIX):
        from skimage import data

        name = spec[len(SKIMAGE_PREFIX):]
        fn = getattr(data, name, None)
        if fn is None or not callable(fn):
            raise UserError(f"unknown scikit-image sample {name!r} (try brick, gravel, grass, coffee, astronaut)")
        a = np.asarray(fn())
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float64) / max(float(a.max()), 1e-9), 0, 1) * 255).astype(np.uint8)
        return Image.fromarray(a[:, :, :3])
    from deepscope.io.decode import open_image

    return open_image(spec, "style image")


def style_name(spec: str) -> str:
    for prefix in (SKIMAGE_PREFIX, PAINTING_PREFIX):
        if spec.startswith(prefix):
            return spec[len(prefix):]
    return Path(spec).stem


def to_tensor(img: Image.Image, long_side: int | None = None) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float in [0, 1], optionally scaled to a longer side."""
    if long_side:
        s = long_side / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)[None].float().contiguous() / 255


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.detach().float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "png", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if fmt in ("jpg", "jpeg") else "PNG", quality=quality)
    return buf.getvalue()


class ContentImages:
    """Random square crops of the content folder, decoded on demand (bad files skipped)."""

    def __init__(self, source: str, size: int, seed: int, paths: list[str] | None = None):
        from deepscope.io.sources import open_source

        self.paths = paths if paths is not None else [p for items in open_source(source).items() for p in items["path"]]
        if not self.paths:
            raise UserError(f"no content images found in {source}")
        self.size = size
        self.rng = np.random.default_rng(seed)

    def crop(self, path: str) -> torch.Tensor | None:
        from torchvision.transforms import functional as TF

        from deepscope.io.decode import DecodeError, decode
        from deepscope.io.sources import read_bytes

        try:
            img, _, _ = decode(read_bytes(path), draft_size=self.size)
        except (DecodeError, OSError):
            return None
        img = TF.resize(img, self.size)  # shorter side
        left = int(self.rng.integers(0, img.width - self.size + 1))
        top = int(self.rng.integers(0, img.height - self.size + 1))
        return to_tensor(img.crop((left, top, left + self.size, top + self.size)))[0]

    def batch(self, n: int) -> torch.Tensor:
        out = []
        for _ in range(20 * n):
            if len(out) == n:
                break
            t = self.crop(self.paths[int(self.rng.integers(len(self.paths)))])
            if t is not None:
                out.append(t)
        if not out:
            raise UserError("no content image could be decoded")
        return torch.stack(out)


class Trainer:
    """The perceptual-loss training of one (possibly multi-style) network."""

    def __init__(self, cfg: TrainConfig, device: torch.device | None = None, log=None):
        from deepscope.models.registry import load_model

        self.cfg, self.log = cfg, log
        self.device = device or best_device()
        loaded = load_model(cfg.model, cfg.weights)
        loaded.module.to(self.device)
        self.loaded = loaded
        c_layers, s_layers = network_layers(loaded)
        self.content_layers = cfg.content_layers or c_layers
        self.style_layers = cfg.style_layers or s_layers
        self.lossnet = LossNetwork(loaded, self.content_layers + self.style_layers)
        torch.manual_seed(cfg.seed)
        names = [style_name(s) for s in cfg.styles]
        self.net = sn.StyleNet(sn.StyleNetConfig(styles=names, widths=tuple(cfg.widths),
                                                 res_blocks=cfg.res_blocks, output=cfg.output)).to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        with torch.no_grad():
            self.targets = []
            for spec in cfg.styles:
                feats = self.lossnet(to_tensor(load_style_image(spec), cfg.style_size).to(self.device))
                self.targets.append({layer: gram(feats[layer]) for layer in self.style_layers})
            self.style_layer_weights = [gram_weights(t) for t in self.targets]
        self.step = 0
        self.history: list[list[float]] = []  # [step, style index, style loss, content loss] per step

    def losses(self, x: torch.Tensor, style: int, net: sn.StyleNet | None = None) -> tuple[torch.Tensor, ...]:
        """(objective, style loss, content loss) averaged over the batch, for one style."""
        net = net or self.net
        w = sn.style_weights(net.config, len(x), style, device=x.device)
        y = net(x, w)
        fy = self.lossnet(y)
        with torch.no_grad():
            fx = self.lossnet(x)
        ct = {layer: fx[layer] for layer in self.content_layers}
        c = content_loss(fy, ct, content_weights(ct)).mean()
        s = style_loss(fy, self.targets[style], self.style_layer_weights[style]).mean()
        obj = self.cfg.content_weight * c + self.cfg.style_weight * s + self.cfg.tv_weight * tv_loss(y).mean()
        return obj, s, c

    def train_steps(self, data: ContentImages, until: int, checkpoint=None, checkpoint_every: int = 0):
        self.net.train()
        t0, last, n0 = time.time(), time.time(), self.step
        while self.step < until:
            style = self.step % self.net.config.n_styles  # each batch trains one style (Dumoulin)
            x = data.batch(self.cfg.batch_size).to(self.device)
            obj, s, c = self.losses(x, style)
            self.opt.zero_grad(set_to_none=True)
            obj.backward()
            self.opt.step()
            self.step += 1
            self.history.append([self.step, style, round(float(s.detach()), 5), round(float(c.detach()), 5)])
            if not torch.isfinite(obj):
                raise UserError(f"training diverged at step {self.step}: lower --lr or --style-weight")
            if self.log and (time.time() - last > 5 or self.step == until):
                last = time.time()
                rate = (self.step - n0) / max(last - t0, 1e-9)
                self.log(f"  step {self.step}/{until}: style {float(s.detach()):.4g}, content {float(c.detach()):.4g} "
                         f"({rate:.2f} steps/s)")
            if checkpoint and checkpoint_every and self.step % checkpoint_every == 0 and self.step < until:
                checkpoint(self)
        self.net.eval()

    # -- checkpoints ------------------------------------------------------------------
    def state(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"key": self.cfg.key(), "step": self.step, "net": self.net.state_dict(),
                    "opt": self.opt.state_dict(), "rng": torch.get_rng_state(),
                    "history": self.history}, buf)
        return buf.getvalue()

    def restore(self, data: bytes) -> bool:
        blob = torch.load(io.BytesIO(data), map_location=self.device, weights_only=True)
        if blob.get("key") != self.cfg.key():
            return False
        self.net.load_state_dict(blob["net"])
        self.opt.load_state_dict(blob["opt"])
        torch.set_rng_state(blob["rng"].cpu())
        self.step = int(blob["step"])
        self.history = [list(h) for h in blob.get("history", [])]
        return True


def train(cfg: TrainConfig, out: str, log, checkpoint_every: int = 200) -> dict:
    """Train (or resume) and write the network to `out`; returns a summary. `log(message)` reports
    progress (the caller's: algorithms print nothing of their own)."""
    ckpt = Path(str(out) + ".ckpt")
    if Path(out).exists():
        try:
            _, meta = sn.from_bytes(Path(out).read_bytes())
        except ValueError:
            raise UserError(f"{out} exists and is not a style network; choose another --out") from None
        if meta.get("key") == cfg.key() and meta.get("steps", 0) >= cfg.steps:
            log(f"nothing to do: {out} was trained with these settings for {meta['steps']} steps")
            return meta
    t0 = time.time()
    trainer = Trainer(cfg, log=log)
    data = ContentImages(cfg.content, cfg.size, cfg.seed)
    if ckpt.exists() and trainer.restore(ckpt.read_bytes()):
        log(f"resuming from {ckpt} at step {trainer.step}/{cfg.steps}")
        data.rng = np.random.default_rng([cfg.seed, trainer.step])
    log(f"training a {trainer.net.config.n_styles}-style network ({', '.join(trainer.net.config.styles)}) on "
        f"{len(data.paths)} content images at {cfg.size} px, loss network {cfg.model} "
        f"(style {', '.join(trainer.style_layers)}; content {', '.join(trainer.content_layers)}), {trainer.device}")

    def checkpoint(t: Trainer):
        write_single_file(ckpt, t.state())
        log(f"  checkpoint at step {t.step}: {ckpt}")

    start = trainer.step
    trainer.train_steps(data, cfg.steps, checkpoint, checkpoint_every)
    meta = {"key": cfg.key(), "steps": trainer.step, "train": json.loads(json.dumps(asdict(cfg), default=list)),
            "content_layers": trainer.content_layers, "style_layers": trainer.style_layers,
            "loss_weights": trainer.loaded.weights, "random_weights": trainer.loaded.random_weights,
            "history": trainer.history}
    write_single_file(out, sn.to_bytes(trainer.net, meta))
    ckpt.unlink(missing_ok=True)
    wall = time.time() - t0
    log(f"done: {trainer.step - start} steps in {wall:.1f} s ({(trainer.step - start) / max(wall, 1e-9):.2f} steps/s), "
        f"{trainer.net.config.n_styles} style(s) -> {out}")
    return meta
