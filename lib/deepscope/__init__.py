"""deepscope: the "visualizing and understanding CNNs" toolbox as dataset-scale Ray jobs."""
__version__ = "0.1.0"
