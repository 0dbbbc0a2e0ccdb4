"""ngconvert: volumes, label masks and meshes to Neuroglancer precomputed datasets."""
from .convert import ConvertOptions, ConvertResult, convert, write_volume
from .errors import UserError
from .spec import LayerSpec
from .store import StorageOptions, open_store
from .transfer import copy_dataset, download, upload

__all__ = ["ConvertOptions", "ConvertResult", "LayerSpec", "StorageOptions", "UserError", "convert",
           "copy_dataset", "download", "open_store", "upload", "write_volume"]
__version__ = "0.1.0"
