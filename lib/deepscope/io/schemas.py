"""Every Parquet schema deepscope writes or reads: the contracts between stages.

A schema change is made here and nowhere else.
"""
from __future__ import annotations

import pyarrow as pa

# The items of a dataset, as listed by io/sources.py.
ITEMS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
])

# One row per input that could not be turned into a result, whatever the stage.
ERRORS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),  # "list", "decode", "model", ...
    pa.field("error", pa.string(), nullable=False),
])

FEATURE_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


def features(dim: int, dtype: str = "float32") -> pa.Schema:
    """features/*.parquet: one row per image, the layer's activations flattened."""
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("feature", pa.list_(FEATURE_DTYPES[dtype], dim), nullable=False),
    ])


# patches/part-*.parquet: per input partition, each channel's best images in it (at most k per
# channel and layer, so a part stays small whatever the partition's size).
PATCH_CANDIDATES = pa.schema([
    pa.field("layer", pa.string(), nullable=False),
    pa.field("channel", pa.int32(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),  # original image size (after EXIF orientation)
    pa.field("height", pa.int32(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),  # the channel's largest activation in the image
    pa.field("position", pa.int32(), nullable=False),  # where: row * map_width + column in the layer's map
])

# patches/top-<layer>.parquet: the dataset's top k images of each channel, with the patch.
PATCHES = pa.schema([
    pa.field("layer", pa.string(), nullable=False),
    pa.field("channel", pa.int32(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),  # 0 = the strongest; ties: smaller id first
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
    pa.field("row", pa.int32(), nullable=False),  # the unit in the layer's map
    pa.field("col", pa.int32(), nullable=False),
    pa.field("x0", pa.int32(), nullable=False),  # its receptive field in original pixels, x1/y1 exclusive
    pa.field("y0", pa.int32(), nullable=False),
    pa.field("x1", pa.int32(), nullable=False),
    pa.field("y1", pa.int32(), nullable=False),
    pa.field("patch", pa.binary()),  # PNG of that box of the original; null if the image can't be read now
])


def pixels(size: int) -> pa.Schema:
    """pixels/*.parquet: one row per image, the model-input crop shrunk to size x size RGB (uint8, CHW)."""
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("pixels", pa.list_(pa.uint8(), 3 * size * size), nullable=False),
    ])


# index/<space>/ids.parquet: FAISS row -> the image it is (row = position; part/offset locate its vector).
INDEX_IDS = pa.schema([
    pa.field("row", pa.int64(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("part", pa.string(), nullable=False),
    pa.field("offset", pa.int32(), nullable=False),
])

# Query results (deepscope query --batch): one row per (query, neighbour).
NEIGHBOURS = pa.schema([
    pa.field("query", pa.string(), nullable=False),  # the query's id, or "#N" for the N-th vector
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("distance", pa.float32(), nullable=False),
])

# deepscope query OUT --images DIR --copies --out RESULT.parquet: each new image against its candidates in OUT (its
# k nearest in every indexed space), copies first; a file that cannot be read is one row with its error and no id.
COPIES = pa.schema([
    pa.field("query", pa.string(), nullable=False),  # the new image's path under DIR
    pa.field("error", pa.string()),  # why it could not be checked (then every other field is null)
    pa.field("id", pa.string()),  # a candidate in OUT
    pa.field("path", pa.string()),
    pa.field("label", pa.string()),
    pa.field("copy", pa.bool_()),  # verified on the thumbnails as the knn stage verifies a pair
    pa.field("tier", pa.string()),  # exact, near-identical, edited (null: not a copy)
    pa.field("why", pa.string()),  # the evidence in words (a copy) or the test that failed, or the first look
    pa.field("features_rank", pa.int32()),  # its rank among the query's nearest in that space (null: not among them)
    pa.field("features_distance", pa.float32()),
    pa.field("pixels_rank", pa.int32()),
    pa.field("pixels_distance", pa.float32()),
    pa.field("mirrored_rank", pa.int32()),  # its rank among the nearest of the query's mirror image, in the pixels space
    pa.field("mirrored_distance", pa.float32()),
    pa.field("sketch", pa.float32()),  # the first look's agreement of the two pixel sketches
    pa.field("inliers", pa.int32()), pa.field("flip", pa.bool_()), pa.field("scale", pa.float32()),
    pa.field("rotation", pa.float32()), pa.field("overlap", pa.float32()), pa.field("differing", pa.float32()),
    pa.field("overlay", pa.float32()),  # as in knn/duplicates.parquet
])

# knn/<space>/part-*.parquet: every image's k nearest neighbours (itself left out), nearest first.
KNN_GRAPH = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("row", pa.int64(), nullable=False),  # the image's row of index/<space>/ids.parquet
    pa.field("neighbor_ids", pa.list_(pa.string()), nullable=False),
    pa.field("neighbor_rows", pa.list_(pa.int64()), nullable=False),
    pa.field("distances", pa.list_(pa.float32()), nullable=False),  # the index's metric (l2, or 1 - cos)
])

# knn/images.parquet: what the graph says about each image.
KNN_IMAGES = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("uniqueness", pa.float32(), nullable=False),  # nearest-weighted neighbour distance / the dataset's median
    pa.field("nearest_id", pa.string()),  # its nearest image by the duplicate distance
    pa.field("nearest_distance", pa.float32()),  # combined duplicate distance (feature x pixel evidence)
    pa.field("group", pa.string()),  # near-duplicate group (the id of its first member), null: none
    pa.field("group_size", pa.int32(), nullable=False),  # 1: no duplicate
    # the kept image this one is a verified copy of (safe to remove); null: keep it (the group's image with
    # the most pixels, then the largest file, then the most duplicate pairs; and any image with no kept partner nor copy at least as large)
    pa.field("duplicate_of", pa.string()),
    pa.field("majority_label", pa.string()),  # the neighbours' most common label
    pa.field("majority_share", pa.float32(), nullable=False),
    pa.field("own_label_share", pa.float32()),  # share of neighbours with the image's own label
    pa.field("label_flagged", pa.bool_(), nullable=False),  # neighbours mostly disagree with its label
])

# knn/duplicates.parquet: the near-duplicate edges under the threshold, with the evidence of each space.
KNN_DUPLICATES = pa.schema([
    pa.field("group", pa.string(), nullable=False),
    pa.field("a", pa.string(), nullable=False),
    pa.field("b", pa.string(), nullable=False),
    pa.field("tier", pa.string(), nullable=False),  # "exact" (same pixel_hash), "near-identical", "edited"
    pa.field("distance", pa.float32(), nullable=False),  # combined feature x pixel distance (the candidates' order)
    pa.field("feature_distance", pa.float32(), nullable=False),
    pa.field("feature_exact", pa.bool_(), nullable=False),  # false: a lower bound (edge found in pixel space only)
    pa.field("pixel_distance", pa.float32()),  # 1 - correlation of pixel signatures; null without pixels
    pa.field("mutual", pa.bool_(), nullable=False),  # each is the other's nearest by the combined distance
    pa.field("sketch", pa.float32()),  # the pixel sketches' best agreement under a small shift, scale or mirror; null: no pixels
    pa.field("verified", pa.bool_(), nullable=False),  # false: not compared on thumbnails (none, or the sketches disagree)
    pa.field("inliers", pa.int32()),  # local-feature matches that agree with one similarity transform
    pa.field("inlier_ratio", pa.float32()),  # inliers / the matches that passed the ratio test
    pa.field("flip", pa.bool_()),  # matched after mirroring b
    pa.field("scale", pa.float32()),  # of the transform b -> a, in thumbnail pixels
    pa.field("rotation", pa.float32()),  # degrees
    pa.field("spread", pa.float32()),  # share of a's picture that the inliers' convex hull covers
    pa.field("overlap", pa.float32()),  # share of each picture the other covers after alignment, the smaller
    pa.field("aligned_correlation", pa.float32()),  # of the aligned, blurred grey images over the cells that agree
    pa.field("explained", pa.float32()),  # share of b's grey variation a's colour curves explain (residuals clipped)
    pa.field("detail", pa.float32()),  # median over a 3 x 3 grid of the fine details' correlation; null: too little detail
    # detail outside the inliers' band, on pairs that pass every other test whose matches fit one overlay's band (a caption
    # or watermark both may carry); null: not measured (the matches spread wider, no keypoint match, too little detail)
    pa.field("detail_outside", pa.float32()),
    # the finest details' (a page's words) correlation, lower quartile over an 8 x 8 grid, measured on pairs that pass
    # every other test; null: not measured (another test failed, not both pages, a thumbnail too coarse, too little detail)
    pa.field("fine", pa.float32()),
    pa.field("differing", pa.float32()),  # share of the overlap's cells that differ once b's colours are fitted to a's
    pa.field("regions", pa.int32()),  # separated groups of differing cells (a moved object leaves two)
    pa.field("overlay", pa.float32()),  # narrower side of the box around the differing cells (share of a side)
    pa.field("colour_shift", pa.float32()),  # largest change of a channel's mean over the agreeing cells (of 255)
    # share of the coloured pixels' channel pairs ordered oppositely (a recoloured look-alike); null: too few coloured pixels
    pa.field("colour_order", pa.float32()),
])

# knn/candidates.parquet: every pair the verification looked at (duplicates.parquet's columns; group and tier
# null when rejected), so that a missed pair can be explained and each piece of evidence measured.
KNN_CANDIDATES = pa.schema([f.with_nullable(True) if f.name in ("group", "tier") else f for f in KNN_DUPLICATES]
                           + [pa.field("accepted", pa.bool_(), nullable=False),
                              # why not a duplicate (null: accepted): "first look: ...", "not verified: ...", or the
                              # verification's try that got furthest and the tests it failed, e.g. "keypoints: overlap, explained"
                              pa.field("rejected_by", pa.string())])

# knn/verified/*.parquet: the evidence of every pair a verification task decided, committed as each task finishes
# (an interrupted knn stage resumes from it; the settings and the code that made it are the stage entry's config).
KNN_VERIFIED = pa.schema(
    [pa.field(f, pa.string(), nullable=False) for f in ("a", "b", "a_hash", "b_hash")]  # ids, and their pixel hashes
    + [pa.field("frames", pa.bool_(), nullable=False),  # the pair could be laid by its frames (its sketches agree enough)
       pa.field("close", pa.bool_(), nullable=False),  # ... only where its layouts correlate closely, if both have keypoints
       pa.field("same", pa.bool_(), nullable=False)]  # the decision
    + [f for f in KNN_DUPLICATES if f.name in ("inliers", "inlier_ratio", "flip", "scale", "rotation", "spread", "overlap",
                                               "aligned_correlation", "explained", "detail", "detail_outside", "fine",
                                               "differing", "regions", "overlay", "colour_shift", "colour_order")]
    + [pa.field("brightness_shift", pa.float32()), pa.field("contrast_ratio", pa.float32()),  # of the colour fit
       pa.field("failed", pa.string(), nullable=False)])  # the tests the furthest try failed ("" when same)

# thumbs/*.parquet: a small encoded picture of every WHOLE image (not the model's crop) and a hash of
# its decoded pixels, made in the decode task (the explorer's gallery and duplicate verification read these).
THUMBS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("thumb", pa.binary(), nullable=False),  # JPEG or WebP, longest side = [thumbs] size
    pa.field("width", pa.int32(), nullable=False),  # the original image's size, after EXIF orientation
    pa.field("height", pa.int32(), nullable=False),
    pa.field("pixel_hash", pa.string(), nullable=False),  # hex blake2b of the decoded RGB and its shape
    pa.field("file_bytes", pa.int64()),  # the original file's size (0: generated; null in parts written before it)
])

# map/coords.parquet: 2-D positions of every image (t-SNE columns null when only PCA ran).
MAP_COORDS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("pca_x", pa.float32(), nullable=False),
    pa.field("pca_y", pa.float32(), nullable=False),
    pa.field("tsne_x", pa.float32()),
    pa.field("tsne_y", pa.float32()),
    pa.field("tsne_sample", pa.bool_()),  # True: embedded by t-SNE; False: placed at its nearest sample point
])


def saliency(map_size: int) -> pa.Schema:
    """saliency/*.parquet: one row per image and method (README: "Saliency", Outputs)."""
    cells = map_size * map_size
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("width", pa.int32(), nullable=False),  # original image size (for boxes and masks)
        pa.field("height", pa.int32(), nullable=False),
        pa.field("method", pa.string(), nullable=False),  # backprop, ..., or smoothgrad(backprop)
        pa.field("target", pa.int32(), nullable=False),  # the class index the map explains
        pa.field("target_name", pa.string()),
        pa.field("pred", pa.int32(), nullable=False),  # the model's top class
        pa.field("score", pa.float32(), nullable=False),  # unnormalized score (logit) of target
        # the map over the model input (centre crop), area-averaged to map_size^2 cells, row-major,
        # scaled so that its peak is 1 (all zeros when no gradient reached the input)
        pa.field("map", pa.list_(pa.float16(), cells), nullable=False),
        pa.field("entropy", pa.float32()),  # at full input resolution; NaN for an all-zero map
        pa.field("top_mass", pa.float32()),  # share of mass in the top 5% pixels
        pa.field("com_x", pa.float32()),  # centre of mass, fractions of the crop's width/height
        pa.field("com_y", pa.float32()),
        pa.field("grabcut", pa.list_(pa.bool_(), cells)),  # GrabCut object mask at map_size (null: off)
        # integrated gradients only (null for other methods and under SmoothGrad): the completeness error
        # |sum of attributions - (score(x) - score(baseline))| / |score(x) - score(baseline)| ...
        pa.field("ig_delta", pa.float32()),
        pa.field("ig_steps", pa.int32()),  # ... at the Gauss-Legendre steps this image's map was computed with
    ])


# saliency_stats/mean_maps.parquet: the mean mass distribution of the maps, all images and per class
SALIENCY_MEAN_MAPS = pa.schema([
    pa.field("method", pa.string(), nullable=False),
    pa.field("group", pa.string(), nullable=False),  # "(all)" or a class (the label, else the target class)
    pa.field("images", pa.int64(), nullable=False),
    pa.field("map", pa.list_(pa.float32()), nullable=False),  # map_size^2 cells summing to 1
    pa.field("com_x", pa.float32()),
    pa.field("com_y", pa.float32()),
    pa.field("centre_mass", pa.float32()),  # mass in the central box of half width and height (uniform: 0.25)
])

# saliency_stats/objects.parquet: saliency mass inside each annotated object (the bias finder)
SALIENCY_OBJECTS = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("group", pa.string(), nullable=False),
    pa.field("method", pa.string(), nullable=False),
    pa.field("truth", pa.string(), nullable=False),  # "box" or "mask"
    pa.field("area", pa.float32()),  # share of the crop the object covers (a uniform map's inside mass)
    pa.field("inside_mass", pa.float32()),  # share of the saliency mass inside the object
    pa.field("lift", pa.float32()),  # inside_mass / area: < 1 looks at the object less than chance
    pa.field("grabcut_iou", pa.float32()),  # IoU of the GrabCut mask with the object (null: GrabCut off)
])

# saliency_stats/classes.parquet: per class, ranked by the saliency mass outside its objects
SALIENCY_CLASSES = pa.schema([
    pa.field("method", pa.string(), nullable=False),
    pa.field("group", pa.string(), nullable=False),
    pa.field("images", pa.int64(), nullable=False),
    pa.field("area", pa.float32()),
    pa.field("inside_mass", pa.float32()),
    pa.field("outside_mass", pa.float32()),
    pa.field("grabcut_iou", pa.float32()),
    pa.field("flagged", pa.bool_(), nullable=False),  # mean inside_mass < mean area: decided off the object
])

# dissect_thresholds/<part>.parquet (network dissection, pass 1): per unit, the partition's largest
# activations (enough to fix the top quantile exactly) and its images of largest maximum
DISSECT_QUANTILE_PARTS = pa.schema([
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("positions", pa.int64(), nullable=False),  # activations seen (images x map positions)
    pa.field("top", pa.list_(pa.float32()), nullable=False),  # largest first
    pa.field("image_ids", pa.list_(pa.string()), nullable=False),  # best images first
    pa.field("image_paths", pa.list_(pa.string()), nullable=False),
    pa.field("image_scores", pa.list_(pa.float32()), nullable=False),  # the unit's maximum in each
])

# dissect_counts/<part>.parquet (pass 2): per unit, pixel counts over the partition, one entry per label number
DISSECT_COUNT_PARTS = pa.schema([
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("intersection", pa.list_(pa.int64()), nullable=False),
    pa.field("union", pa.list_(pa.int64()), nullable=False),
])

# dissection/iou-<layer>.parquet: each unit's best concepts, rank 1 = its label
DISSECTION = pa.schema([
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),  # 1 = best
    pa.field("concept", pa.string(), nullable=False),
    pa.field("label", pa.int32(), nullable=False),  # the concept's number in label.csv
    pa.field("category", pa.string(), nullable=False),
    pa.field("iou", pa.float32(), nullable=False),
    pa.field("intersection", pa.int64(), nullable=False),  # pixels, over the dataset
    pa.field("union", pa.int64(), nullable=False),
    pa.field("threshold", pa.float32(), nullable=False),  # the unit's top-quantile activation T_k
    pa.field("detector", pa.bool_(), nullable=False),  # rank 1 and iou >= the configured minimum
])

# dissection/top-<layer>.parquet: each unit's images of largest maximum activation
DISSECTION_TOP_IMAGES = pa.schema([
    pa.field("layer", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("score", pa.float32(), nullable=False),
])

# stylize/*.parquet and stylized.parquet: one row per stylized image (README: "Style", Bulk stylization).
STYLIZED = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),  # the source image
    pa.field("output", pa.string(), nullable=False),  # the stylized image, relative to the output folder
    pa.field("style", pa.string(), nullable=False),  # the style's name, or blend(a=0.3,b=0.7)
    pa.field("width", pa.int32(), nullable=False),  # of the output image
    pa.field("height", pa.int32(), nullable=False),
    pa.field("bytes", pa.int64(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),  # of the output file
])

# visualize/<part>.parquet: one picture per class or unit (gradient ascent), PNG under visualize/images/
VISUALIZE = pa.schema([
    pa.field("layer", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # "class" or "unit"
    pa.field("target", pa.int32(), nullable=False),  # class index or channel
    pa.field("name", pa.string()),  # class name (classes of a model with names)
    pa.field("image", pa.string(), nullable=False),  # PNG path relative to the output folder
    pa.field("start", pa.float32()),  # target score on the initial image
    pa.field("score", pa.float32()),  # target score on the final 8-bit picture
    pa.field("top1", pa.int32()),  # the model's prediction on the picture
    pa.field("facet", pa.int32()),  # 0..facets-1: pictures of one target made to differ (issue 25)
    pa.field("selectivity", pa.float32()),  # target's mean activation / the layer's mean |activation|
    pa.field("peak", pa.float32()),  # the target channel's largest activation over positions
])

def atlas_samples(dim: int) -> pa.Schema:
    """atlas/<part>.parquet: activation vectors of one layer sampled at random positions of each image."""
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # row * map width + column in the layer's map
        pa.field("vector", pa.list_(pa.float16(), dim), nullable=False),
        pa.field("attribution", pa.float32()),  # a . d logit(class) / da at that position ([atlas] filter_class)
    ])


# atlas/cells.parquet: the atlas's grid cells that hold activations; atlas_cells/<part>.parquet adds their pictures
ATLAS_CELLS = pa.schema([
    pa.field("atlas", pa.string(), nullable=False),  # "all", or "class_<n>" (the class-filtered atlas)
    pa.field("cell", pa.int32(), nullable=False),  # row * grid + column
    pa.field("count", pa.int32(), nullable=False),  # activation vectors in the cell
    pa.field("image", pa.string()),  # PNG path relative to the output folder
    pa.field("loss_start", pa.float32()),  # inversion loss (vector_loss) of the initial picture
    pa.field("loss", pa.float32()),  # ... of the final picture
])


# dream/<part>.parquet: one DeepDream picture per image, PNG under dream/images/
DREAM = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("image", pa.string(), nullable=False),
    pa.field("energy_start", pa.float32()),  # 1/2 ||a||^2 at the layer, model input before and after
    pa.field("energy_end", pa.float32()),
])

# invert/<part>.parquet: one reconstruction per (image, layer), PNG under invert/images/
INVERT = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("image", pa.string(), nullable=False),
    pa.field("feature_error", pa.float32()),  # ||phi(x*) - phi0||^2 / ||phi0||^2
    pa.field("pixel_rmse", pa.float32()),  # RMS difference to the model input, pixels in [0, 1]
])


def robustness(n_eps: int) -> pa.Schema:
    """robustness/<part>.parquet: per image, the smallest listed eps that changes its prediction."""
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("pred", pa.int32(), nullable=False),  # clean prediction
        pa.field("margin", pa.float32()),  # clean top-1 minus top-2 logit
        pa.field("min_eps", pa.float32()),  # null: no listed eps changed it
        pa.field("adv_pred", pa.int32()),  # prediction at min_eps (null: none)
        pa.field("changed", pa.list_(pa.bool_(), n_eps)),  # per listed eps (ascending): min_eps <= eps
        pa.field("adversarial", pa.string()),  # PNG at min_eps, relative to the output folder (null: none)
        pa.field("universal_pred", pa.int32()),  # prediction with the universal perturbation (null: off)
    ])


# robustness_classes.parquet: share of images changed at each eps, per class
ROBUSTNESS_CLASSES = pa.schema([
    pa.field("group", pa.string(), nullable=False),  # "(all)", the label, else the clean class name
    pa.field("images", pa.int64(), nullable=False),
    pa.field("eps", pa.list_(pa.float32()), nullable=False),
    pa.field("changed_share", pa.list_(pa.float32()), nullable=False),
    pa.field("universal_share", pa.float32()),  # share flipped by the universal perturbation (null: off)
])
