"""The registry of stages: a job-file section `[name]` runs the stage of that name.

Adding a stage: one file here (plus its algorithm in algos/) and one line below.
"""
from deepscope.stages.features import Features

STAGES = {cls.name: cls for cls in (Features,)}
