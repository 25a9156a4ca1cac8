"""deepscope: the "visualizing and understanding CNNs" toolbox as dataset-scale Ray jobs."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deepscope")  # the installed package's, so a wheel and its metadata agree
except PackageNotFoundError:  # run from a checkout without installing
    __version__ = "0.0.0+checkout"
