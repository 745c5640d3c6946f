"""Explain whole datasets on Ray Data: ``gradeclip explain-dataset`` and its Python API.

``pip install "captum-gradeclip[scale]"`` installs Ray Data and pyarrow. The pieces, one per module:

* :mod:`~captum_gradeclip.scale.sources`: listing a folder, a CSV/Parquet table or webdataset shards;
* :mod:`~captum_gradeclip.scale.workers`: the decoding tasks and the model actors;
* :mod:`~captum_gradeclip.scale.store`: the output folder (atomic Parquet parts, manifest, errors file);
* :mod:`~captum_gradeclip.scale.job`: the driver, :func:`explain_dataset`.
"""

from .job import DatasetSummary, ModelSpec, explain_dataset, require_scale_packages
from .sources import Item, SourceError, list_source
from .store import OutputFolderError, read_results

__all__ = ["DatasetSummary", "Item", "ModelSpec", "OutputFolderError", "SourceError", "explain_dataset",
           "list_source", "read_results", "require_scale_packages"]
