"""Query images -> query vectors with the very model, layer and transform that made a folder's
features (read from its manifest), loaded once and run in-process: no Ray for one image."""
from __future__ import annotations

import threading

import numpy as np
import torch

from deepscope.algos.embed import downsample_pixels
from deepscope.io.decode import DecodeLimits, decode
from deepscope.io.store import Store


class Encoder:
    def __init__(self, out: str, model, limits: DecodeLimits = DecodeLimits()):
        """model: the job's model section (name, weights), `deepscope.job.load_spec(out).model`: the
        caller reads the job, this layer does not reach up for it."""
        from deepscope.models.registry import load_model

        store = Store(out)
        self.layer = (store.stage_config("features") or {}).get("layer", "penultimate")
        self.pixel_size = (store.stage_config("pixels") or {}).get("size", 32)
        self.loaded = load_model(model.name, model.weights)
        self.transform = self.loaded.transform
        self.limits = limits
        # taps are forward hooks on the one shared module: two concurrent forwards would fill each
        # other's captures, so forwards take turns (each one uses every core anyway)
        self._lock = threading.Lock()

    def crop(self, data: bytes) -> np.ndarray:
        """Image bytes -> the model-input crop, uint8 (3, crop, crop).  Raises DecodeError."""
        img, _, _ = decode(data, self.limits, draft_size=self.transform.resize)
        return self.transform.geometry(img)

    def encode(self, data: bytes, space: str = "features") -> np.ndarray:
        """Image bytes -> the image's vector in a space ("features" or "pixels"), float32 (dim,)."""
        from deepscope.models.taps import forward_with_taps

        x = self.transform.normalize(torch.from_numpy(self.crop(data))[None])
        if space == "pixels":  # as the pixels stage computes it, from the normalized model input
            return downsample_pixels(self.transform.denormalize(x), self.pixel_size)[0].astype(np.float32)
        with self._lock, torch.inference_mode():
            _, taps = forward_with_taps(self.loaded, x, [self.layer])
        return taps[self.layer].flatten(1).float().numpy()[0]
