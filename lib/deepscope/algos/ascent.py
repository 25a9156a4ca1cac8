"""Class and unit visualization by gradient ascent (Simonyan et al. 2014; Yosinski et al. 2015).

Find an image x that maximizes a target's score S(x) - l2 * ||x||^2, where the target is a class
(its unnormalized score, the logit) or a unit of a layer (its mean activation, or its activation
at the centre position).  Each item of a batch has its own target, so a layer's 1,280 units are
visualized in batches.

The default (param "fourier", Olah et al. 2017 as in Lucid/Lucent, with one change): the image is
the sigmoid of a spectrum of decorrelated colours (Lucid's ImageNet colour correlation), each
frequency f scaled by 1 / f**decay, and every step shows the network a randomly transformed copy
(transformation robustness: the picture on a canvas `pad` pixels larger, shifted by up to `jitter`
pixels, scaled by 1 +- `scale`, rotated by up to `rotate` degrees).  The change: the spectrum takes
plain gradient steps (optimizer "sgd", each scaled so that the image moves by RMS `lr`), not
Adam's.  Through the 1/f scaling a gradient step is preconditioned towards low frequencies
(the image moves by the gradient filtered by 1/f**2); Adam divides every coefficient's step by its
own gradient's size, which undoes that and lets fine texture grow: measured on lite0 at 224 px,
Adam gives pictures with 27-33% of their power above a quarter of the sampling rate (photos: 1-3%)
that blur away at half resolution; the preconditioned steps give 3-4%, and pictures that other
ImageNet networks still recognize at half resolution (bench/visualize.py, README).
optimizer "adam" is Lucid's recipe (Adam at lr / 2).

param "pixel": ascent on the pixels, with the lecture's regularizers applied after each step:
  jitter        a random shift of the image before each step, undone after it (Mordvintsev 2015)
  blur          a periodic Gaussian blur: removes the high frequencies that ascent adds
  value_clip    pixels whose norm (over RGB, from the mean colour) is in the lowest quantile -> 0
  grad_clip     pixels whose contribution |sum_c x * dS/dx| is in the lowest quantile -> 0
Plain ascent (PLAIN: pixels, all off) gives noise-like fooling images.

Randomness (initial image, jitter) comes from one generator per item, seeded by (seed, target),
and steps are normalized per item (the gradient's RMS): a batch computes the same pictures as its
targets one at a time.  Only float summation order differs (CPU convolutions sum differently for
another batch size); long runs at full size can amplify it into different details (README: "Seeing by
optimization", Methods and Numbers).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from deepscope.models.taps import LayerTaps

# Lucid's colour correlation of ImageNet (square root of its covariance, by SVD): a decorrelated
# colour space in which independent noise looks like natural colour noise
COLOR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = COLOR_CORRELATION / COLOR_CORRELATION.norm(dim=0).max()


@dataclass(frozen=True)
class AscentSettings:
    steps: int = 100
    lr: float | None = None  # RMS of each step: pixel 0.06 (normalized input); fourier sgd 0.1 (pre-sigmoid image)
    l2: float | None = None  # weight of ||x||^2 (normalized input) subtracted from the score: pixel 1e-3,
    #                          fourier 3e-5 (1e-3 there gave a grey wash, pixel std 0.084: README, issue 25)
    blur_every: int = 4  # pixel: steps between blurs; 0: off
    blur_sigma: float = 0.5  # pixel: Gaussian sigma, pixels
    value_clip: float = 0.0  # pixel: quantile of pixels with the smallest norm set to the mean colour; 0: off
    grad_clip: float = 0.0  # pixel: quantile of pixels with the smallest contribution set to the mean colour; 0: off
    jitter: int | None = None  # largest random shift, pixels; 0: off (default: classes 16, units 2)
    param: Literal["pixel", "fourier"] = "fourier"
    decay: float = 1.0  # fourier: the spectrum is scaled by 1 / frequency ** decay
    optimizer: Literal["sgd", "adam"] = "sgd"  # fourier: preconditioned gradient steps, or Adam at lr / 2 (Lucid)
    pad: int | None = None  # transformation robustness: the picture is shown on a canvas this much larger (mean
    #                         colour; default: classes 16, units 0)
    scale: float | None = None  # ... randomly scaled by a factor in [1 - scale, 1 + scale] (classes 0.25, units 0)
    rotate: float | None = None  # ... and rotated by up to this many degrees, every step (classes 15, units 0;
    #                              all 0: integer wrap-around jitter)
    position: Literal["mean", "center"] = "mean"  # unit objective: spatial mean, or the centre position
    size: int | None = None  # image side (default: the model's crop)
    seed: int = 0
    facets: int = 1  # pictures per target, made together (a batch of facets per target)
    diversity: float = 0.5  # facets > 1: weight of their Gram-matrix similarity (Olah et al. 2017), in units
    #                         of the item's own score (0.5: half the score traded for entirely different facets)
    facet_method: Literal["diversity", "clusters"] = "diversity"  # clusters: facets start from the means of
    #                        clusters of the unit's top dataset patches (the caller passes them: cluster_starts)
    contrast: float | None = None  # units: weight of the layer's mean |channel mean| subtracted from the unit's
    #                        score (default 1; 0: the unit alone)

    def step_size(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.06 if self.param == "pixel" else {"sgd": 0.1, "adam": 0.06}[self.optimizer]

    def for_kind(self, kind: str) -> "AscentSettings":
        """The defaults left open filled in for classes or units.  Units: no resampling each step (2 px
        jitter) and contrast 1: 85% of _blocks.1's pictures >= 3x selective against 67% with the
        class transformations and the unit alone (bench/visualize.py --selectivity, docs/optimize.md)."""
        unit = kind == "unit"
        fill = dict(jitter=2 if unit else 16, pad=0 if unit else 16, scale=0.0 if unit else 0.25,
                    rotate=0.0 if unit else 15.0, contrast=1.0 if unit else 0.0)
        return replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})

    def l2_weight(self) -> float:
        if self.l2 is not None:
            return self.l2
        return 1e-3 if self.param == "pixel" else 3e-5


PIXEL = dict(param="pixel", pad=0, scale=0.0, rotate=0.0, jitter=8)  # the lecture's pixel ascent (blur, jitter)
PLAIN = dict(l2=0.0, blur_every=0, value_clip=0.0, grad_clip=0.0, jitter=0, pad=0, scale=0.0, rotate=0.0,
             param="pixel")  # plain ascent on pixels: fooling images


@dataclass
class AscentResult:
    pixels: np.ndarray  # uint8 (N, 3, H, W): the pictures, exactly as written to PNG
    start: np.ndarray  # float32 (N,): the target's score on the initial image
    score: np.ndarray  # float32 (N,): the target's score on the final 8-bit picture
    top1: np.ndarray  # int64 (N,): the model's prediction on the final 8-bit picture
    facet: np.ndarray | None = None  # int64 (N,): facet number; items are target-major (t0f0, t0f1, ..., t1f0)
    selectivity: np.ndarray | None = None  # float32 (N,): the target's mean activation over the layer's mean |activation|
    peak: np.ndarray | None = None  # float32 (N,): the target channel's largest activation over positions


# ---------------------------------------------------------------------------- shared helpers

def item_generators(seeds: list[int]) -> list[torch.Generator]:
    gens = []
    for s in seeds:
        g = torch.Generator()
        g.manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF)
        gens.append(g)
    return gens


def item_seed(seed: int, kind: str, target: int, facet: int = 0) -> int:
    """Each picture's random stream depends on what it shows, not on its place in a batch."""
    return seed * 1_000_003 + (0 if kind == "class" else 500_000) + int(target) + 7_919_000 * int(facet)


def random_shifts(gens: list[torch.Generator], jitter: int) -> list[tuple[int, int]]:
    if jitter <= 0:
        return [(0, 0)] * len(gens)
    return [tuple(int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g)) for g in gens]


def roll(x: torch.Tensor, shifts: list[tuple[int, int]], sign: int = 1) -> torch.Tensor:
    """Shift each item of x by its own (dy, dx), wrapping around (sign=-1 undoes it)."""
    if all(s == (0, 0) for s in shifts):
        return x
    return torch.stack([torch.roll(x[i], (sign * dy, sign * dx), dims=(-2, -1)) for i, (dy, dx) in enumerate(shifts)])


def random_transform(x: torch.Tensor, gens: list[torch.Generator], pad: int, jitter: int, scale: float,
                     rotate: float) -> torch.Tensor:
    """Transformation robustness (Olah et al. 2017): each item of x (normalized input, whose 0 is the
    mean colour) is placed on a canvas `pad` pixels larger on every side, shifted by up to `jitter`
    pixels, scaled by a factor in [1 - scale, 1 + scale] and rotated by up to `rotate` degrees, each
    drawn from the item's own generator; one bilinear resampling, differentiable."""
    n, _, h, w = x.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    thetas = []
    for g in gens:
        u = torch.rand(4, generator=g)
        s = 1 + scale * (2 * float(u[0]) - 1)
        a = np.deg2rad(rotate * (2 * float(u[1]) - 1))
        ty, tx = (jitter * (2 * float(u[2]) - 1), jitter * (2 * float(u[3]) - 1))
        c, si = np.cos(a), np.sin(a)
        # output canvas pixel p -> input pixel R(-a) (p - t) / s, in each grid's normalized units
        lin = np.array([[c, si], [-si, c]]) / s
        thetas.append([[lin[0, 0] * wp / w, lin[0, 1] * hp / w, -(lin[0, 0] * tx + lin[0, 1] * ty) * 2 / w],
                       [lin[1, 0] * wp / h, lin[1, 1] * hp / h, -(lin[1, 0] * tx + lin[1, 1] * ty) * 2 / h]])
    theta = torch.tensor(thetas, dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], hp, wp], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp, enabled=True) if amp is not None else contextlib.nullcontext()


def model_device(loaded) -> torch.device:
    p = next(iter(loaded.module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def pixel_bounds(transform, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid range of the normalized input, per channel: the images of pixels 0 and 1."""
    mean = torch.tensor(transform.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, device=device).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def to_uint8(pixels01: torch.Tensor) -> torch.Tensor:
    return pixels01.clamp(0, 1).mul(255).round().to(torch.uint8)


def target_score(act: torch.Tensor, targets: torch.Tensor, position: str = "mean") -> torch.Tensor:
    """(N,) the score of each item's target: a column of (N, C), or a channel of (N, C, H, W)
    averaged over positions (mean) or taken at the centre position."""
    act = act.float()
    if act.ndim == 2:
        return act.gather(1, targets[:, None])[:, 0]
    chan = act[torch.arange(len(act), device=act.device), targets]
    if chan.ndim == 1:
        return chan
    chan = chan.flatten(2) if chan.ndim > 3 else chan
    if position == "center":
        return chan[:, chan.shape[1] // 2, chan.shape[2] // 2] if chan.ndim == 3 else chan[:, chan.shape[1] // 2]
    return chan.flatten(1).mean(1)


def scores(loaded, x: torch.Tensor, layer: str, targets: torch.Tensor, position: str = "mean",
           amp: torch.dtype | None = None, with_layer: bool = False):
    """(target scores (N,), logits[, the layer's output]) for normalized input x; differentiable
    when x requires grad."""
    with LayerTaps(loaded, [layer], detach=False) as taps, autocast(x.device, amp):
        logits = taps.forward(x)
    act = taps.outputs[layer]
    out = (target_score(act, targets, position), logits.float())
    return (*out, act.float()) if with_layer else out


def selectivity(act: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) each item's target channel (spatial mean) over the mean |spatial mean| of all the
    layer's channels: 1 for a picture that drives everything alike, >> 1 for a selective one."""
    per_channel = act.float().flatten(2).mean(2) if act.ndim > 2 else act.float()
    own = per_channel.gather(1, targets[:, None])[:, 0]
    return own / per_channel.abs().mean(1).clamp_min(1e-12)


def gram_similarity(act: torch.Tensor, facets: int) -> torch.Tensor:
    """(N,) for items in groups of `facets` (target-major), each item's mean cosine similarity of
    its Gram matrix (channels x channels, over positions) to the others of its group: the
    diversity penalty of Olah et al. 2017 (Lucid's objectives.diversity)."""
    f = act.float().flatten(2) if act.ndim > 2 else act.float()[:, :, None]
    gram = torch.einsum("ncp,ndp->ncd", f, f).flatten(1)
    gram = F.normalize(gram, dim=1).view(-1, facets, gram.shape[1])
    sim = torch.einsum("gid,gjd->gij", gram, gram)
    off = sim.sum(2) - sim.diagonal(dim1=1, dim2=2)
    return (off / max(facets - 1, 1)).flatten()


# ---------------------------------------------------------------------------- regularizers

def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * int(np.ceil(2 * sigma)) + 1
    # imported here: torchvision's import pulls in torch._dynamo (a second on a laptop), and a job
    # on a model that is not torchvision's never needs it otherwise
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, [k, k], [sigma, sigma])


def clip_small_values(x: torch.Tensor, quantile: float) -> torch.Tensor:
    """Set to 0 (the mean colour of the normalized input) the pixels whose RGB norm is in each
    image's lowest `quantile`."""
    if quantile <= 0:
        return x
    norm = x.norm(dim=1)  # (N, H, W)
    cut = torch.quantile(norm.flatten(1), quantile, dim=1).view(-1, 1, 1)
    return x * (norm >= cut)[:, None]


def clip_small_contributions(x: torch.Tensor, grad: torch.Tensor, quantile: float) -> torch.Tensor:
    """Set to 0 the pixels whose contribution |sum_c x * grad| (a first-order estimate of how much
    the score would drop if the pixel became the mean colour) is in each image's lowest `quantile`."""
    if quantile <= 0:
        return x
    contrib = (x * grad).sum(1).abs()
    cut = torch.quantile(contrib.flatten(1), quantile, dim=1).view(-1, 1, 1)
    return x * (contrib >= cut)[:, None]


# ---------------------------------------------------------------------------- Fourier parameterization

def _frequencies(h: int, w: int, device) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.rfftfreq(w, device=device)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def fourier_scale(h: int, w: int, decay: float, device=None) -> torch.Tensor:
    scale = 1.0 / torch.clamp(_frequencies(h, w, device), min=1.0 / max(h, w)) ** decay
    return scale * np.sqrt(h * w) / max(h, w)


def fourier_linear(spectrum: torch.Tensor, h: int, w: int, decay: float = 1.0) -> torch.Tensor:
    """(N, 3, h, w//2+1, 2) spectrum -> (N, 3, h, w) decorrelated-colour image before the sigmoid."""
    scale = fourier_scale(h, w, decay, spectrum.device)
    img = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(h, w), norm="ortho")
    return torch.einsum("nchw,dc->ndhw", img, COLOR_CORRELATION.to(img.device))


def start_spectrum(pixels01: torch.Tensor, decay: float = 1.0) -> torch.Tensor:
    """(N, 3, h, w) pixels in (0, 1) -> the spectrum whose fourier_image they are (the inverse of the
    sigmoid, the colour decorrelation and the 1/f scaling): a picture that starts from an image.
    Pixels are clamped to [0.02, 0.98] first (the sigmoid never reaches 0 or 1)."""
    h, w = pixels01.shape[-2:]
    z = torch.logit(pixels01.float().clamp(0.02, 0.98))
    z = torch.einsum("ndhw,dc->nchw", z, torch.linalg.inv(COLOR_CORRELATION).T.to(z.device))
    spec = torch.fft.rfft2(z, s=(h, w), norm="ortho") / fourier_scale(h, w, decay, z.device)
    return torch.view_as_real(spec).contiguous()


def fourier_image(spectrum: torch.Tensor, h: int, w: int, decay: float = 1.0) -> torch.Tensor:
    """(N, 3, h, w//2+1, 2) spectrum of decorrelated colours -> pixels in [0, 1] (N, 3, h, w)."""
    return torch.sigmoid(fourier_linear(spectrum, h, w, decay))


# ---------------------------------------------------------------------------- ascent

def visualize(loaded, layer: str, targets: list[int], settings: AscentSettings = AscentSettings(),
              kind: str = "class", amp: torch.dtype | None = None,
              starts: list[np.ndarray | None] | None = None) -> AscentResult:
    """Pictures that maximize each target of `layer` (kind "class": the logits, or "unit").
    starts: per picture (target-major, facets together) an image (3, size, size) in [0, 1] to start
    from, or None for the seeded random start (multi-faceted: the means of clusters of the unit's
    top dataset patches, Nguyen et al. 2016: cluster_starts)."""
    s = settings.for_kind(kind)
    lr = s.step_size()
    device = model_device(loaded)
    tf = loaded.transform
    size = s.size or tf.crop
    nf = max(1, s.facets)
    t = torch.tensor([v for v in targets for _ in range(nf)], dtype=torch.long, device=device)
    gens = item_generators([item_seed(s.seed, kind, v, f) for v in targets for f in range(nf)])
    lo, hi = pixel_bounds(tf, device)
    mean = torch.tensor(tf.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(tf.std, device=device).view(1, 3, 1, 1)

    if s.param == "fourier":
        spec = torch.stack([torch.randn(3, size, size // 2 + 1, 2, generator=g) * 0.01 for g in gens]).to(device)
        for i, img in enumerate(starts or []):
            if img is not None:
                spec[i] += start_spectrum(torch.as_tensor(img)[None].to(device), s.decay)[0]
        spec.requires_grad_(True)
        opt = torch.optim.Adam([spec], lr=lr / 2)

        def image() -> torch.Tensor:  # normalized input
            return (fourier_image(spec, size, size, s.decay) - mean) / std
    else:
        # a grey image with a little noise, in the normalized input space
        init = torch.stack([0.5 + 0.1 * torch.randn(3, size, size, generator=g) for g in gens]).to(device)
        for i, img in enumerate(starts or []):
            if img is not None:
                init[i] = torch.as_tensor(img).float().to(device)
        x = ((init.clamp(0, 1) - mean) / std).requires_grad_(True)

        def image() -> torch.Tensor:
            return x

    with torch.no_grad():
        start = scores(loaded, image().detach(), layer, t, s.position, amp)[0]

    transformed = s.pad or s.scale or s.rotate
    for step in range(s.steps):
        img = image()
        if transformed:
            seen = random_transform(img, gens, s.pad, s.jitter, s.scale, s.rotate)
        else:
            seen = roll(img, random_shifts(gens, s.jitter))
        score, _, act = scores(loaded, seen, layer, t, s.position, amp, with_layer=True)
        objective = score - s.l2_weight() * img.pow(2).flatten(1).sum(1)
        if s.contrast and act.ndim > 2 and kind == "unit":
            # the layer's mean |channel mean|: the denominator of selectivity, traded against the unit
            objective = objective - s.contrast * act.float().flatten(2).mean(2).abs().mean(1)
        if s.diversity and nf > 1:
            # scaled by the score itself: the weight means the same for a weak unit and a strong one
            objective = objective - s.diversity * score.detach().abs().clamp_min(1.0) * gram_similarity(act, nf)
        if s.param == "fourier" and s.optimizer == "adam":
            opt.zero_grad()
            (-objective.sum()).backward()
            opt.step()
            continue
        if s.param == "fourier":  # gradient steps on the spectrum: the 1/f scaling preconditions them
            g, = torch.autograd.grad(objective.sum(), spec)
            with torch.no_grad():
                u = fourier_linear(g, size, size, s.decay)  # the step it makes in the image, per item
                rms = u.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1, 1)
                spec += lr * g / rms
            continue
        grad, = torch.autograd.grad(objective.sum(), x)
        with torch.no_grad():
            rms = grad.pow(2).flatten(1).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1)
            x += lr * grad / rms
            x.copy_(torch.max(torch.min(x, hi), lo))
            if s.blur_every and (step + 1) % s.blur_every == 0:
                x.copy_(blur(x, s.blur_sigma))
            if s.value_clip:
                x.copy_(clip_small_values(x, s.value_clip))
            if s.grad_clip:
                x.copy_(clip_small_contributions(x, grad, s.grad_clip))

    with torch.no_grad():
        pixels = to_uint8(image() * std + mean)
        final, logits, act = scores(loaded, tf.normalize(pixels), layer, t, s.position, amp, with_layer=True)
        own = act[torch.arange(len(act), device=act.device), t]
    return AscentResult(pixels.cpu().numpy(), start.float().cpu().numpy(), final.float().cpu().numpy(),
                        logits.argmax(1).cpu().numpy(), np.tile(np.arange(nf), len(targets)),
                        selectivity(act, t).cpu().numpy(), own.reshape(len(own), -1).amax(1).cpu().numpy())


def cluster_starts(patches: list[np.ndarray], features: np.ndarray, facets: int, size: int,
                   seed: int = 0) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Multi-faceted starts (Nguyen et al. 2016): a unit's top patches (uint8 (3, h, w) each)
    clustered by their features (k-means, k = min(facets, patches)), largest cluster first ->
    (per facet the mean of its cluster's patches, each resized to size x size, in [0, 1]; None for
    facets beyond the patches), each patch's cluster number (K,))."""
    from sklearn.cluster import KMeans

    k = min(facets, len(patches))
    if k == 0:
        return [None] * facets, np.zeros(0, np.int64)
    x = np.asarray(features, np.float64).reshape(len(patches), -1)
    labels = KMeans(k, n_init=10, random_state=seed).fit_predict(x) if k > 1 else np.zeros(len(x), np.int64)
    order = sorted(range(k), key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    labels = np.argsort(order)[labels]  # renumbered: 0 is the largest cluster
    resized = torch.cat([F.interpolate(torch.from_numpy(np.asarray(p)).float()[None] / 255, size=(size, size),
                                       mode="bilinear", align_corners=False, antialias=True) for p in patches])
    means = [resized[torch.from_numpy(labels == c)].mean(0).numpy() for c in range(k)]
    return means + [None] * (facets - k), labels.astype(np.int64)


def facet_correlation(pixels: np.ndarray, facets: int) -> np.ndarray:
    """(targets,) the mean pairwise Pearson correlation of the pixels of each target's facets
    (items target-major, as visualize returns them); nan for one facet."""
    x = torch.from_numpy(np.asarray(pixels)).float().flatten(1)
    x = F.normalize(x - x.mean(1, keepdim=True), dim=1).view(-1, facets, x.shape[1])
    if facets < 2:
        return np.full(len(x), np.nan, np.float32)
    c = torch.einsum("gid,gjd->gij", x, x)
    return ((c.sum((1, 2)) - c.diagonal(dim1=1, dim2=2).sum(1)) / (facets * (facets - 1))).numpy()
