"""Style: `style-train`, `style-export`, `stylize` (a dataset, on Ray), `style` (Gatys), `texture`.

`style` and `texture` run on this machine (one optimization per image or batch of images);
`stylize` is a pipeline job, exactly once and resumable like every other.
"""
from __future__ import annotations

import html
import time
from pathlib import Path

from deepscope.commands.common import model_options, run_options, run_section
from deepscope.errors import UserError


def add_commands(sub) -> None:
    t = sub.add_parser("style-train", help="train a fast style network (one style, or several with --styles)")
    g = t.add_mutually_exclusive_group(required=True)
    g.add_argument("--style", help="style image (file or skimage:NAME, e.g. skimage:brick)")
    g.add_argument("--styles", help="comma-separated style images: one network, conditional instance norm")
    t.add_argument("--content", required=True, help="folder of content images")
    t.add_argument("--out", required=True, help="network file (M.pt); M.pt.ckpt holds checkpoints")
    t.add_argument("--model", default="lite0", help="loss network: lite0 | torchvision:vgg16 | ...")
    t.add_argument("--weights", help="loss network weights file ('random': tests only)")
    t.add_argument("--size", type=int, default=256, help="content crop size (px)")
    t.add_argument("--style-size", type=int, help="style image longer side (default: --size)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--lr", type=float, default=5e-3)
    t.add_argument("--content-weight", type=float, default=1.0)
    t.add_argument("--style-weight", type=float, default=20.0)
    t.add_argument("--tv-weight", type=float, default=1.0)
    t.add_argument("--widths", default="32,64,128", help="channels of the three convolution stages")
    t.add_argument("--res-blocks", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    t.add_argument("--threads", type=int, help="torch threads")
    t.add_argument("--torchscript", help="also export TorchScript to this file")
    t.add_argument("--onnx", help="also export ONNX to this file (needs the onnx package)")
    t.set_defaults(fn="deepscope.commands.style:cmd_style_train")

    e = sub.add_parser("style-export", help="export a style network to TorchScript and/or ONNX")
    e.add_argument("model", help="network file from style-train")
    e.add_argument("--torchscript")
    e.add_argument("--onnx")
    e.set_defaults(fn="deepscope.commands.style:cmd_style_export")

    s = sub.add_parser("stylize", help="stylize every image of a dataset with a style network (Ray job)")
    s.add_argument("data", help="folder, .parquet/.csv manifest with a path column, or URL")
    s.add_argument("--style-model", required=True, help="network file from style-train")
    s.add_argument("--style", help="style index or name (default: the first)")
    s.add_argument("--blend", help="weights over the network's styles, e.g. 0.3,0.7")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--size", type=int, default=0, help="output longer side; 0 keeps the original size")
    s.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    s.add_argument("--quality", type=int, default=90)
    s.add_argument("--half", action="store_true", help="fp16 style network on GPU")
    model_options(s)
    run_options(s, errors=True)
    s.set_defaults(fn="deepscope.commands.style:cmd_stylize")

    n = sub.add_parser("style", help="neural style (Gatys): one image, or a folder as a batch job")
    n.add_argument("image", help="content image or folder")
    n.add_argument("--style", required=True, help="style image(s), comma-separated (file or skimage:NAME)")
    n.add_argument("--mix", help="weights of the style images' Gram matrices, e.g. 0.5,0.5")
    n.add_argument("--out", required=True, help="output file (one image) or folder")
    n.add_argument("--size", type=int, default=256, help="content longer side (px)")
    n.add_argument("--style-scale", type=float, default=1.0, help="style image size relative to the content")
    n.add_argument("--steps", type=int, default=200)
    n.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    n.add_argument("--lr", type=float, default=0.02, help="Adam's learning rate")
    n.add_argument("--init", choices=["content", "noise"], default="content")
    n.add_argument("--content-weight", type=float, default=1.0)
    n.add_argument("--style-weight", type=float, default=10.0)
    n.add_argument("--tv-weight", type=float, default=1.0)
    n.add_argument("--preserve-colour", action="store_true", help="keep the content image's colours")
    n.add_argument("--batch-size", type=int, default=4, help="images of one size optimized together")
    n.add_argument("--model", default="lite0", help="loss network")
    n.add_argument("--weights")
    n.add_argument("--content-layers")
    n.add_argument("--style-layers")
    n.add_argument("--threads", type=int)
    n.set_defaults(fn="deepscope.commands.style:cmd_style")

    x = sub.add_parser("texture", help="texture synthesis (Gatys 2015) from a sample image")
    x.add_argument("sample", help="texture sample (file or skimage:NAME)")
    x.add_argument("--size", default="512", help="output size: N or WxH")
    x.add_argument("--sample-size", type=int, default=256, help="sample's longer side (px)")
    x.add_argument("--out", required=True, help="output image file")
    x.add_argument("--steps", type=int, default=200)
    x.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    x.add_argument("--lr", type=float, default=0.05)
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--model", default="lite0")
    x.add_argument("--weights")
    x.add_argument("--style-layers")
    x.add_argument("--threads", type=int)
    x.set_defaults(fn="deepscope.commands.style:cmd_texture")


def _floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _torch_setup(threads: int | None):
    import torch

    if threads:
        torch.set_num_threads(threads)
    from deepscope.models.registry import best_device
    return best_device()


# ---------------------------------------------------------------------------- style-train

def cmd_style_train(a):
    from deepscope.algos.style_train import TrainConfig, train
    from deepscope.runner import log

    styles = [a.style] if a.style else [s for s in (a.styles or "").split(",") if s]
    if not styles:
        raise UserError("give --style IMG or --styles A,B,C")
    if not Path(a.content).exists() and "://" not in a.content:
        raise UserError(f"content folder not found: {a.content}")
    widths = tuple(int(w) for w in a.widths.split(","))
    if len(widths) != 3:
        raise UserError(f"--widths needs three numbers, got {a.widths!r}")
    _torch_setup(a.threads)
    cfg = TrainConfig(styles=styles, content=a.content, model=a.model, weights=a.weights, size=a.size,
                      style_size=a.style_size or a.size, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                      content_weight=a.content_weight, style_weight=a.style_weight, tv_weight=a.tv_weight,
                      widths=widths, res_blocks=a.res_blocks, seed=a.seed)
    train(cfg, a.out, log, checkpoint_every=a.checkpoint_every)
    if a.torchscript or a.onnx:
        _export(a.out, a.torchscript, a.onnx)


def cmd_style_export(a):
    if not (a.torchscript or a.onnx):
        raise UserError("give --torchscript FILE and/or --onnx FILE")
    _export(a.model, a.torchscript, a.onnx)


def _export(model_path: str, torchscript: str | None, onnx: str | None):
    from deepscope.algos import style_net as sn
    from deepscope.io.location import write_single_file
    from deepscope.runner import log

    net, _ = _load_net(model_path)
    if torchscript:
        write_single_file(torchscript, sn.torchscript_bytes(net))
        log(f"TorchScript: {torchscript}  (forward(image (N,3,H,W) in [0,1], style_weights (N,{net.config.n_styles})))")
    if onnx:
        try:
            import onnx as _  # noqa: F401  torch's exporter needs it
        except ImportError:
            raise UserError("ONNX export needs the onnx package (pip install onnx); TorchScript export works without it") from None
        write_single_file(onnx, sn.onnx_bytes(net))
        log(f"ONNX: {onnx}")


def _load_net(path: str):
    from deepscope.algos import style_net as sn

    if not Path(path).is_file():
        raise UserError(f"style model not found: {path}")
    try:
        return sn.from_bytes(Path(path).read_bytes())
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------- stylize (pipeline)

def cmd_stylize(a):
    from deepscope import job as jobmod
    from deepscope.runner import run

    if a.style is not None and a.blend is not None:
        raise UserError("give --style or --blend, not both")
    net, _ = _load_net(a.style_model)  # fail fast, with one line
    cfg = {"style_model": a.style_model, "size": a.size, "format": a.format, "quality": a.quality, "half": a.half}
    if a.blend is not None:
        cfg["blend"] = _floats(a.blend, "--blend")
    if a.style is not None:
        cfg["style"] = int(a.style) if a.style.isdigit() else a.style
    from deepscope.algos.style_net import style_weights
    try:
        style_weights(net.config, 1, cfg.get("style"), cfg.get("blend"))
    except ValueError as e:
        raise UserError(str(e)) from None
    spec = jobmod.validate({"out": a.out, "dataset": {"source": a.data},
                            "model": {"name": a.model, "weights": a.weights},
                            "run": run_section(a), "stylize": cfg}, "arguments")
    run(spec)


# ---------------------------------------------------------------------------- style (Gatys) and texture

def _loss_network(model: str, weights: str | None, content_layers: str | None, style_layers: str | None):
    from deepscope.algos.style import LossNetwork, default_layers
    from deepscope.models.registry import load_model

    loaded = load_model(model, weights)
    c, s = default_layers(loaded)
    c = content_layers.split(",") if content_layers else c
    s = style_layers.split(",") if style_layers else s
    return LossNetwork(loaded, c + s), c, s


def _image_list(path: str) -> tuple[list[str], Path | None]:
    """A file -> [it], None; a folder -> its images, the folder (ids are paths relative to it)."""
    from deepscope.io.sources import FolderSource

    p = Path(path)
    if p.is_file():
        return [str(p)], None
    if p.is_dir():
        paths = [x for items in FolderSource(str(p)).items() for x in items["path"]]
        if not paths:
            raise UserError(f"no images found in {p}")
        return paths, p
    raise UserError(f"content image or folder not found: {path}")


def _read_rgb(path: str):
    from deepscope.io.decode import DecodeError, decode
    from deepscope.io.sources import read_bytes

    try:
        return decode(read_bytes(path))[0]
    except (DecodeError, OSError) as e:
        raise UserError(f"{path}: {e}") from None


def cmd_style(a):
    import torch

    from deepscope.algos.style import neural_style
    from deepscope.io.location import write_single_file
    from deepscope.runner import log
    from deepscope.algos.style_train import encode, load_style_image, style_name, to_pil, to_tensor

    device = _torch_setup(a.threads)
    styles = [s for s in a.style.split(",") if s]
    mix = _floats(a.mix, "--mix")
    if mix is not None and len(mix) != len(styles):
        raise UserError(f"--mix needs one weight per style ({len(styles)}), got {len(mix)}")
    net, c_layers, s_layers = _loss_network(a.model, a.weights, a.content_layers, a.style_layers)
    net.loaded.module.to(device)
    style_imgs = [to_tensor(load_style_image(s)).to(device) for s in styles]
    paths, root = _image_list(a.image)
    if root is None and Path(a.out).is_dir():
        raise UserError(f"--out {a.out} is a folder: give a file name for one image")
    if root:  # a folder job resumes, so a folder holds the results of one setting only
        import json

        from deepscope.io.location import write_single_file
        settings = json.dumps({k: v for k, v in sorted(vars(a).items()) if k not in ("fn", "threads", "batch_size")})
        marker = Path(a.out) / "style.json"
        if marker.exists() and marker.read_text() != settings:
            raise UserError(f"{a.out} holds results of other style settings ({marker}); use another --out")
        write_single_file(marker, settings.encode())
    todo, done, failed = [], 0, 0
    for p in paths:
        rel = Path(p).relative_to(root).with_suffix(".png") if root else None
        target = Path(a.out) / rel if root else Path(a.out)
        if root and target.exists():
            done += 1  # a rerun resumes: finished images are kept
            continue
        todo.append((p, target))
    t0 = time.time()
    log(f"style: {len(todo)} images to optimize ({done} already done), {a.steps} {a.optimizer} steps each, "
        f"loss network {a.model}, styles {', '.join(style_name(s) for s in styles)}, {device}")
    # images of one size are optimized together (batches of --batch-size): one forward for many on a GPU
    groups: dict[tuple, list] = {}
    for p, target in todo:
        try:
            img = _read_rgb(p)
        except UserError as e:
            log(f"  skipped {e}")
            failed += 1
            continue
        x = to_tensor(img, a.size)
        groups.setdefault(tuple(x.shape[-2:]), []).append((x, target))
    for shape, members in groups.items():
        for i in range(0, len(members), a.batch_size):
            chunk = members[i:i + a.batch_size]
            x = torch.cat([m[0] for m in chunk]).to(device)
            r = neural_style(net, x, style_imgs, c_layers, s_layers, mix=mix, style_scale=a.style_scale,
                             content_weight=a.content_weight, style_weight=a.style_weight, tv_weight=a.tv_weight,
                             init=a.init, optimizer=a.optimizer, steps=a.steps, lr=a.lr,
                             preserve_colour=a.preserve_colour, log=log if len(todo) == 1 else None)
            for j, (_, target) in enumerate(chunk):
                write_single_file(target, encode(to_pil(r.image[j:j + 1]), target.suffix.lstrip(".") or "png"))
                done += 1
                log(f"  {done}/{len(paths)} {target}: style loss {r.style_loss[j]:.3g}, content loss {r.content_loss[j]:.3g}")
    wall = time.time() - t0
    if root:
        _index_html(Path(a.out), root, paths, "Neural style: " + ", ".join(styles))
    n = len(todo) - failed
    log(f"done: {n} images optimized, {failed} failed in {wall:.1f} s"
        + (f" ({wall / n:.1f} s/image)" if n else "") + f" -> {a.out}")


def _index_html(out: Path, root: Path, paths: list[str], title: str):
    from deepscope.io.location import write_single_file

    rows = []
    for p in paths:
        rel = Path(p).relative_to(root).with_suffix(".png")
        if (out / rel).exists():
            rows.append(f"<tr><td><img src=\"{html.escape(Path(p).resolve().as_uri())}\" width=256></td>"
                        f"<td><img src=\"{html.escape(str(rel))}\" width=256></td></tr>")
    write_single_file(out / "index.html", (f"<!doctype html><title>{html.escape(title)}</title><h2>{html.escape(title)}</h2>"
                                           f"<table><tr><th>source</th><th>stylized</th></tr>{''.join(rows)}</table>").encode())


def cmd_texture(a):
    from deepscope.algos.style import synthesize_texture
    from deepscope.io.location import write_single_file
    from deepscope.runner import log
    from deepscope.algos.style_train import encode, load_style_image, to_pil, to_tensor

    device = _torch_setup(a.threads)
    size = [int(v) for v in str(a.size).lower().split("x")]
    h, w = (size[0], size[0]) if len(size) == 1 else (size[1], size[0])
    net, _, s_layers = _loss_network(a.model, a.weights, None, a.style_layers)
    net.loaded.module.to(device)
    sample = to_tensor(load_style_image(a.sample), a.sample_size).to(device)
    t0 = time.time()
    log(f"texture: {w}x{h} from {a.sample}, {a.steps} {a.optimizer} steps, loss network {a.model} ({', '.join(s_layers)})")
    r = synthesize_texture(net, sample, (h, w), s_layers, steps=a.steps, optimizer=a.optimizer, lr=a.lr,
                           seed=a.seed, log=log)
    write_single_file(a.out, encode(to_pil(r.image), Path(a.out).suffix.lstrip(".") or "png"))
    log(f"done: texture {w}x{h} in {time.time() - t0:.1f} s, style loss {r.history[0]:.3g} -> {r.style_loss[0]:.3g} -> {a.out}")

