"""Datasets: Revisited Oxford/Paris, R1M distractors, SfM-120k/30k, and their download.

All dataset classes take a ``root`` directory that holds one sub-directory per dataset
(``root/roxford5k``, ``root/rparis6k``, ``root/revisitop1m``, ``root/retrieval-SfM-120k``),
which is what :func:`download_dataset` creates. Pickled files are read with a restricted
unpickler (no code is ever run from them).
"""

from .datasets import (
    DATASETS,
    DatasetInfo,
    RemoteFile,
    download_dataset,
    extract_archive,
    list_datasets,
)
from .revisited import REVISITED_NAMES, RevisitedDataset, r1m_image_list
from .sfm120k import SFM_NAMES, SfM120k, SfMSplit, cid_to_path, load_sfm_db

__all__ = [
    "DATASETS", "REVISITED_NAMES", "SFM_NAMES", "DatasetInfo", "RemoteFile", "RevisitedDataset",
    "SfM120k", "SfMSplit", "cid_to_path", "download_dataset", "extract_archive", "list_datasets",
    "load_sfm_db", "r1m_image_list",
]
