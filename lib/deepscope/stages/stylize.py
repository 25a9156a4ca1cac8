"""Stylize: every image of a dataset through a trained fast style network, as image files.

The style network is read on the driver (prepare) and shipped to the model actors inside the
stage object, so actors on other nodes need no access to the file; each actor builds it once,
on its first batch. Images are re-read at full resolution on the actor (the pipeline's decoded
pixels are the loss/base model's 224 px centre crop, the wrong picture to stylize), stylized at
their original size or a given longer side, and encoded there; the encoded bytes travel back as
a column and the worker writes them with `part_files` before the partition's table, so a
recorded part implies its images, and a retried part rewrites the same names.

The job's [model] (lite0 by default) is not used: the mapper runs it once per batch anyway (a
224 px forward, a few percent of a 512 px stylization); the style network was trained against
its own loss network, recorded in the network file.

method = "gatys" (small jobs, where training a network is not worth it): no network is loaded or
trained; the job's [model] is the loss network, the style image's Gram targets are computed once
on the driver (prepare) and shipped with the stage, and the actors run one Gatys optimization per
batch (algos.style.gatys: images of one optimization shape together, each its own problem, so an
image's picture does not depend on its batch). Outputs, schema and report figure are the network
method's.

The figures and the report section are in report/stylize.py. The stage is longer than 350 lines
because it holds both methods (network and gatys), each with its driver preparation and its
actor code, over one config, one part table and one finish.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, model_validator

from deepscope.algos.style_net import stylize_images
from deepscope.errors import UserError
from deepscope.io import schemas
from deepscope.report.stylize import stylize_figure, stylize_html, training_figure
from deepscope.stages.base import Stage, StageConfig

IMAGES = "stylized/images"


class TrainSection(StageConfig):
    """Train the network first when `style_model` does not exist (the demo's one-job recipe)."""

    styles: list[str]  # image files or skimage:NAME
    steps: int = Field(300, ge=1)
    size: int = Field(128, ge=16)
    batch_size: int = Field(4, ge=1)
    widths: tuple[int, int, int] = (16, 32, 64)
    res_blocks: int = Field(3, ge=0)
    style_weight: float = 20.0
    lr: float = 5e-3
    model: str = "lite0"


# [stylize] keys of method = "gatys" alone; a network job's fingerprint leaves them out, so that
# folders made before the method existed keep theirs
GATYS_KEYS = ("method", "steps", "optimizer", "lr", "init", "content_weight", "style_weight", "tv_weight",
              "style_scale", "preserve_colour", "content_layers", "style_layers", "bucket", "seed")
GATYS_SIZE = 256  # gatys's default longer side (it optimizes every pixel: the original size is rarely wanted)


class StylizeConfig(StageConfig):
    method: Literal["network", "gatys"] = "network"  # a trained fast network, or Gatys optimization per image
    style_model: str | None = None  # network: a network file from `deepscope style-train`
    # network: index or name among the network's styles (default the first);
    # gatys: the style image, a file, skimage:NAME or painting:swirls|painting:glass (required)
    style: int | str | None = None
    blend: list[float] | None = None  # network: weights over the network's styles (instead of style)
    size: int = Field(0, ge=0)  # longer side of the output; 0 keeps the original size (gatys: default 256)
    format: Literal["jpeg", "png"] = "jpeg"
    quality: int = Field(90, ge=1, le=100)
    half: bool = False  # network: fp16 style network on GPU (ignored on CPU)
    train: TrainSection | None = None  # network: train it first when style_model does not exist
    # gatys, as `deepscope style`; the loss network is the job's [model] (lite0 by default)
    steps: int = Field(200, ge=0)
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float = Field(0.02, gt=0)  # Adam's learning rate
    init: Literal["content", "noise"] = "content"
    content_weight: float = Field(1.0, ge=0)
    style_weight: float = Field(10.0, ge=0)
    tv_weight: float = Field(1.0, ge=0)
    style_scale: float = Field(1.0, gt=0)  # the style image's longer side relative to the content's
    preserve_colour: bool = False
    content_layers: list[str] | None = None  # default: the loss network's (algos.style.default_layers)
    style_layers: list[str] | None = None
    bucket: int = Field(16, ge=0)  # the shorter side is rounded to a multiple of this, so that images of
    #                                nearly one shape are optimized together (0: exact shapes only)
    seed: int = 0  # noise init, per image from its id

    @model_validator(mode="after")
    def _one_choice(self):
        if self.method == "gatys":
            given = self.model_fields_set
            wrong = [k for k in ("style_model", "blend", "train", "half") if _changed(self, k)]
            if wrong:
                raise ValueError(f"{', '.join(wrong)}: only for method = \"network\"")
            if not isinstance(self.style, str) or not self.style.strip():
                raise ValueError('method = "gatys" needs style = "FILE", "skimage:NAME" or "painting:swirls|glass"')
            if self.size == 0:
                if "size" in given:
                    raise ValueError('method = "gatys" optimizes every pixel: give size > 0 (e.g. 256)')
                self.size = GATYS_SIZE
            return self
        if not self.style_model:
            raise ValueError('method = "network" needs style_model = "FILE" (or method = "gatys" with a style image)')
        given = [k for k in GATYS_KEYS if _changed(self, k)]  # (a dumped job, re-read on the actors, has every key)
        if given:
            raise ValueError(f"{', '.join(given)}: only for method = \"gatys\"")
        if self.style is not None and self.blend is not None:
            raise ValueError("give style or blend, not both")
        return self


def _changed(cfg: StylizeConfig, key: str) -> bool:
    return getattr(cfg, key) != StylizeConfig.model_fields[key].default


def output_name(item_id: str, fmt: str) -> str:
    """The input's relative path, with the output format's extension appended unless it has it."""
    rel = str(item_id).replace("\\", "/").lstrip("/")
    rel = "/".join(p for p in rel.split("/") if p not in ("", ".", ".."))  # never outside the folder
    ext = {"jpeg": (".jpg", ".jpeg"), "png": (".png",)}[fmt]
    return f"{IMAGES}/{rel}" if rel.lower().endswith(ext) else f"{IMAGES}/{rel}{ext[0]}"


class Stylize(Stage):
    name = "stylize"
    Config = StylizeConfig
    uses_model = False  # its own network; the job's [model] forward is skipped when nothing else needs it

    def __init__(self, config, job):
        super().__init__(config, job)
        self.model_bytes: bytes | None = None  # set by prepare() on the driver, shipped to the actors
        self._net = None
        if config.method == "gatys":  # the job's [model] is the loss network, differentiated on the actors
            self.uses_model = True
            self.needs_grad = True
        self.style_targets: dict[str, torch.Tensor] | None = None  # gatys: set by prepare(), shipped
        self.loss_layers: tuple[list[str], list[str]] | None = None
        self._loss = None

    def fingerprint(self):
        if self.config.method == "gatys":
            return self.config.model_dump(mode="json", exclude={"train", "style_model", "blend", "half"})
        return self.config.model_dump(mode="json", exclude={"train", *GATYS_KEYS})  # as before the method existed

    def prepare(self, ctx):
        if self.config.method == "gatys":
            return self._prepare_gatys(ctx)
        store = ctx.store
        from deepscope.algos import style_net as sn

        path = Path(self.config.style_model)
        if not path.exists() and self.config.train is not None:
            self._train(path, ctx.log)
        if not path.exists():
            raise UserError(f"style model not found: {path} (train one with `deepscope style-train`)")
        data = path.read_bytes()
        try:
            net, _ = sn.from_bytes(data)
            self.weights_for(net.config, 1)
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
        digest = hashlib.sha256(data).hexdigest()
        for part, entry in store.parts(self.name).items():  # a folder never mixes two networks
            meta = store.read_schema(entry["file"]).metadata or {}
            old = meta.get(b"deepscope.style_model_sha256", b"").decode()
            if old and old != digest:
                raise UserError(f"{store.root}/stylize was made with another version of {path}; "
                                f"delete {store.root / 'stylize'} and {store.root / IMAGES} or use another --out")
            break
        self.model_bytes, self.model_sha256 = data, digest

    def _prepare_gatys(self, ctx):
        """The style image's Gram targets, once, on the driver: it holds the job's model already
        (ctx.loaded, the same weights as the actors'), the targets are small (C x C per style layer)
        and every batch of every actor reuses them, so no actor reads the style file (nodes need no
        shared file system) or spends a forward pass on it; the driver also checks the style here,
        with one line, before any cluster work."""
        from deepscope.algos.style import LossNetwork, default_layers, style_targets
        from deepscope.algos.style_train import load_style_image, to_tensor

        cfg = self.config
        try:
            img = load_style_image(cfg.style)
            c, s = default_layers(ctx.loaded)
            c, s = cfg.content_layers or c, cfg.style_layers or s
            net = LossNetwork(ctx.loaded, c + s)
        except (ValueError, KeyError) as e:
            raise UserError(f"[stylize] gatys: {e}") from None
        self.style_sha256 = hashlib.sha256(np.asarray(img, np.uint8).tobytes()).hexdigest()
        for part, entry in ctx.store.parts(self.name).items():  # a folder never mixes two style images
            meta = ctx.store.read_schema(entry["file"]).metadata or {}
            old = meta.get(b"deepscope.style_image_sha256", b"").decode()
            if old and old != self.style_sha256:
                raise UserError(f"{ctx.store.root}/stylize was made with another version of {cfg.style}; "
                                f"delete {ctx.store.root / 'stylize'} and {ctx.store.root / IMAGES} or use another --out")
            break
        # every content image is optimized at longer side `size`, so one style size fits all batches
        long_side = max(1, round(cfg.style_scale * cfg.size))
        dev = next(ctx.loaded.module.parameters(), torch.empty(0)).device
        targets = style_targets(net, [to_tensor(img).to(dev)], s, long_side=long_side)
        self.style_targets = {k: v.detach().cpu() for k, v in targets.items()}
        self.loss_layers = (list(c), list(s))
        ctx.log(f"stylize: gatys, style {cfg.style} at {long_side} px, loss network {ctx.loaded.spec} "
                f"(content {', '.join(c)}; style {', '.join(s)}), {cfg.steps} {cfg.optimizer} steps at {cfg.size} px")

    def _train(self, path: Path, log):
        from deepscope.algos.style_train import TrainConfig, train

        t = self.config.train
        log(f"stylize: {path} does not exist; training it on {self.job.dataset.source} first")
        train(TrainConfig(styles=t.styles, content=self.job.dataset.source, model=t.model, size=t.size,
                          style_size=t.size * 2, steps=t.steps, batch_size=t.batch_size, lr=t.lr,
                          style_weight=t.style_weight, widths=t.widths, res_blocks=t.res_blocks),
              str(path), log, checkpoint_every=100)

    def weights_for(self, config, n: int, device=None) -> torch.Tensor:
        from deepscope.algos.style_net import style_weights

        return style_weights(config, n, self.config.style, self.config.blend, device)

    def style_label(self, config) -> str:
        from deepscope.algos.style_net import style_index

        if self.config.method == "gatys":
            from deepscope.algos.style_train import style_name
            return style_name(self.config.style)
        if self.config.blend is None:
            return config.styles[style_index(config, self.config.style)]
        total = sum(self.config.blend)
        return "blend(" + ",".join(f"{s}={w / total:.3g}" for s, w in zip(config.styles, self.config.blend)) + ")"

    # -- on the model actors ------------------------------------------------------------
    def _network(self, device):
        if self._net is None:  # built once per actor, on its first batch
            from deepscope.algos import style_net as sn
            from deepscope.models.registry import best_device

            net, _ = sn.from_bytes(self.model_bytes)
            dev = best_device() if device is None else device
            net = net.to(dev)
            if self.config.half and dev.type == "cuda":
                net = net.half()
            self._net = (net, dev, self.style_label(net.config))
        return self._net

    def _read_images(self, rows) -> list:
        from PIL import Image

        from deepscope.io.decode import decode
        from deepscope.io.sources import read_bytes

        images = []
        for path in rows["path"]:
            img, _, _ = decode(read_bytes(str(path)), draft_size=self.config.size or None)
            if self.config.size:
                s = self.config.size / max(img.size)
                img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)
            images.append(img)
        return images

    def map_batch(self, model, x, taps, rows):
        from PIL import Image

        from deepscope.algos.style_train import encode

        if self.config.method == "gatys":
            outs, label = self._gatys_batch(model, x.device, rows), self.style_label(None)
        else:
            net, device, label = self._network(x.device)
            images = self._read_images(rows)
            weights = self.weights_for(net.config, len(images), device)
            outs = stylize_images(net, images, weights, device, self.config.half)
        data = [encode(Image.fromarray(a), self.config.format, self.config.quality) for a in outs]
        image = np.empty(len(data), dtype=object)  # one bytes object per row (np.array(data) could not hold them)
        image[:] = data
        return {"image": image,
                "out_width": np.array([a.shape[1] for a in outs], np.int32),
                "out_height": np.array([a.shape[0] for a in outs], np.int32),
                "sha256": np.array([hashlib.sha256(d).hexdigest() for d in data], dtype=object),
                "style": np.array([label] * len(data), dtype=object)}

    def _gatys_batch(self, model, device, rows) -> list:
        """Gatys for the batch's images: those of one optimization shape together, in one
        optimization; each image then resized to its own output size."""
        from PIL import Image

        from deepscope.algos.gatys_batch import gatys
        from deepscope.algos.style import LossNetwork
        from deepscope.io.images import item_seed
        from deepscope.algos.style_train import to_tensor

        cfg = self.config
        if self._loss is None:  # once per actor
            c, s = self.loss_layers
            self._loss = (LossNetwork(model, c + s), {k: v.to(device) for k, v in self.style_targets.items()})
        net, targets = self._loss
        images = self._read_images(rows)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(bucket_shape(img.size, cfg.bucket), []).append(i)
        out = [None] * len(images)
        for (w, h), idx in groups.items():
            x = torch.cat([to_tensor(images[i] if images[i].size == (w, h) else
                                     images[i].resize((w, h), Image.Resampling.LANCZOS)) for i in idx]).to(device)
            r = gatys(net, x, targets, self.loss_layers[0], content_weight=cfg.content_weight,
                      style_weight=cfg.style_weight, tv_weight=cfg.tv_weight, init=cfg.init, optimizer=cfg.optimizer,
                      steps=cfg.steps, lr=cfg.lr, preserve_colour=cfg.preserve_colour,
                      seed=[item_seed(rows["id"][i], cfg.seed) for i in idx])
            y = (r.image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for j, i in enumerate(idx):
                a = y[j]
                if images[i].size != (w, h):  # back to the image's own aspect
                    a = np.asarray(Image.fromarray(a).resize(images[i].size, Image.Resampling.LANCZOS))
                out[i] = a
        return out

    # -- on the driver --------------------------------------------------------------------
    def part_files(self, part, rows):
        return {output_name(i, self.config.format): bytes(d)
                for i, d in zip(rows["id"], rows.get("image", []))}

    def part_table(self, rows):
        n = len(rows["id"])
        images = rows.get("image", [])
        t = pa.table({
            "id": pa.array([str(i) for i in rows["id"]], pa.string()),
            "path": pa.array([str(p) for p in rows["path"]], pa.string()),
            "output": pa.array([output_name(i, self.config.format) for i in rows["id"]], pa.string()),
            "style": pa.array([str(s) for s in rows.get("style", [])], pa.string()),
            "width": pa.array(rows.get("out_width", np.zeros(0, np.int32)), pa.int32()),
            "height": pa.array(rows.get("out_height", np.zeros(0, np.int32)), pa.int32()),
            "bytes": pa.array([len(d) for d in images], pa.int64()),
            "sha256": pa.array([str(s) for s in rows.get("sha256", [])], pa.string()),
        }, schema=schemas.STYLIZED)
        assert t.num_rows == n
        if self.config.method == "gatys":
            return t.replace_schema_metadata({"deepscope.style_image_sha256": getattr(self, "style_sha256", "")})
        return t.replace_schema_metadata({"deepscope.style_model_sha256": getattr(self, "model_sha256", "")})

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        from deepscope.algos import style_net as sn

        rows, pixels, styles = 0, 0, set()
        sample: list[tuple[str, str]] = []
        rest: list[tuple[str, str]] = []
        for _, t in store.iter_parts(self.name, columns=["path", "output", "style", "width", "height"]):
            rows += t.num_rows
            pixels += int(np.sum(np.asarray(t.column("width"), np.int64) * np.asarray(t.column("height"), np.int64)))
            styles.update(t.column("style").to_pylist())
            pairs = list(zip(t.column("path").to_pylist(), t.column("output").to_pylist()))
            sample += pairs[:1]  # one per partition first, so the figure spans the dataset
            rest += pairs[1:8]
        sample = (sample[::max(1, len(sample) // 8)] + rest)[:8]
        if self.config.method == "gatys":
            cfg = self.config
            figure = stylize_figure(store, sample, None, style_specs=[cfg.style])
            if rows:
                store.write_table("stylized.parquet", store.read(self.name))
            log(f"stylize: {rows} images, {pixels / 1e6:.1f} Mpx, gatys with style {cfg.style} -> {store.root / IMAGES}")
            return {"images": rows, "megapixels": round(pixels / 1e6, 2), "styles": sorted(styles), "method": "gatys",
                    "style_image": cfg.style, "loss_network": self.job.model.name, "steps": cfg.steps,
                    "optimizer": cfg.optimizer, "size": cfg.size, "style_weight": cfg.style_weight,
                    "figure": figure, "table": "stylized.parquet", "folder": IMAGES}
        data = self.model_bytes
        if data is None and Path(self.config.style_model).exists():  # nothing was pending: no prepare()
            data = Path(self.config.style_model).read_bytes()
        net, meta = sn.from_bytes(data) if data else (None, {})
        figure = stylize_figure(store, sample, net, meta)
        training = training_figure(store, meta)
        if rows:
            store.write_table("stylized.parquet", store.read(self.name))
        log(f"stylize: {rows} images, {pixels / 1e6:.1f} Mpx, style {', '.join(sorted(styles))} -> "
            f"{store.root / IMAGES}")
        return {"method": "network", "images": rows, "megapixels": round(pixels / 1e6, 2), "styles": sorted(styles),
                "network_styles": net.config.styles if net else [], "model": self.config.style_model,
                "model_sha256": getattr(self, "model_sha256", ""), "loss_network": meta.get("train", {}).get("model"),
                "figure": figure, "training_figure": training, "table": "stylized.parquet", "folder": IMAGES}

    def report(self, store):
        return stylize_html(store.summary(self.name) or {}, IMAGES)


def bucket_shape(size: tuple[int, int], bucket: int) -> tuple[int, int]:
    """(w, h) at which an image of this size is optimized: its shorter side rounded to a multiple of
    bucket (at least bucket, at most the longer side), so that images of nearly one shape share one
    optimization; the result is resized back to the image's own size (a stretch of at most bucket/2 px)."""
    w, h = size
    if bucket <= 0:
        return w, h
    if w >= h:
        return w, min(w, max(bucket, round(h / bucket) * bucket))
    return min(h, max(bucket, round(w / bucket) * bucket)), h
