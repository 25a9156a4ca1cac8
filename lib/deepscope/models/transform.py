"""A model's evaluation transform: resize, centre crop, normalize.

Decoding workers apply the geometric part (resize + crop) and ship uint8 pixels;
the model actor applies the normalization on its device, so that 4x fewer bytes
travel between them.  The result equals torchvision's documented preprocessing
`Compose([Resize(resize), CenterCrop(crop), ToTensor(), Normalize(mean, std)])`.

The geometric part is plain Pillow (what torchvision's functional resize and centre crop call for
a PIL image, same sizes, same rounding), so the decoding workers never import torch: a read task
starts in a fraction of a second instead of seconds beside a model actor that imports it too.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

_PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


@dataclass(frozen=True)
class Transform:
    resize: int = 256  # shorter side after resizing
    crop: int = 224  # side of the square centre crop
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)

    def torchvision(self):
        """The reference pipeline this transform reproduces (used by tests and benchmarks)."""
        from torchvision import transforms as T
        from torchvision.transforms import InterpolationMode

        return T.Compose([
            T.Resize(self.resize, interpolation=InterpolationMode(self.interpolation)),
            T.CenterCrop(self.crop),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def geometry(self, img: Image.Image) -> np.ndarray:
        """Resize and crop an RGB PIL image; returns uint8 array (3, crop, crop)."""
        w, h = img.size
        short, long_ = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long_ / short)  # torchvision's rounding
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != img.size:
            img = img.resize(size, _PIL_FILTERS[self.interpolation])
        if min(size) < self.crop:  # torchvision pads a crop larger than the image: rare, leave it to it
            from torchvision.transforms import functional as TF
            img = TF.center_crop(img, self.crop)
        else:
            left, top = int(round((size[0] - self.crop) / 2.0)), int(round((size[1] - self.crop) / 2.0))
            img = img.crop((left, top, left + self.crop, top + self.crop))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 normalized, on pixels' device."""
        import torch

        x = pixels.float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of normalize, to float pixels in [0, 1]."""
        import torch

        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x * std + mean

    def crop_box_in_original(self, width: int, height: int) -> tuple[float, float, float]:
        """(scale, left, top): model-input pixel (u, v) sits at original (left + u*scale, top + v*scale).

        Follows torchvision: the shorter side becomes `resize`, the longer side is
        int(resize * long / short), then a centre crop of `crop` (rounded as CenterCrop does).
        """
        short, long_ = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long_ / short)
        new_w, new_h = (self.resize, new_long) if width <= height else (new_long, self.resize)
        scale_x, scale_y = width / new_w, height / new_h
        left = int(round((new_w - self.crop) / 2.0))
        top = int(round((new_h - self.crop) / 2.0))
        # the two scales differ by rounding only; use the mean
        scale = (scale_x + scale_y) / 2
        return scale, left * scale_x, top * scale_y


def model_input(loaded, path: str) -> torch.Tensor:
    """The model's input pixels for an image file: uint8 (1, 3, crop, crop) after resize and crop."""
    import torch

    from deepscope.io.decode import open_image

    return torch.from_numpy(loaded.transform.geometry(open_image(path)))[None]


def image_input(loaded, path: str) -> torch.Tensor:
    """One image file as the model's normalized input (1, 3, crop, crop)."""
    import torch

    from deepscope.io.decode import open_image

    return loaded.transform.normalize(torch.from_numpy(loaded.transform.geometry(open_image(path)))[None])


def _cache_file() -> str:
    import os

    root = os.environ.get("DEEPSCOPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deepscope")
    return os.path.join(root, "transforms.json")


def remember(spec: str, transform: Transform) -> None:
    """Keep a model's transform, so that a later run can start decoding before torch is imported
    and the model built (recall). Best effort: an unwritable cache only costs that head start."""
    import json
    import os

    path = _cache_file()
    try:
        known = json.load(open(path)) if os.path.exists(path) else {}
        if known.get(spec) == transform.to_dict():
            return
        known[spec] = transform.to_dict()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(known, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass


def recall(spec: str) -> Transform | None:
    """The transform this model had last time, or None. A guess: the pass checks it against the
    model's own transform and reads again whatever was read with a different one."""
    import json

    try:
        known = json.load(open(_cache_file())).get(spec)
        if known is None:
            return None
        return Transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})
    except (OSError, ValueError, TypeError):
        return None
