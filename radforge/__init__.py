"""radforge: hospital CT/MRI archives -> MDS datasets -> radiology foundation models (Curia-2 recipe).

One import namespace. The pipeline's stages are subpackages (their folders sit at the top of the
repository, where the design names them):

- :mod:`radforge.ingest`: archives -> series -> HU/windowed, de-identified slices (Ray Data);
- :mod:`radforge.sharder`: MDS shards and the dataset catalog, written exactly once;
- :mod:`radforge.trainer`: the self-supervised ViT trainer and frozen-feature evaluation;
- :mod:`radforge.services`: the control plane (API, jobs, scheduler, dashboard).

What every stage shares has a module of its own here: :mod:`radforge.storage` (fsspec locations,
atomic writes), :mod:`radforge.config` (layered pydantic configs), :mod:`radforge.runtime` (the
Ray connection), :mod:`radforge.windowing` (CT/MR window presets and maths),
:mod:`radforge.synthetic` (phantoms and archives) and :mod:`radforge.cli` (the ``radforge``
command). Layers (``make lint`` checks them): core <- sharder <- ingest, trainer <- services.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("radforge")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
