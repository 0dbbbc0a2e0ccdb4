"""ngconvert: volumes, label masks and meshes to Neuroglancer precomputed datasets."""
from .assemble import Assembly, assemble
from .check import check
from .convert import ConvertOptions, ConvertResult, convert, split_structures, write_segmentation, write_volume
from .errors import UserError
from .labels import LabelTable, read_labels
from .meshing import MeshOptions, mesh_layer
from .mesh_import import import_meshes
from .preview import preview, preview_layout   # light: numpy and Pillow are imported when called
from .reencode import ReencodeOptions, reencode
from .spec import LayerSpec
from .store import StorageOptions, open_store
from .transfer import copy_dataset, download, upload

__all__ = ["Assembly", "ConvertOptions", "ConvertResult", "LabelTable", "LayerSpec", "MeshOptions", "ReencodeOptions",
           "StorageOptions", "UserError", "assemble", "check", "convert", "copy_dataset", "download",
           "import_meshes", "mesh_layer", "open_store", "preview", "preview_layout", "read_labels", "reencode", "split_structures", "upload", "write_segmentation",
           "write_volume"]
__version__ = "0.1.0"
