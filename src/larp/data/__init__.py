"""Datasets: acquisition (``ucf101``, ``embedded``), the video index, frame extraction and clips."""

from larp.data.extract import extract_frames
from larp.data.index import COLUMNS, build_index, read_class_ind, read_index, write_index
from larp.data.ucf101 import download_ucf101

__all__ = ["COLUMNS", "build_index", "download_ucf101", "extract_frames", "read_class_ind", "read_index",
           "write_index"]
