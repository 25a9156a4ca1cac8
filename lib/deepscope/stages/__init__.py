"""The registry of stages: a job-file section `[name]` runs the stage of that name.

Adding a stage: one file here (plus its algorithm in algos/) and one line below.
"""
from deepscope.stages.features import Features
from deepscope.stages.index import Index
from deepscope.stages.knn import Knn
from deepscope.stages.map import Map
from deepscope.stages.pixels import Pixels
from deepscope.stages.patches import Patches
from deepscope.stages.saliency import Saliency
from deepscope.stages.dissect import Dissect
from deepscope.stages.stylize import Stylize
from deepscope.stages.dream import Dream
from deepscope.stages.invert import Invert
from deepscope.stages.robustness import Robustness
from deepscope.stages.visualize import Visualize
from deepscope.stages.atlas import Atlas

STAGES = {cls.name: cls for cls in (Features, Pixels, Index, Knn, Map, Patches, Saliency, Dissect, Stylize, Dream, Invert, Robustness, Visualize, Atlas,)}
