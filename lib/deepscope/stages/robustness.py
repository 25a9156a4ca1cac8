"""Adversarial robustness of a dataset: per image, the smallest listed eps (8-bit levels) at which
an FGSM or PGD attack changes its prediction; the share changed at each eps, overall and per class;
the most and least robust images; optionally one universal perturbation and the share it flips.

Attacks work on the 8-bit grid (algos/adversarial.py): the adversarial PNG written for an image
is exactly what was judged.  The universal perturbation is computed on the driver in prepare()
from a seeded sample of the dataset (a sequential optimization over batches), then shipped to
the model actors, which measure what it does to every image.  `deepscope robustness OUT` adds
this stage to a features job's folder.
"""
from __future__ import annotations

import html
import math
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator

from deepscope.algos import adversarial as adv
from deepscope.io import schemas
from deepscope.io.images import file_stem, png_bytes
from deepscope.models.registry import best_device
from deepscope.report.html import images_html
from deepscope.stages.base import Stage, StageConfig

ALL = "(all)"


class RobustnessConfig(StageConfig):
    attack: Literal["fgsm", "pgd"] = "fgsm"
    eps: list[float] = [1, 2, 4, 8]  # 8-bit levels; sorted ascending
    steps: int = Field(10, ge=1)  # pgd
    step: float | None = Field(None, gt=0)  # pgd step, levels (default max(1, 2.5 eps / steps))
    images: bool = True  # write the adversarial PNG of each changed image (at its smallest eps)
    universal: bool = False
    universal_eps: float | None = Field(None, ge=1)  # default: the largest listed eps
    universal_images: int = Field(64, ge=1)  # sample it is computed from
    universal_epochs: int = Field(5, ge=1)
    seed: int = 0

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v):
        v = [float(s) for s in v.split(",")] if isinstance(v, str) else [float(s) for s in v]
        if not v or any(e < 1 for e in v):
            raise ValueError("give one or more eps >= 1 (8-bit pixel levels)")
        return sorted(set(v))


class Robustness(Stage):
    name = "robustness"
    Config = RobustnessConfig
    needs_grad = True
    phase = 2  # after features (and everything else of phase 1): a slow pass, last

    def __init__(self, config, job):
        super().__init__(config, job)
        self.delta: np.ndarray | None = None  # the universal perturbation, set by prepare()

    def layers(self):
        return ["logits"]

    def prepare(self, ctx):
        store = ctx.store
        if not self.config.universal:
            return
        import copy

        from deepscope.io.decode import decode
        from deepscope.io.sources import open_source, read_bytes
        log = ctx.log

        cfg = self.config
        loaded = copy.deepcopy(ctx.loaded)  # moved to the device here, the driver's own copy stays
        device = best_device()
        loaded.module.to(device)
        paths = _sample_paths(open_source(self.job.dataset.source), cfg.universal_images, cfg.seed)
        pixels = []
        for path in paths:
            try:
                pixels.append(torch.from_numpy(loaded.transform.geometry(decode(read_bytes(path))[0])))
            except Exception:
                continue  # a bad image: the pass records it as an error row
        batch = max(1, min(self.job.run.batch_size, 32))
        batches = [torch.stack(pixels[i:i + batch]).to(device) for i in range(0, len(pixels), batch)]
        eps = cfg.universal_eps or max(cfg.eps)
        log(f"robustness: universal perturbation (eps {eps:g}) from {len(pixels)} images, {cfg.universal_epochs} epochs")
        delta = adv.universal(loaded, batches, eps, epochs=cfg.universal_epochs)
        self.delta = delta.cpu().numpy()
        rate = adv.fooling_rate(loaded, batches, delta)
        log(f"robustness: the universal perturbation flips {rate:.0%} of the images it was computed from")
        store.write_file(f"{self.name}/universal.npy", _npy(self.delta))
        shown = (self.delta.astype(np.float32) * (127 / eps) + 128).round().clip(0, 255).astype(np.uint8)
        store.write_file(f"{self.name}/universal.png", png_bytes(shown))

    # -- model actors -------------------------------------------------------------------------
    def map_batch(self, model, x, taps, rows):
        cfg = self.config
        pixels = (model.transform.denormalize(x.detach().float()) * 255).round().clamp(0, 255).to(torch.uint8)
        logits = adv.logits_of(model, pixels)
        pred = logits.argmax(1)
        top2 = logits.topk(2, dim=1).values
        n = len(pixels)
        min_eps = torch.full((n,), float("nan"))
        adv_pred = torch.full((n,), -1, dtype=torch.long)
        found = [None] * n
        for eps in cfg.eps:
            idx = torch.isnan(min_eps).nonzero()[:, 0]
            if len(idx) == 0:
                break
            sub = pixels[idx.to(pixels.device)]
            if cfg.attack == "fgsm":
                out = adv.fgsm(model, sub, eps)
            else:
                out = adv.pgd(model, sub, eps, steps=cfg.steps, step=cfg.step, stop_early=True)
            p = adv.logits_of(model, out).argmax(1).cpu()
            for j, i in enumerate(idx.tolist()):
                if p[j] != pred[i].cpu():
                    min_eps[i], adv_pred[i], found[i] = eps, p[j], out[j].cpu().numpy()
        res = {"pred": pred.cpu().numpy().astype(np.int32), "margin": (top2[:, 0] - top2[:, 1]).cpu().numpy(),
               "min_eps": min_eps.numpy().astype(np.float32), "adv_pred": adv_pred.numpy().astype(np.int32),
               "png": np.array([png_bytes(f) if (f is not None and cfg.images) else b"" for f in found], dtype=object)}
        if self.delta is not None:
            moved = adv.apply_perturbation(pixels, torch.from_numpy(self.delta))
            res["universal_pred"] = adv.logits_of(model, moved).argmax(1).cpu().numpy().astype(np.int32)
        return res

    # -- driver -------------------------------------------------------------------------------
    def _rel(self, item_id) -> str:
        return f"{self.name}/images/{file_stem(item_id)}.png"

    def part_files(self, part, rows):
        return {self._rel(i): bytes(p) for i, p in zip(rows["id"], rows.get("png", [])) if p}

    def part_table(self, rows):
        eps = np.asarray(self.config.eps, np.float32)
        n = len(rows["id"]) if "pred" in rows else 0
        min_eps = np.asarray(rows.get("min_eps", []), np.float32)
        changed = (min_eps[:, None] <= eps[None, :]) if n else np.zeros((0, len(eps)), bool)
        has = ~np.isnan(min_eps)
        uni = rows.get("universal_pred")
        return pa.table({
            "id": pa.array(rows["id"][:n], pa.string()), "path": pa.array(rows["path"][:n], pa.string()),
            "label": pa.array([str(v) if v not in (None, "") else None for v in rows["label"][:n]], pa.string()),
            "pred": pa.array(np.asarray(rows.get("pred", []), np.int32), pa.int32()),
            "margin": pa.array(np.asarray(rows.get("margin", []), np.float32), pa.float32()),
            "min_eps": pa.array(min_eps, pa.float32(), mask=~has),
            "adv_pred": pa.array(np.asarray(rows.get("adv_pred", []), np.int32), pa.int32(), mask=~has),
            "changed": pa.FixedSizeListArray.from_arrays(pa.array(changed.reshape(-1), pa.bool_()), len(eps)),
            "adversarial": pa.array([self._rel(i) if (h and self.config.images) else None
                                     for i, h in zip(rows["id"][:n], has)], pa.string()),
            "universal_pred": pa.array(np.asarray(uni, np.int32) if uni is not None else [None] * n, pa.int32()),
        }, schema=schemas.robustness(len(eps)))

    def finish(self, ctx):
        store, log = ctx.store, ctx.log
        from deepscope.models.registry import imagenet_class_names

        cfg = self.config
        rows = store.read(self.name).to_pylist()
        names = imagenet_class_names()

        def group(r):
            return r["label"] or (names[r["pred"]] if r["pred"] < len(names) else str(r["pred"]))

        groups = {ALL: rows}
        for r in rows:
            groups.setdefault(group(r), []).append(r)
        table = []
        for g, mine in groups.items():
            uni = [r for r in mine if r["universal_pred"] is not None]
            table.append({"group": g, "images": len(mine), "eps": list(cfg.eps),
                          "changed_share": [float(np.mean([r["changed"][k] for r in mine])) if mine else 0.0
                                            for k in range(len(cfg.eps))],
                          "universal_share": float(np.mean([r["universal_pred"] != r["pred"] for r in uni])) if uni else None})
        store.write_table("robustness_classes.parquet", pa.Table.from_pylist(table, schema=schemas.ROBUSTNESS_CLASSES))

        def key(r):  # least robust first: small eps, then small clean margin
            return (r["min_eps"] if r["min_eps"] is not None else math.inf, r["margin"])

        ranked = sorted(rows, key=key)
        pick = lambda rs: [{"id": r["id"], "path": r["path"], "min_eps": r["min_eps"], "margin": round(r["margin"], 3),
                            "pred": r["pred"], "adv_pred": r["adv_pred"], "adversarial": r["adversarial"]} for r in rs]
        overall = table[0]
        summary = {"images": len(rows), "attack": cfg.attack, "eps": list(cfg.eps),
                   "changed_share": overall["changed_share"], "universal_share": overall["universal_share"],
                   "least_robust": pick(ranked[:8]), "most_robust": pick(ranked[::-1][:8]),
                   "universal": f"{self.name}/universal.png" if cfg.universal else None}
        shares = ", ".join(f"eps {e:g}: {s:.0%}" for e, s in zip(cfg.eps, overall["changed_share"]))
        log(f"robustness: {len(rows)} images, {cfg.attack}, changed at {shares}"
            + (f"; universal perturbation flips {overall['universal_share']:.0%}" if overall["universal_share"] is not None else ""))
        return summary

    def report(self, store):
        s = store.summary(self.name) or {}
        eps = s.get("eps") or []
        head = "".join(f"<th>eps {e:g}</th>" for e in eps)
        rows = ""
        if store.exists("robustness_classes.parquet"):
            for r in store.loc.read_table("robustness_classes.parquet").to_pylist()[:60]:
                cells = "".join(f"<td>{v:.0%}</td>" for v in r["changed_share"])
                uni = f"<td>{r['universal_share']:.0%}</td>" if r["universal_share"] is not None else "<td></td>"
                rows += f"<tr><td>{html.escape(r['group'])}</td><td>{r['images']}</td>{cells}{uni}</tr>"
        least = [r for r in s.get("least_robust", []) if r["adversarial"]]
        most = "".join(f"<li><code>{html.escape(r['id'])}</code>: {('eps ' + format(r['min_eps'], 'g')) if r['min_eps'] else 'never changed'}, "
                       f"margin {r['margin']}</li>" for r in s.get("most_robust", []))
        uni = (f"<p>Universal perturbation (shown x{127 / max(eps or [1]):.0f} around grey):<br>"
               f"<img src='../{s['universal']}' width=160></p>") if s.get("universal") else ""
        return (f"<p>{s.get('images', 0)} images attacked by {html.escape(str(s.get('attack')))} (untargeted, on the 8-bit grid); "
                "share of images whose prediction changed at each eps (8-bit levels), per image in "
                "<code>robustness/*.parquet</code>, per class in <code>robustness_classes.parquet</code>.</p>"
                f"<table><tr><th>group</th><th>images</th>{head}<th>universal</th></tr>{rows}</table>"
                "<p>Least robust (adversarial PNGs at their smallest eps):</p>"
                + images_html([r["adversarial"] for r in least],
                              [f"{r['id'][-16:]} eps {r['min_eps']:g}: {r['pred']}->{r['adv_pred']}" for r in least])
                + f"<p>Most robust:</p><ul>{most}</ul>{uni}")


def _sample_paths(source, n: int, seed: int) -> list[str]:
    """n paths drawn uniformly from the whole dataset in one pass over its listing (reservoir sampling:
    memory n, whatever the dataset's size)."""
    rng = np.random.default_rng(seed)
    keep: list[str] = []
    seen = 0
    for items in source.items():
        for path in items["path"]:
            seen += 1
            if len(keep) < n:
                keep.append(path)
            else:
                j = int(rng.integers(seen))
                if j < n:
                    keep[j] = path
    return sorted(keep)


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()
