"""Is a candidate pair the same picture (edited) or two different pictures?  Geometric
verification on small images, the classic check of near-duplicate image retrieval.

Local features (ORB) are matched between the two images (Lowe's ratio test), and a similarity
transform (scale, rotation, shift) is fitted to the matches by RANSAC: the same picture, cropped,
resized, lightened or captioned, gives many matches that agree with one transform (inliers); two
different pictures give few.  The mirrored second image is tried when the direct match fails (a
flipped copy).  Two frames of one scene, or a scene whose objects moved, can still agree on their
background: the aligned images are then compared pixel by pixel (correlation of the blurred grey
images over the overlap, and the share of that overlap which differs), which a copy passes and a
moved object fails.  Images with too little texture for keypoints are compared whole, aligned by
their frames.

Pure numpy / OpenCV: arrays in, arrays out; index/knn.py reads the thumbnails and writes the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_SIDE = 256  # both images are brought to this longest side first (small thumbnails enlarged)
DIFFERS = 40.0  # a pixel differs when a channel is this far (of 255) from the fitted line
EVIDENCE = ("same", "inliers", "inlier_ratio", "flip", "scale", "rotation", "spread", "overlap", "aligned_correlation",
            "differing", "brightness_shift", "contrast_ratio")


@dataclass(frozen=True)
class VerifySettings:
    min_inliers: int = 4  # matches that agree with one transform (RANSAC's consensus: the pixels decide)
    min_correlation: float = 0.60  # of the aligned, blurred grey images over their overlap
    max_differing: float = 0.15  # share of the overlap that differs (a caption is small; a moved object is not)
    min_overlap: float = 0.65  # share of each image covered by the other, the smaller (crops of 15% a side: 0.72)
    min_spread: float = 0.03  # share of the picture the inliers' hull covers (a caption alone: a thin band)
    max_rotation: float = 20.0  # degrees; copies rotate a few degrees, look-alike frames may turn more
    scale_range: tuple[float, float] = (0.5, 2.0)  # of the transform between the two working images
    ratio_test: float = 0.8
    features: int = 1000  # keypoints per image
    detector: str = "orb"  # or "sift" (more matches on blurred or smooth images, slower)
    min_keypoints: int = 25  # fewer in either image: compare the whole images instead


def prepare(rgb: np.ndarray, settings: VerifySettings = VerifySettings()) -> dict:
    """One image (h, w, 3) uint8 -> what its pairs need: the working colour and grey images and
    their ORB keypoints and descriptors (once per image, whatever its pairs; the mirror's on demand)."""
    h, w = rgb.shape[:2]
    f = WORK_SIDE / max(h, w)
    colour = cv2.resize(np.ascontiguousarray(rgb), (max(1, round(w * f)), max(1, round(h * f))),
                        interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    half = cv2.resize(colour, (max(1, colour.shape[1] // 2), max(1, colour.shape[0] // 2)), interpolation=cv2.INTER_AREA)
    out = {"colour": colour, "grey": cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY), "settings": settings,
           "half": half.astype(np.float32)}  # the pixel comparison's scale (it blurs finer detail away anyway)
    out["direct"] = _keypoints(out["grey"], settings)
    return out


def _keypoints(grey: np.ndarray, settings: VerifySettings) -> tuple[np.ndarray, np.ndarray]:
    if settings.detector == "sift":
        det = cv2.SIFT_create(nfeatures=settings.features)
    else:
        det = cv2.ORB_create(nfeatures=settings.features, edgeThreshold=15, patchSize=15, fastThreshold=5)  # smooth photos too
    kp, desc = det.detectAndCompute(grey, None)
    pts = np.array([k.pt for k in kp], np.float32).reshape(-1, 2)
    if desc is None:
        desc = np.zeros((0, 128), np.float32) if settings.detector == "sift" else np.zeros((0, 32), np.uint8)
    return pts, desc


def _mirror(img: dict) -> tuple[np.ndarray, np.ndarray]:
    if "mirror" not in img:
        img["mirror"] = _keypoints(np.ascontiguousarray(img["grey"][:, ::-1]), img["settings"])
    return img["mirror"]


def _matches(da: np.ndarray, db: np.ndarray, ratio: float) -> np.ndarray:
    """(m, 2) indices of the descriptors of a and b that pass Lowe's ratio test."""
    if len(da) < 2 or len(db) < 2:
        return np.zeros((0, 2), np.int64)
    knn = cv2.BFMatcher(cv2.NORM_HAMMING if da.dtype == np.uint8 else cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [(m.queryIdx, m.trainIdx) for m, n in (p for p in knn if len(p) == 2) if m.distance < ratio * n.distance]
    return np.array(good, np.int64).reshape(-1, 2)


def _fit(pa: np.ndarray, pb: np.ndarray, matches: np.ndarray):
    """RANSAC similarity transform b -> a on the matches -> (2x3 matrix or None, inlier mask)."""
    if len(matches) < 3:
        return None, np.zeros(len(matches), bool)
    m, inl = cv2.estimateAffinePartial2D(pb[matches[:, 1]], pa[matches[:, 0]], method=cv2.RANSAC,
                                         ransacReprojThreshold=4.0, maxIters=1000, confidence=0.995)
    return (m, inl.reshape(-1).astype(bool)) if m is not None else (None, np.zeros(len(matches), bool))


def _compare(a: dict, b: dict, m: np.ndarray) -> dict:
    """b warped onto a by m, both blurred (JPEG blocks, resampling and a rotation's aliasing blur away),
    compared over their overlap: the share of a covered, the correlation of the grey images, and the
    share that differs once each colour channel of b is fitted to a's by a line (a lightening or a
    contrast change is such a line; a caption or a moved object is not); b's brightness shift and
    contrast ratio against a."""
    h, w = a["half"].shape[:2]
    m = np.array(m, np.float64)
    m[:, 2] /= 2  # the same transform between the half-size images
    warped = cv2.warpAffine(b["half"], m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    inside = cv2.warpAffine(np.ones(b["half"].shape[:2], np.uint8), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    inside = cv2.erode(inside, np.ones((3, 3), np.uint8)).astype(bool)  # not the border's blend
    # the share of each picture that the other covers, the smaller (m scales areas of b by det)
    scale2 = abs(float(np.linalg.det(m[:, :2])))
    overlap = float(min(inside.mean(), inside.sum() / max(scale2 * b["half"].shape[0] * b["half"].shape[1], 1)))
    if inside.sum() < 32:
        return {"overlap": overlap, "aligned_correlation": 0.0, "differing": 1.0, "brightness_shift": 0.0, "contrast_ratio": 1.0}
    sigma = max(h, w) / 128
    ca = cv2.GaussianBlur(a["half"], (0, 0), sigma)[inside]
    cb = cv2.GaussianBlur(warped, (0, 0), sigma)[inside]
    ga, gb = ca.mean(1), cb.mean(1)
    sa, sb = float(ga.std()), float(gb.std())
    corr = float(((ga - ga.mean()) * (gb - gb.mean())).mean() / (sa * sb)) if sa > 1 and sb > 1 else float(np.abs(ga - gb).mean() < 4)
    resid = np.empty_like(cb)
    for c in range(3):  # b's channel as a line of a's (least squares), and what the line leaves
        x, y = ca[:, c], cb[:, c]
        vx = float(x.var())
        slope = float(((x - x.mean()) * (y - y.mean())).mean()) / vx if vx > 1 else 0.0
        resid[:, c] = y - (y.mean() + slope * (x - x.mean()))
    return {"overlap": overlap, "aligned_correlation": corr, "differing": float((np.abs(resid).max(1) > DIFFERS).mean()),
            "brightness_shift": float(gb.mean() - ga.mean()) / 255, "contrast_ratio": sb / max(sa, 1e-3)}


def _frame(ga: np.ndarray, gb: np.ndarray, flip: bool) -> np.ndarray:
    """The transform that maps b's frame onto a's (b stretched to a's size; mirrored if flip)."""
    (ha, wa), (hb, wb) = ga.shape, gb.shape
    sx, sy = wa / wb, ha / hb
    return np.array([[-sx, 0, wa - 1], [0, sy, 0]] if flip else [[sx, 0, 0], [0, sy, 0]], np.float64)


def verify_pair(a: dict, b: dict, settings: VerifySettings = VerifySettings()) -> dict:
    """Two prepared images -> the decision `same` and its evidence (EVIDENCE's keys):
    inliers, inlier_ratio, flip, scale, rotation (of the transform b -> a), overlap (the smaller share of
    either covered by the other), spread (of the inliers over the overlap), aligned_correlation,
    differing, brightness_shift, contrast_ratio."""
    s = settings
    best = None
    textured = min(len(a["direct"][0]), len(b["direct"][0])) >= s.min_keypoints
    # keypoints first; then (no keypoints, or no transform that passes) the two frames aligned whole
    tries = ([("keypoints", False), ("keypoints", True)] if textured else []) + [("frames", False), ("frames", True)]
    for how, flip in tries:
        if how == "frames":
            m, inl, ratio, spread = _frame(a["grey"], b["grey"], flip), 0, 0.0, 1.0
            (ha, wa), (hb, wb) = a["grey"].shape, b["grey"].shape
            if abs(np.log((wa / ha) / (wb / hb))) > 0.05:  # another shape: not the whole same picture
                continue
        else:
            pb, db = _mirror(b) if flip else b["direct"]
            pa, da = a["direct"]
            mt = _matches(da, db, s.ratio_test)
            m, mask = _fit(pa, pb, mt)
            if m is None:
                continue
            inl, ratio = int(mask.sum()), float(mask.sum()) / max(len(mt), 1)
            if inl < 4:  # cannot pass: the pixel comparison is not worth its time
                continue
            spread = _spread(pa[mt[mask, 0]], a["grey"].shape)
            if flip:  # back to b's unmirrored coordinates: x -> W - 1 - x, then m
                wb = b["grey"].shape[1]
                m = m @ np.array([[-1, 0, wb - 1], [0, 1, 0], [0, 0, 1]], np.float64)
        scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        # rotation of the similarity part (a mirror's determinant is negative: its angle is read after unmirroring)
        r = m[:, :2] @ (np.diag([-1.0, 1.0]) if flip else np.eye(2))
        rotation = float(np.degrees(np.arctan2(r[1, 0], r[0, 0])))
        ev = {"inliers": inl, "inlier_ratio": ratio, "flip": flip, "scale": scale, "rotation": rotation,
              "spread": spread, **_compare(a, b, m)}
        # keypoints need only a consensus (min_inliers) spread over the picture (not one shared caption or
        # watermark): the aligned pixels then decide, as chance matches do not align two pictures;
        # aligned by their frames alone, only near-equal pixels pass
        near_equal = ev["aligned_correlation"] >= 0.95 and ev["differing"] <= s.max_differing / 5
        corr_needed, differing_allowed = (s.min_correlation, s.max_differing) if how == "keypoints" else (0.95, s.max_differing / 5)
        ev["same"] = bool((how == "frames" or (inl >= s.min_inliers and (spread >= s.min_spread or near_equal)))
                          and abs(rotation) <= s.max_rotation and s.scale_range[0] <= scale <= s.scale_range[1]
                          and ev["overlap"] >= s.min_overlap and ev["aligned_correlation"] >= corr_needed
                          and ev["differing"] <= differing_allowed)
        if best is None or (ev["same"], ev["inliers"], ev["aligned_correlation"]) > (best["same"], best["inliers"], best["aligned_correlation"]):
            best = ev
        if best["same"]:
            break  # the direct match holds: the mirror is not tried
    if best is None:
        best = {"inliers": 0, "inlier_ratio": 0.0, "flip": False, "scale": float("nan"), "rotation": float("nan"),
                "spread": 0.0, "overlap": 0.0, "aligned_correlation": 0.0, "differing": 1.0, "brightness_shift": 0.0,
                "contrast_ratio": 1.0, "same": False}
    return best


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
    rows = [verify_pair(images[int(i)], images[int(j)], settings) for i, j in zip(a, b)]
    return {k: np.array([r[k] for r in rows], dtype=np.float32 if k not in ("same", "flip", "inliers") else
                        (bool if k != "inliers" else np.int32)) for k in EVIDENCE}
