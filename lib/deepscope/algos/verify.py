"""Is a candidate pair the same picture (edited) or two different pictures?  Geometric
verification on small images, the classic check of near-duplicate image retrieval.

Local features (ORB) are matched between the two images (Lowe's ratio test), and a similarity
transform (scale, rotation, shift) is fitted to the matches by RANSAC: the same picture, cropped,
resized, lightened or captioned, gives many matches that agree with one transform (inliers); two
different pictures give few.  The mirrored second image is tried when the direct match fails (a
flipped copy).  The transform is refined on the pixels (ECC).  Two frames of one scene, or a scene
whose objects moved, can still agree on their background: the aligned images are then compared on a
grid of cells, after each colour channel of one is mapped onto the other's by a rising curve (a
lightening, a contrast change, clipping) fitted without the pixels that disagree.  A copy's
differences are global (the curve absorbs them) or one overlay (a caption, a logo: the cells that
differ fit a narrow band); a moved object leaves two patches apart (where it was, where it is).
Images with too little texture for keypoints, or whose matches fail, are laid on each other by their
frames (the way their 8 x 8 layouts say, or both) and aligned from there on the pixels.  Low-contrast
look-alikes (star fields, skin, two stretches of one texture) have layouts that the curves explain:
their fine details must coincide too.  A frames try is made only when the two 8 x 8 grey layouts
correlate that way round, and a keypoint try with few matches likewise (most candidate pairs are two
different pictures, which do not); a try made is first compared at half the scale, a quarter of the
work: most are far off there and go no further.  A pair that passes every test, when both are pages whose
thumbnails show their words, is compared once more at the working scale: the words must coincide (_fine),
or it is one template filled in twice; and when its matches fit one overlay's band, a caption or watermark
that both may carry, its details must agree beyond that band too (_outside_band).

Pure numpy / OpenCV (and FAISS's binary search for the matching): arrays in, arrays out; index/knn.py
reads the thumbnails and writes the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import faiss
import numpy as np

WORK_SIDE = 256  # both images are brought to this longest side first (small thumbnails enlarged)
DIFFERS = 40.0  # a pixel differs when a channel is this far (of 255) from the fitted line
CELLS = 16  # the overlap is compared on a grid of about CELLS x CELLS cells
ALIGN_SLACK = np.ones((5, 5), np.uint8)  # half-size pixels either way that a pixel may be misaligned by
EXPLAIN_CLIP = 16.0  # grey levels: a residual beyond counts as this much (an overlay's pixels weigh little)
FRAMES_EXPLAINED = 0.95  # needed by a pair aligned from its frames rather than from matches
CELL_DIFFERS = 0.25  # a cell differs when this share of its pixels does
TEXT_LINE = 16  # pixels: a legible caption is this tall however small the picture (max_overlay widens to it)
CURVE_STEPS = 4  # the colour curves' medians are read to a quarter of a grey level (from sorted quantized keys)
ORIENTATION_MARGIN = 0.2  # of correlation: closer than this, both ways are tried
FRAMES_LAYOUT = 0.6  # the least 8 x 8 layout correlation of a pair laid by its frames (its copies: 0.80 and more)
# ... and of a pair that both keypoint tries failed while both pictures have keypoints, when its caller asks (close: its
# fine detail agrees only in part): the copies that need their frames then are small or combined ones, whose layout still
# agrees (0.62 and more on the tuning sets and the generated scenes, most 0.77 and more); most look-alikes' do not
CLOSE_FRAMES_LAYOUT = 0.7
KEYPOINTS_LAYOUT, KEYPOINTS_FEW = 0.2, 20  # a keypoint try with fewer matches than FEW needs this layout correlation
DETAIL_ENERGY = 0.25  # a cell has detail when its band-pass' mean square (grey levels^2) is above this
DETAIL_BAND = 2.5  # the band-pass: from the coarser thumbnail's pixel to this many times it
COARSE_EXPLAINED, COARSE_DIFFERING = 0.4, 0.4  # at half the comparison's scale, a try this far off is not compared at full scale
COARSE_FRAMES_DIFFERING = 0.2  # a try laid by its frames must agree nearly everywhere (max_differing / 5): its copies 0.04 at most
# ... or differ in one overlay (regions 1, in the plain band): a frames try differing in more than COARSE_FRAMES_CLOSE of
# its cells at half the scale, and not in one band at most COARSE_FRAMES_BAND wide there, is not compared at full scale
COARSE_FRAMES_CLOSE, COARSE_FRAMES_BAND = 0.05, 0.3
# ... a frames try looked at unrefined that fails only on that, differing in at most this share of its cells, is refined
# and looked at again (_first_look): every try the refined look passed and the unrefined one did not differed in 0.051-0.082
# of its cells unrefined (the benchmark's sets, 8,000 pairs of the 100,000 scenes and two of its copies); 9% of the frames
# tries there are looked at twice
COARSE_FRAMES_RETRY = 0.1
# the finest details (_fine), compared when both thumbnails have them (their pixel at most FINE_PIXEL working pixels:
# 128 px and more, half the working side: on the forms tuning set its 50% copies, once compared, no longer join
# their template's other pages): on a FINE_GRID x FINE_GRID grid, the cells where both have strong detail (band-pass mean
# square over FINE_ENERGY grey levels^2, energies within FINE_RATIO of each other: not an overlay's nor a blur's),
# FINE_CELLS at least
FINE_PIXEL, FINE_GRID, FINE_ENERGY, FINE_RATIO, FINE_CELLS, FINE_SIGMA = 2.0, 8, 8.0, 4.0, 6, 0.7
# ... and only on pages: at least PAGE_PAPER of each picture one flat light colour, the paper (within PAPER_LEVELS
# grey levels of its most common level, PAPER_LIGHT or lighter), where min_fine was chosen: on photographs that band
# is texture and noise that two resamplings decorrelate (4 of the demo's 461 pairs, 2 of 59 captioned photos under 0.65)
PAGE_PAPER, PAPER_LEVELS, PAPER_LIGHT = 0.5, 8, 160
# the pixel evidence of a try whose pixels were not compared (too little overlap, or an implausible transform)
NOT_COMPARED = {"aligned_correlation": 0.0, "explained": 0.0, "differing": 1.0, "regions": 0, "overlay": 1.0, "bands": (1.0, 1.0),
                "colour_shift": 1.0, "colour_order": float("nan"), "detail": float("nan"), "brightness_shift": 0.0, "contrast_ratio": 1.0, "fine": float("nan"),
                "detail_outside": float("nan")}
ORDER_LEVELS, ORDER_PIXELS = 8.0, 0.05  # grey levels apart: a channel pair surely ordered; the share of them _colour_order needs
KEYPOINT_REACH = 14  # working pixels: how far around its centre a keypoint sees (ORB's patch, mid-pyramid; _outside_band)
REFINE_SLIDE = 4  # half-size pixels: the most the pixels' refinement (ECC) may move a keypoint transform's corner
PLAUSIBLE_MARGIN = 0.1  # the least margin (of overlap, of scale; in radians of rotation) of _plausible
EVIDENCE = ("same", "inliers", "inlier_ratio", "flip", "scale", "rotation", "spread", "overlap", "aligned_correlation",
            "explained", "detail", "detail_outside", "fine", "differing", "regions", "overlay", "colour_shift", "colour_order", "brightness_shift",
            "contrast_ratio", "failed")


@dataclass(frozen=True)
class VerifySettings:
    min_inliers: int = 4  # matches that agree with one transform (RANSAC's consensus: the pixels decide)
    min_explained: float = 0.75  # share of b's variation that a's colour curves explain where they agree
    min_detail: float = 0.15  # the fine details' correlation (_detail), where both pictures have detail
    min_fine: float = 0.9  # the finest details' correlation (_fine: a page's words; forms: copies >= 0.956, other pages <= 0.86)
    max_differing: float = 0.25  # share of the overlap's cells that differ after the colour curves
    max_overlay: float = 0.20  # the cells that differ fit a band this narrow (share of a side): one overlay
    max_colour_shift: float = 0.30  # of a channel's mean (share of 255): a recoloured look-alike shifts more
    # ... or keeps its brightness and turns its hues: channel pairs ordered oppositely (_colour_order; copies on the
    # tuning sets and 19,990 generated scenes: at most 0.022; the 20,000 scenes' recoloured look-alikes 0.33-0.94)
    max_colour_order: float = 0.1
    min_overlap: float = 0.65  # share of each image covered by the other, the smaller (crops of 15% a side: 0.72)
    max_rotation: float = 20.0  # degrees; copies rotate a few degrees, look-alike frames may turn more
    scale_range: tuple[float, float] = (0.5, 2.0)  # of the transform between the two working images
    ratio_test: float = 0.8
    features: int = 1000  # keypoints per image
    detector: str = "orb"  # or "sift" (more matches on blurred or smooth images, slower)
    min_keypoints: int = 25  # fewer in either image: compare the whole images instead


def prepare(rgb: np.ndarray, settings: VerifySettings = VerifySettings()) -> dict:
    """One image (h, w, 3) uint8 -> what its pairs need: the working grey image, the colour one at half and a
    quarter of the working size, and their 8 x 8 layout (once per image, whatever its pairs; its ORB keypoints,
    direct and mirrored, on demand; ~0.35 MB)."""
    h, w = rgb.shape[:2]
    f = WORK_SIDE / max(h, w)
    colour = cv2.resize(np.ascontiguousarray(rgb), (max(1, round(w * f)), max(1, round(h * f))),
                        interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    half = cv2.resize(colour, (max(1, colour.shape[1] // 2), max(1, colour.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    out = {"grey": cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY), "settings": settings, "side": max(h, w), "size": (h, w),
           "half": half.astype(np.float32)}  # the pixel comparison's scale (it blurs finer detail away anyway)
    quarter = cv2.resize(half, (max(1, half.shape[1] // 2), max(1, half.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    out["coarse"] = {"half": quarter.astype(np.float32), "pixel": f / 4}  # the cheap first look (_coarse)
    out["pixel"] = f / 2  # the thumbnail's pixel, in comparison pixels (an enlarged small image has no finer detail)
    grey_levels = cv2.calcHist([out["grey"]], [0], None, [256], [0, 256]).ravel().astype(np.int64)  # np.bincount's counts, without its int64 copy of the image
    mode = int(np.argmax(grey_levels))  # the paper, on a page: its share of the picture (_fine compares pages only)
    out["paper"] = float(grey_levels[max(0, mode - PAPER_LEVELS):mode + PAPER_LEVELS + 1].sum() / out["grey"].size) if mode >= PAPER_LIGHT else 0.0
    layout = cv2.resize(_grey(quarter.astype(np.float64)), (8, 8), interpolation=cv2.INTER_AREA)  # quarter.mean(-1), exactly (sums of bytes)
    out["layout"] = layout - layout.mean()  # 8 x 8 grey, mean removed: which way to lay the frames (_orientations)
    return out  # the keypoints are found on demand (_direct): pairs whose layouts differ never need them


def _keypoints(grey: np.ndarray, settings: VerifySettings) -> tuple[np.ndarray, np.ndarray]:
    if settings.detector == "sift":
        det = cv2.SIFT_create(nfeatures=settings.features)
    else:
        det = cv2.ORB_create(nfeatures=settings.features, edgeThreshold=15, patchSize=15, fastThreshold=5)  # smooth photos too
    kp, desc = det.detectAndCompute(grey, None)
    pts = np.asarray(cv2.KeyPoint_convert(kp), np.float32).reshape(-1, 2)  # the same points, without a Python loop over them (10% of a detection)
    if desc is None:
        desc = np.zeros((0, 128), np.float32) if settings.detector == "sift" else np.zeros((0, 32), np.uint8)
    return pts, desc


def _direct(img: dict) -> tuple[np.ndarray, np.ndarray]:
    if "direct" not in img:
        img["direct"] = _keypoints(img["grey"], img["settings"])
    return img["direct"]


def _mirror(img: dict) -> tuple[np.ndarray, np.ndarray]:
    if "mirror" not in img:
        img["mirror"] = _keypoints(np.ascontiguousarray(img["grey"][:, ::-1]), img["settings"])
    return img["mirror"]


def _matches(da: np.ndarray, db: np.ndarray, ratio: float) -> np.ndarray:
    """(m, 2) indices of the descriptors of a and b that pass Lowe's ratio test."""
    if len(da) < 2 or len(db) < 2:
        return np.zeros((0, 2), np.int64)
    if da.dtype == np.uint8:  # ORB: each descriptor's 2 nearest by Hamming distance (FAISS: 3x OpenCV's batchDistance)
        index = faiss.IndexBinaryFlat(db.shape[1] * 8)
        index.add(db)
        d, nearest = index.search(da, 2)
        # exact distances: where the nearest is not unique the ratio test fails, so which one is listed first does not matter
        good = np.nonzero(d[:, 0] < ratio * d[:, 1])[0]
        return np.stack([good, nearest[good, 0]], 1).astype(np.int64)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [(m.queryIdx, m.trainIdx) for m, n in (p for p in knn if len(p) == 2) if m.distance < ratio * n.distance]
    return np.array(good, np.int64).reshape(-1, 2)


def _fit(pa: np.ndarray, pb: np.ndarray, matches: np.ndarray):
    """RANSAC similarity transform b -> a on the matches -> (2x3 matrix or None, inlier mask)."""
    if len(matches) < 3:
        return None, np.zeros(len(matches), bool)
    m, inl = cv2.estimateAffinePartial2D(pb[matches[:, 1]], pa[matches[:, 0]], method=cv2.RANSAC,
                                         ransacReprojThreshold=4.0, maxIters=1000, confidence=0.995)
    return (m, inl.reshape(-1).astype(bool)) if m is not None else (None, np.zeros(len(matches), bool))


def _curve(x: np.ndarray, y: np.ndarray, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """y as a rising function of x: the median of y in each band of x's values, made non-decreasing
    -> knots (xs, ys) for np.interp.  Lightening, contrast and gamma are such curves, and so is what
    clipping at 255 does to them; a caption's few pixels do not move a median."""
    band = np.minimum((x * (bins / 256.0)).astype(np.int32), bins - 1)
    counts = np.bincount(band, minlength=bins)
    keep = counts >= 8
    if not keep.any():
        return np.array([0.0, 255.0]), np.array([float(np.median(y)) if len(y) else 0.0] * 2)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    lo, hi = (starts + (counts - 1) // 2)[keep], (starts + counts // 2)[keep]
    levels = 256 * CURVE_STEPS

    def medians(v):  # each band's middle one or two values: ranks lo and hi of the sorted (band, value) keys
        at = np.sort(band * levels + np.clip((v * CURVE_STEPS).astype(np.int32), 0, levels - 1))
        return ((at[lo] % levels + 0.5) / CURVE_STEPS + (at[hi] % levels + 0.5) / CURVE_STEPS) / 2
    return medians(x), np.maximum.accumulate(medians(y))


def _grey(x: np.ndarray) -> np.ndarray:
    """The mean of the last axis' three channels, adding them as numpy's mean does (the same bits), ~10x faster
    than its reduction over so short an axis."""
    return (x[..., 0] + x[..., 1] + x[..., 2]) / 3


def _far(fx: np.ndarray, fy: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, float]:
    """The pixels of y (inside the overlap: `at`, their flat indices) that stay far from x's once each channel of x
    is mapped onto y's by a rising curve, refitted without what the first fit left far off (an overlay); and how much
    of y's variation x explains (1 - the residual's variance, each residual clipped at EXPLAIN_CLIP so
    that an overlay weighs little, over y's variance): a low-contrast look-alike stays within the pixel
    limit, but its pixels are not explained.  (Gathers by flat index, and maxima and means over the channels
    spelled out: numpy's boolean masks and short-axis reductions were most of its time, for the same values.)"""
    cy = fy.reshape(-1, 3).take(at, 0)
    tx, ty = np.ascontiguousarray(fx.reshape(-1, 3).take(at, 0).T), np.ascontiguousarray(cy.T)  # (3, m): each channel's values in a row
    keep = slice(None)
    for _ in range(2):
        curves = [_curve(tx[c][keep], ty[c][keep]) for c in range(3)]
        pred = np.stack([np.interp(fx[..., c], *curves[c]).astype(np.float32) for c in range(3)], -1)
        # y agrees where it lies within x's mapped values a pixel or two around (a rounding's misalignment)
        lo, hi = cv2.erode(pred, ALIGN_SLACK), cv2.dilate(pred, ALIGN_SLACK)
        d = np.maximum(lo - fy, fy - hi)
        far = np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]).reshape(-1).take(at) > DIFFERS
        if far.mean() >= 0.5 or (~far).sum() < 32 or not far.any():  # nothing far: a refit would be the same fit
            break
        keep = ~far
    ok = np.flatnonzero(~far)
    if len(ok) < 32:
        return far, 0.0
    agree = cy.take(ok, 0)
    resid = np.clip(_grey(agree - pred.reshape(-1, 3).take(at.take(ok), 0)), -EXPLAIN_CLIP, EXPLAIN_CLIP)
    var = float(_grey(agree).var())
    return far, (1 - float((resid ** 2).mean()) / var) if var > 1 else float(np.abs(resid).mean() < 4)


def _differing_cells(far, explained, at, shape, n_in, counted, cell) -> tuple:
    """Far pixels -> the cells where much of the picture is far off, the overlay measure, the far pixels: an overlay
    (a caption, a logo) is one compact patch or band, so the box around the cells that differ is narrow
    one way; an object moved leaves two patches (where it was, where it is), a wide box."""
    grid_far = np.zeros(shape, np.float32)
    grid_far.reshape(-1)[at] = far
    differs = counted & (_cells(grid_far, cell) > CELL_DIFFERS * np.maximum(n_in, 1))
    ys, xs = np.nonzero(differs)
    overlay = float(min((np.ptp(ys) + 1) / differs.shape[0], (np.ptp(xs) + 1) / differs.shape[1])) if len(ys) else 0.0
    return differs, overlay, far, explained


def _refine(a: dict, b: dict, m: np.ndarray, slide: float) -> np.ndarray:
    """The transform b -> a (half-size images) refined on all their pixels (ECC, an affine fit started
    from the keypoints' one): a few matches fix it only to a pixel or two, which shows at sharp edges."""
    ga = cv2.cvtColor(a["half"], cv2.COLOR_RGB2GRAY)
    gb = cv2.cvtColor(b["half"], cv2.COLOR_RGB2GRAY)
    warp = cv2.invertAffineTransform(m).astype(np.float32)  # ECC's warp maps a's pixels to b's
    try:
        _, warp = cv2.findTransformECC(ga, gb, warp, cv2.MOTION_AFFINE,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4), None, 5)
    except cv2.error:  # did not converge (flat images, little overlap): the keypoints' transform stays
        return m
    refined = cv2.invertAffineTransform(warp).astype(np.float64)
    # from matches, a refinement moves the picture by a pixel or two (more: a slide onto something else);
    # from the frames, by up to a crop's width
    corners = np.array([[0, 0, 1], [b["half"].shape[1], 0, 1], [0, b["half"].shape[0], 1],
                        [b["half"].shape[1], b["half"].shape[0], 1]], np.float64)
    moved = np.abs(corners @ refined.T - corners @ m.T).max()
    return refined if moved <= slide else m


def _cells(mask: np.ndarray, cell: int) -> np.ndarray:
    """(h, w) -> (h // cell, w // cell) sums over cell x cell blocks (the ragged edge dropped)."""
    h, w = mask.shape[0] // cell * cell, mask.shape[1] // cell * cell
    return mask[:h, :w].reshape(h // cell, cell, w // cell, cell).sum((1, 3))


def _colour_order(ca: np.ndarray, cb: np.ndarray) -> float:
    """Aligned pixels (n, 3) of two pictures -> the share of their channel pairs (red-green, green-blue,
    red-blue) that both order surely (ORDER_LEVELS apart in each) and oppositely: one rising curve on every
    channel (lightening, contrast, gamma, the clipping they cause) keeps which channel is the higher, a
    recoloured look-alike (a green ground against a blue one) does not; NaN: too few coloured pixels (a grey page)."""
    flips = sure = 0
    for i, j in ((0, 1), (1, 2), (0, 2)):
        da, db = ca[:, i] - ca[:, j], cb[:, i] - cb[:, j]
        both = (np.abs(da) >= ORDER_LEVELS) & (np.abs(db) >= ORDER_LEVELS)
        sure += int(both.sum())
        flips += int((both & ((da > 0) != (db > 0))).sum())
    return flips / sure if sure >= ORDER_PIXELS * 3 * len(ca) else float("nan")


def _compare(a: dict, b: dict, m: np.ndarray, slide: float = REFINE_SLIDE) -> dict:
    """b warped onto a by m (refined on the pixels), both blurred (JPEG blocks, resampling and a
    rotation's aliasing blur away), compared over their overlap on a grid of cells once one's colours
    are mapped onto the other's by rising curves (_far); a cell differs when much of it is far off.
    -> overlap (the share of a covered), explained (_far), differing (the share of cells that differ),
    regions (their separated groups), overlay (the narrower side of their box: one caption or logo is
    narrow, an object moved leaves two patches apart), aligned_correlation (of the grey images over what
    agrees), colour_shift, colour_order (_colour_order), b's brightness shift and contrast ratio against a,
    and the refined m."""
    h, w = a["half"].shape[:2]
    m = np.array(m, np.float64)
    m[:, 2] /= 2  # the same transform between the half-size images
    m = _refine(a, b, m, slide) if slide > 0 else m  # slide 0: m is trusted as it is
    warped = cv2.warpAffine(b["half"], m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    inside = cv2.warpAffine(np.ones(b["half"].shape[:2], np.uint8), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8)).astype(bool)  # not the border's blend
    # the share of each picture that the other covers, the smaller (m scales areas of b by det)
    scale2 = abs(float(np.linalg.det(m[:, :2])))
    overlap = float(min(inside.mean(), inside.sum() / max(scale2 * b["half"].shape[0] * b["half"].shape[1], 1)))
    none = {**NOT_COMPARED, "overlap": overlap, "m": m}
    if inside.sum() < 32:
        return none
    sigma = max(h, w) / 128
    fa, fb = cv2.GaussianBlur(a["half"], (0, 0), sigma), cv2.GaussianBlur(warped, (0, 0), sigma)
    at = np.flatnonzero(inside)  # the overlap's pixels, by flat index (faster gathers than the mask)
    # the curves are fitted from the picture without the overlay (a caption on x would bend them):
    # both ways tried, the one whose differing cells are the narrower, then the fewer, kept
    cell = max(4, max(h, w) // CELLS)
    n_in = _cells(inside.astype(np.float32), cell)
    counted = n_in >= cell * cell / 4  # cells mostly outside the overlap say nothing
    if not counted.any():
        return none
    first = _differing_cells(*_far(fa, fb, at), at, (h, w), n_in, counted, cell)
    if first[0].any():  # no cell differs the first way: the other way cannot be narrower nor fewer
        first = min(first, _differing_cells(*_far(fb, fa, at), at, (h, w), n_in, counted, cell), key=lambda d: (d[1], d[0].sum()))
    differs, overlay, far, explained = first
    regions = cv2.connectedComponents(differs.astype(np.uint8), connectivity=8)[0] - 1
    ys, xs = np.nonzero(differs)  # the box's height and width, each a share of the grid's side (overlay: the narrower)
    bands = ((np.ptp(ys) + 1) / differs.shape[0], (np.ptp(xs) + 1) / differs.shape[1]) if len(ys) else (0.0, 0.0)
    # agreeing pixels: those of cells that do not differ (and the ragged edge's)
    ok_px = np.ones((h, w), bool)
    hc, wc = differs.shape
    ok_px[:hc * cell, :wc * cell] = ~np.repeat(np.repeat(differs, cell, 0), cell, 1)
    far_px = np.zeros((h, w), np.uint8)
    far_px.reshape(-1)[at] = far
    # nor the overlay's pixels (and their blurred halo) in cells that mostly agree
    ok = ok_px.reshape(-1).take(at) & ~cv2.dilate(far_px, np.ones((7, 7), np.uint8)).reshape(-1).take(at).astype(bool)
    if ok.sum() < 32:
        return {**none, "explained": explained, "differing": float(differs.sum() / counted.sum()), "regions": int(regions),
                "overlay": overlay, "bands": bands}
    used = at[ok]
    ca, cb = fa.reshape(-1, 3).take(used, 0), fb.reshape(-1, 3).take(used, 0)
    ga, gb = _grey(ca), _grey(cb)
    use = np.zeros((h, w), bool)
    use.reshape(-1)[used] = True
    greys = (_grey(fa), _grey(fb))
    detail = _detail(*greys, use, _pixel(a, b))
    colour_shift = float(np.abs(cb.mean(0) - ca.mean(0)).max()) / 255  # a recoloured look-alike fits a curve too
    colour_order = _colour_order(ca, cb)
    sa, sb = float(ga.std()), float(gb.std())
    corr = float(((ga - ga.mean()) * (gb - gb.mean())).mean() / (sa * sb)) if sa > 1 and sb > 1 else float(np.abs(ga - gb).mean() < 4)
    return {"overlap": overlap, "aligned_correlation": corr, "explained": explained, "detail": detail, "differing": float(differs.sum() / counted.sum()),
            "regions": int(regions), "overlay": overlay, "bands": bands, "colour_shift": colour_shift, "colour_order": colour_order, "m": m, "use": use, "greys": greys,
            "brightness_shift": float(gb.mean() - ga.mean()) / 255, "contrast_ratio": sb / max(sa, 1e-3)}


def _coarse(a: dict, b: dict, m: np.ndarray, refine: bool = False) -> dict:
    """_compare on the images at half the comparison's size (m's shift halved to match); refine: let ECC
    move the picture first, by up to 2 of these pixels."""
    m = np.array(m, np.float64)
    m[:, 2] /= 2
    return _compare(a["coarse"], b["coarse"], m, slide=2 if refine else 0)


def _first_look(a: dict, b: dict, m: np.ndarray, how: str) -> tuple[dict, bool]:
    """A try's first look at half the comparison's scale (_coarse, a quarter of the work), and whether the try
    goes on to the full comparison: not when it is already far off there (the share explained or differing
    beyond limits far looser than the decision's), as most are.  A try is looked at as it was laid: ECC's
    refinement, within the comparison's slack at this scale, was 40% of a frames try's look; but a frames
    try misaligned by a pixel may show one caption's cells as two patches, so one that fails only on that,
    with few cells differing (COARSE_FRAMES_RETRY), is refined and looked at again (two captioned copies of
    1,989 at 100,000 scenes depend on it)."""
    def goes_on(px):
        close = how == "keypoints" or px["differing"] <= COARSE_FRAMES_CLOSE or (px["regions"] == 1 and px["overlay"] <= COARSE_FRAMES_BAND)
        near = px["explained"] >= COARSE_EXPLAINED and px["differing"] <= (COARSE_DIFFERING if how == "keypoints" else COARSE_FRAMES_DIFFERING)
        return near and close, near
    px = _coarse(a, b, m)
    passes, near = goes_on(px)
    if how == "frames" and near and not passes and px["differing"] <= COARSE_FRAMES_RETRY:
        px = _coarse(a, b, m, refine=True)
        passes = goes_on(px)[0]
    return px, passes


def _layouts(a: dict, b: dict) -> tuple[float, float, bool]:
    """The correlation of the two 8 x 8 grey layouts, b as it is and mirrored, and whether either is
    flat (under a grey level of variation: its correlations say nothing)."""
    ta, tb = a["layout"], b["layout"]
    na, nb = float(np.linalg.norm(ta)), float(np.linalg.norm(tb))
    norm = max(na * nb, 1e-6)
    return float((ta * tb).sum()) / norm, float((ta * tb[:, ::-1]).sum()) / norm, min(na, nb) < np.sqrt(ta.size)


def _orientations(direct: float, mirrored: float, flat: bool) -> list[bool]:
    """Which ways to lay b's frame on a's: as it is, mirrored, or both when neither is clearly nearer
    (a copy's layouts correlate near 1 the right way), and only a way whose layouts correlate at
    FRAMES_LAYOUT or more (a pair laid by its frames must agree almost everywhere)."""
    ways = [False, True] if abs(direct - mirrored) < ORIENTATION_MARGIN else [mirrored > direct]
    return ways if flat else [f for f in ways if (mirrored if f else direct) >= FRAMES_LAYOUT]


def _detail(ga: np.ndarray, gb: np.ndarray, use: np.ndarray, pixel: float) -> float:
    """Do the fine details coincide?  The correlation of the two grey images' band-pass (between the
    coarser thumbnail's pixel and DETAIL_BAND times it), in each cell of a 3 x 3 grid where both have detail, the
    median over the cells (a caption fills few of them) -> float, NaN when fewer than 3 cells have detail.
    Low-contrast look-alikes (star fields, skin, two stretches of one texture) agree on their coarse
    layout, which the colour curves explain, and not on their details."""
    s1 = max(1.0, pixel)
    da = (cv2.GaussianBlur(ga, (0, 0), s1) - cv2.GaussianBlur(ga, (0, 0), DETAIL_BAND * s1)) * use
    db = (cv2.GaussianBlur(gb, (0, 0), s1) - cv2.GaussianBlur(gb, (0, 0), DETAIL_BAND * s1)) * use
    h, w = (ga.shape[0] // 3) * 3, (ga.shape[1] // 3) * 3

    def cells(x):  # sums over a 3 x 3 grid (the ragged edge dropped)
        return x[:h, :w].reshape(3, h // 3, 3, w // 3).sum((1, 3))
    ab, aa, bb, n = cells(da * db), cells(da * da), cells(db * db), cells(use.astype(np.float32))
    textured = (n > h * w / 36) & (np.sqrt(aa * bb) > DETAIL_ENERGY * np.maximum(n, 1))
    if textured.sum() < 3:
        return float("nan")
    return float(np.median((ab / np.maximum(np.sqrt(aa * bb), 1e-6))[textured]))


def _pixel(a: dict, b: dict) -> float:
    """The coarser thumbnail's pixel in the images' comparison pixels (half size; a quarter for _coarse's): the finest detail both show."""
    return max(a["pixel"], b["pixel"])


def _outside_band(a: dict, b: dict, greys: tuple, use: np.ndarray, inliers: np.ndarray, band: float) -> float:
    """Do the pictures agree beyond their matches, when the matches fit one overlay's band?  Two different
    pictures under one caption or watermark (stock photos, a channel's logo, a copyright line) match on it
    alone: the inliers (a's working pixels) then fit a band no wider than an overlay (`band`, a share of a's
    longest side).  -> _detail outside the inliers' hull widened by a keypoint's reach; NaN when the inliers
    spread wider than a band (the picture itself matched) or nothing outside has detail."""
    if len(inliers) < 3 or greys is None:
        return float("nan")
    (_, (w, h), _) = cv2.minAreaRect(inliers.astype(np.float32))
    if min(w, h) > band * max(a["grey"].shape):
        return float("nan")
    scale = use.shape[1] / a["grey"].shape[1]  # working pixels -> the comparison's (half size, or a quarter: _coarse)
    hull = np.zeros(use.shape, np.uint8)
    cv2.fillConvexPoly(hull, np.round(cv2.convexHull(inliers.astype(np.float32)) * scale).astype(np.int32), 1)
    reach = 2 * round(KEYPOINT_REACH * scale) + 1  # a kernel this wide: the reach either side
    hull = cv2.dilate(hull, np.ones((reach, reach), np.uint8)).astype(bool)
    return _detail(*greys, use & ~hull, 2 * scale * _pixel(a, b))


def _fine(a: dict, b: dict, m: np.ndarray, use: np.ndarray) -> float:
    """Do the finest details coincide: the words of a page, the figures of a table?  Pages of one template
    (a form filled in twice, two invoices of one system) agree at the comparison's scale, which blurs
    their words away, and differ here.  b is aligned onto a at the working scale (ECC from m, the
    half-size transform, over the pixels that agree: not a caption's), both grey images are band-passed
    at about the thumbnail's own pixel, and correlated in each cell of a FINE_GRID grid where both have
    strong detail -> the lower quartile over those cells; NaN when either is not a page (PAGE_PAPER), a
    thumbnail is too coarse (the band would be finer than its pixel) or fewer than FINE_CELLS cells have such detail."""
    pixel = 2 * _pixel(a, b)  # the coarser thumbnail's pixel, in working pixels
    if pixel > FINE_PIXEL or min(a.get("paper", 0.0), b.get("paper", 0.0)) < PAGE_PAPER:
        return float("nan")
    ga, gb = a["grey"].astype(np.float32), b["grey"].astype(np.float32)
    h, w = ga.shape
    m = np.array(m, np.float64)
    # half-size pixel i is working pixels 2i and 2i + 1 (its centre at 2i + 0.5): x = 2 x' + 0.5 either side
    m[:, 2] = 2 * m[:, 2] + 0.5 * (1 - m[:, :2].sum(1))  # (a mirror's shift is one working pixel more than twice its own)
    mask = cv2.resize(use.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    try:  # a pixel's misalignment decorrelates this band: refined here, the overlay's pixels left out
        # ECC's warp maps its template's pixels (b's) to its input's (a's), whose mask says which count: m itself
        _, m = cv2.findTransformECC(gb, ga, m.astype(np.float32), cv2.MOTION_AFFINE,
                                    (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 1e-4), mask, 3)
    except cv2.error:  # did not converge: the comparison's transform stays
        pass
    wb = cv2.warpAffine(gb, m, (w, h), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones(gb.shape, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST)
    u = (cv2.erode(inside, np.ones((5, 5), np.uint8)) & mask).astype(np.float32)
    s1 = max(FINE_SIGMA, FINE_SIGMA * pixel)
    da = (cv2.GaussianBlur(ga, (0, 0), s1) - cv2.GaussianBlur(ga, (0, 0), 2 * s1)) * u
    db = (cv2.GaussianBlur(wb, (0, 0), s1) - cv2.GaussianBlur(wb, (0, 0), 2 * s1)) * u
    g = FINE_GRID
    hh, ww = h // g * g, w // g * g

    def cells(x):
        return x[:hh, :ww].reshape(g, hh // g, g, ww // g).sum((1, 3))
    ab, aa, bb, n = cells(da * db), cells(da * da), cells(db * db), cells(u)
    strong = ((n > hh * ww / g ** 2 / 4) & (np.sqrt(aa * bb) > FINE_ENERGY * np.maximum(n, 1))
              & (np.maximum(aa, bb) <= FINE_RATIO * np.minimum(aa, bb)))
    if strong.sum() < FINE_CELLS:
        return float("nan")
    return float(np.quantile((ab / np.maximum(np.sqrt(aa * bb), 1e-6))[strong], 0.25))


def _frame(ga: np.ndarray, gb: np.ndarray, flip: bool) -> np.ndarray:
    """The transform that maps b's frame onto a's (b stretched to a's size; mirrored if flip)."""
    (ha, wa), (hb, wb) = ga.shape, gb.shape
    sx, sy = wa / wb, ha / hb
    return np.array([[-sx, 0, wa - 1], [0, sy, 0]] if flip else [[sx, 0, 0], [0, sy, 0]], np.float64)


CROP_SHARES = np.linspace(0.85, 1.0, 7)  # of the other's side: a copy cropped by up to 15% of a side covers 85% or more
# (so a crop's try must cover 72% of each picture: featureless look-alikes, two black silhouettes' edges, align further off)
CROP_GAIN = 0.08  # of correlation: a crop is laid when it fits this much better than the frames (its copies: 0.096 and more)


def _crop_frame(a: dict, b: dict, flip: bool) -> np.ndarray | None:
    """The transform b -> a (working pixels, b mirrored first if flip) that lays one picture inside the other
    as a crop of it: the picture scaled to cover 85-100% of the other's side and slid over it on the coarse
    greys, where it correlates best; None when that fits no better than the frames stretched onto each other
    (a dark picture with one bright corner correlates about as well a little shifted: the frames are kept)."""
    ga, gb = _grey(a["coarse"]["half"]), _grey(b["coarse"]["half"])
    if flip:
        gb = np.ascontiguousarray(gb[:, ::-1])
    if ga.std() < 1e-3 or gb.std() < 1e-3:
        return None
    stretched = cv2.resize(gb, ga.shape[::-1], interpolation=cv2.INTER_AREA)
    best, m = float(np.corrcoef(ga.ravel(), stretched.ravel())[0, 1]) + CROP_GAIN, None
    for inner, outer, swap in ((gb, ga, False), (ga, gb, True)):  # either may be the crop
        (hi, wi), (ho, wo) = inner.shape, outer.shape
        fit = min(wo / wi, ho / hi)  # the scale at which inner just fits inside outer
        for share in CROP_SHARES:
            w, h = max(4, round(wi * fit * share)), max(4, round(hi * fit * share))
            if w > wo or h > ho:
                continue
            r = cv2.matchTemplate(outer, cv2.resize(inner, (w, h), interpolation=cv2.INTER_AREA), cv2.TM_CCOEFF_NORMED)
            _, v, _, (x, y) = cv2.minMaxLoc(r)
            if v > best:
                inside = np.array([[w / wi, 0, x], [0, h / hi, y], [0, 0, 1]], np.float64)  # inner -> outer
                best, m = v, (np.linalg.inv(inside) if swap else inside)
    if m is None:
        return None
    m[:2, 2] *= 4  # coarse -> working pixels (the coarse grey is a quarter of the working one)
    if flip:  # from b's unmirrored coordinates: x -> W - 1 - x first
        m = m @ np.array([[-1, 0, b["grey"].shape[1] - 1], [0, 1, 0], [0, 0, 1]], np.float64)
    return m[:2]


def verify_pair(a: dict, b: dict, settings: VerifySettings = VerifySettings(), frames: bool = True, close: bool = False) -> dict:
    """Two prepared images -> the decision `same` and its evidence (EVIDENCE's keys) (frames: False, the keypoint
    tries only: the caller knows the pair's fine detail disagrees, which a pair laid by its frames cannot; close:
    it agrees only in part, and a pair whose pictures both have keypoints is laid by its frames only when its
    layouts correlate at CLOSE_FRAMES_LAYOUT or more, one way or the other):
    inliers, inlier_ratio, flip, scale, rotation (of the transform b -> a, refined on the pixels),
    spread (of the inliers), overlap (the smaller share of either covered by the other), then the aligned
    pixels: aligned_correlation, explained, differing, regions, overlay, colour_shift, brightness_shift,
    contrast_ratio (_compare)."""
    s = settings
    best = None
    # keypoints first; then (no keypoints, or no transform that passes) the two frames laid on each
    # other and the alignment found on the pixels from there (smooth pictures, small copies)
    direct, mirrored, flat = _layouts(a, b)
    # one overlay's band: a share of the side, or a line of text on a small picture (and a cell's rounding)
    overlay = max(s.max_overlay, TEXT_LINE / min(a["side"], b["side"]) + 1 / CELLS)
    # ... along each side of a's grid of cells: across a wide picture a caption is a line of text of its
    # height, and a band that straddles one cell more is a larger share of the fewer cells along that side
    grid = np.array(a["half"].shape[:2]) // max(4, max(a["half"].shape[:2]) // CELLS)
    bands = [max(s.max_overlay, TEXT_LINE / min(a["size"][i], b["size"][i]) + 1 / max(grid[i], 1)) for i in (0, 1)]
    textured = min(len(_direct(a)[0]), len(_direct(b)[0])) >= s.min_keypoints
    # the frames tries are most of the work on look-alikes (at 100,000 generated scenes, 70% of a pair's)
    frames = frames and not (close and textured and max(direct, mirrored) < CLOSE_FRAMES_LAYOUT)
    # each way round that the frames may be laid, the frames stretched onto each other, then (when that fails)
    # one picture laid inside the other where it fits best as a crop (a combined copy, cropped and captioned)
    tries = ([("keypoints", False), ("keypoints", True)] if textured else []) + [
        (how, f) for f in (_orientations(direct, mirrored, flat) if frames else []) for how in ("frames", "crop")]
    for how, flip in tries:
        if how in ("frames", "crop"):
            (ha, wa), (hb, wb) = a["grey"].shape, b["grey"].shape
            if abs(np.log((wa / ha) / (wb / hb))) > 0.2:  # another shape than a crop of 15% a side gives
                continue
            m = _frame(a["grey"], b["grey"], flip) if how == "frames" else _crop_frame(a, b, flip)
            if m is None:  # no crop fits better than the frames, tried already
                continue
            inl, ratio, spread, inliers = 0, 0.0, 0.0, np.zeros((0, 2), np.float32)
        else:
            pb, db = _mirror(b) if flip else _direct(b)
            pa, da = _direct(a)
            mt = _matches(da, db, s.ratio_test)
            m, mask = _fit(pa, pb, mt)
            if m is None:
                continue
            inl, ratio = int(mask.sum()), float(mask.sum()) / max(len(mt), 1)
            if inl < s.min_inliers:  # cannot pass: the pixel comparison is not worth its time
                continue
            # few matches agree and the layouts do not correlate that way: two different pictures (most
            # candidate pairs), not compared. A copy has many matches (a page cropped by 15%, whose
            # layout changes with its header: 198) or correlated layouts (a caption, a combination of
            # edits: 9-14 matches, layouts 0.45 and more)
            if inl < KEYPOINTS_FEW and not flat and (mirrored if flip else direct) < KEYPOINTS_LAYOUT:
                continue
            inliers = pa[mt[mask, 0]]  # in a's working pixels
            spread = _spread(inliers, a["grey"].shape)
            if flip:  # back to b's unmirrored coordinates: x -> W - 1 - x, then m
                wb = b["grey"].shape[1]
                m = m @ np.array([[-1, 0, wb - 1], [0, 1, 0], [0, 0, 1]], np.float64)
        laid = how != "keypoints"  # by the frames or as a crop: no matches confirm it, the pixels must agree nearly everywhere
        compared = laid or _plausible(a["grey"].shape, b["grey"].shape, m, flip, s)
        if not compared:
            # a transform that no refinement on the pixels can bring within the limits of overlap, scale
            # and rotation (most chance matches' are): its pixels are not compared
            px = {**NOT_COMPARED, "m": m, "overlap": _overlap(a["grey"].shape, b["grey"].shape, m)}
        else:
            px, passes = _first_look(a, b, m, how)  # a try already far off at half the scale is decided there
            if passes:
                px = _compare(a, b, m, slide=REFINE_SLIDE)
        refined, use, greys = px.pop("m"), px.pop("use", None), px.pop("greys", None)
        scale, rotation = _similarity(refined, flip)
        ev = {"inliers": inl, "inlier_ratio": ratio, "flip": flip, "scale": scale, "rotation": rotation,
              "spread": spread, "fine": float("nan"), "detail_outside": float("nan"), **px}
        # the geometry only has to be plausible (chance matches do not align two pictures): the aligned
        # pixels decide. A copy's differences are global (a colour curve absorbs them) or one overlay.
        # aligned from the frames (no matches to check it): the picture must agree closely
        needed = s.min_explained if how == "keypoints" else max(s.min_explained, FRAMES_EXPLAINED)
        # from the frames: nearly all agrees, or all but one overlay in the plain band (a caption laid on a
        # smooth picture; with no matches to confirm the frames, not the small picture's wider band)
        one_overlay = ev["regions"] == 1 and ev["overlay"] <= s.max_overlay
        allowed = s.max_differing if how == "keypoints" or one_overlay else s.max_differing / 5
        tests = {"rotation": abs(rotation) <= s.max_rotation, "scale": s.scale_range[0] <= scale <= s.scale_range[1],
                 "overlap": ev["overlap"] >= (max(s.min_overlap, CROP_SHARES[0] ** 2) if how == "crop" else s.min_overlap), "explained": ev["explained"] >= needed,
                 "differing": ev["differing"] <= allowed, "overlay": ev["bands"][0] <= bands[0] or ev["bands"][1] <= bands[1],
                 "colour_shift": ev["colour_shift"] <= s.max_colour_shift, "colour_order": not ev["colour_order"] > s.max_colour_order,
                 "detail": not ev["detail"] < s.min_detail}
        if all(tests.values()):  # the last tests: only a pair that passes everything else (few) pays for them
            # matches that fit one overlay's band may be a caption or watermark both carry: the rest must agree too
            ev["detail_outside"] = _outside_band(a, b, greys, use, inliers, overlay)
            tests["outside_overlay"] = not ev["detail_outside"] < s.min_detail
        if all(tests.values()):
            ev["fine"] = _fine(a, b, refined, use)
            tests["fine"] = not ev["fine"] < s.min_fine
        ev["same"] = all(tests.values())
        # why not, in words: the tests failed (the pixels' when they were compared), by which try
        failed = [k for k, ok in tests.items() if not ok and (compared or k in ("rotation", "scale", "overlap"))]
        ev["failed"] = "" if ev["same"] else (f"{how}{' mirrored' if flip else ''}: {', '.join(failed)}"
                                              + ("" if compared else " (pixels not compared)"))
        # the try that got furthest is reported: one that passes, else one whose pixels were compared
        rank = (ev["same"], compared, ev["inliers"], ev["aligned_correlation"])
        if best is None or rank > best_rank:
            best, best_rank = ev, rank
        if best["same"]:
            break  # the direct match holds: the mirror is not tried
    if best is None:
        best = {"inliers": 0, "inlier_ratio": 0.0, "flip": False, "scale": float("nan"), "rotation": float("nan"),
                "spread": 0.0, "overlap": 0.0, **NOT_COMPARED, "same": False,
                "failed": "no transform to compare: too few matches agree (or few, and the layouts differ), "
                          "and the frames differ in shape or layout"}
    return best


def _similarity(m: np.ndarray, flip: bool) -> tuple[float, float]:
    """The scale and the rotation (degrees) of the transform m (2 x 3; b mirrored first if flip)."""
    r = np.asarray(m, np.float64)[:, :2]
    scale = float(np.sqrt(abs(np.linalg.det(r))))
    r = r @ (np.diag([-1.0, 1.0]) if flip else np.eye(2))  # a mirror's angle is read after unmirroring
    return scale, float(np.degrees(np.arctan2(r[1, 0], r[0, 0])))


def _overlap(shape_a: tuple, shape_b: tuple, m: np.ndarray) -> float:
    """The smaller share of either image that the other covers once b is mapped onto a by m (exact, from
    the two outlines; _compare measures the same on the pixels)."""
    (ha, wa), (hb, wb) = shape_a[:2], shape_b[:2]
    quad = cv2.transform(np.array([[[0, 0]], [[wb, 0]], [[wb, hb]], [[0, hb]]], np.float32), np.asarray(m, np.float32))
    rect = np.array([[[0, 0]], [[wa, 0]], [[wa, ha]], [[0, ha]]], np.float32)
    area = float(cv2.intersectConvexConvex(rect, quad)[0]) if cv2.contourArea(quad) > 0 else 0.0
    return min(area / (ha * wa), area / max(abs(float(np.linalg.det(np.asarray(m)[:, :2]))) * hb * wb, 1e-9))


def _plausible(shape_a: tuple, shape_b: tuple, m: np.ndarray, flip: bool, s: VerifySettings) -> bool:
    """Could a transform that the pixels' refinement reaches from m pass the decision's limits on
    overlap, scale and rotation?  The refinement moves each corner by at most REFINE_SLIDE half-size
    pixels (2 x that here): over the shorter side of either picture (b's as mapped onto a), such moves
    change the overlap, the scale and the angle (radians) by less than `slack`."""
    scale, rotation = _similarity(m, flip)
    short = min(min(shape_a[:2]), min(shape_b[:2]) * scale)
    slack = max(PLAUSIBLE_MARGIN, 4 * 2 * REFINE_SLIDE / max(short, 1.0))
    lo, hi = s.scale_range
    return bool(abs(rotation) <= s.max_rotation + np.degrees(slack) and lo * (1 - slack) <= scale <= hi * (1 + slack)
                and _overlap(shape_a, shape_b, m) >= s.min_overlap - slack)


def _spread(points: np.ndarray, shape: tuple) -> float:
    """Share of the picture that the inliers' convex hull covers (a caption's matches: a thin band)."""
    if len(points) < 3:
        return 0.0
    hull = cv2.convexHull(points.astype(np.float32))
    return float(cv2.contourArea(hull)) / float(shape[0] * shape[1])


def tier(same_hash: bool, ev: dict) -> str:
    """exact: the same decoded pixels; near-identical: the whole picture, unmirrored, unrotated, at its
    own brightness and contrast, nothing drawn on it (re-encoded or resized); edited: any other verified copy."""
    if same_hash:
        return "exact"
    if (not ev["flip"] and abs(ev["rotation"]) < 1.0 and ev["overlap"] > 0.97 and ev["aligned_correlation"] > 0.97
            and ev["differing"] < 0.02 and abs(ev["brightness_shift"]) < 0.03 and abs(ev["contrast_ratio"] - 1) < 0.06):
        return "near-identical"
    return "edited"


def verify_pairs(images: dict, a: np.ndarray, b: np.ndarray, settings: VerifySettings = VerifySettings()) -> dict[str, np.ndarray]:
    """images: {row: prepared image}; a, b: (m,) rows -> {evidence name: (m,) array}."""
    return evidence_arrays([verify_pair(images[int(i)], images[int(j)], settings) for i, j in zip(a, b)])


EVIDENCE_TYPES = {"same": bool, "flip": bool, "inliers": np.int32, "regions": np.int32, "failed": object}  # else float32


def evidence_arrays(rows: list[dict]) -> dict[str, np.ndarray]:
    """verify_pair's results -> {evidence name: (m,) array of its type}."""
    return {k: np.array([r[k] for r in rows], EVIDENCE_TYPES.get(k, np.float32)) for k in EVIDENCE}


def no_evidence(n: int) -> dict[str, np.ndarray]:
    """The evidence of n pairs not verified: zeros, False, and no reason."""
    return {k: np.full(n, "", object) if k == "failed" else np.zeros(n, EVIDENCE_TYPES.get(k, np.float32)) for k in EVIDENCE}
