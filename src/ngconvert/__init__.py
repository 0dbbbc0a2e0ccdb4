"""ngconvert: volumes, label masks and meshes to Neuroglancer precomputed datasets."""
from .pipelines.assemble import Assembly, assemble
from .datasets.check import check
from .pipelines.convert import ConvertOptions, ConvertResult, convert, split_structures, write_segmentation, write_volume
from .core.errors import UserError
from .properties.labels import LabelTable, read_labels
from .meshes.meshing import MeshOptions, mesh_layer
from .meshes.importing import import_meshes
from .datasets.preview import preview, preview_layout   # light: numpy and Pillow are imported when called
from .datasets.reencode import ReencodeOptions, reencode
from .plan.spec import LayerSpec
from .store.base import StorageOptions
from .store.open import open_store
from .datasets.transfer import copy_dataset, download, upload

__all__ = ["Assembly", "ConvertOptions", "ConvertResult", "LabelTable", "LayerSpec", "MeshOptions", "ReencodeOptions",
           "StorageOptions", "UserError", "assemble", "check", "convert", "copy_dataset", "download",
           "import_meshes", "mesh_layer", "open_store", "preview", "preview_layout", "read_labels", "reencode", "split_structures", "upload", "write_segmentation",
           "write_volume"]
from .core.version import __version__
