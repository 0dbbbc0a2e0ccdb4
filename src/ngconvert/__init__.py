"""ngconvert: volumes, label masks and meshes to Neuroglancer precomputed datasets."""
from .assemble import Assembly, assemble
from .convert import ConvertOptions, ConvertResult, convert, write_segmentation, write_volume
from .errors import UserError
from .labels import LabelTable, read_labels
from .spec import LayerSpec
from .store import StorageOptions, open_store
from .transfer import copy_dataset, download, upload

__all__ = ["Assembly", "ConvertOptions", "ConvertResult", "LabelTable", "LayerSpec", "StorageOptions", "UserError",
           "assemble", "convert", "copy_dataset", "download", "open_store", "read_labels", "upload",
           "write_segmentation", "write_volume"]
__version__ = "0.1.0"
