"""ngconvert: volumes, label masks and meshes to Neuroglancer precomputed datasets."""
from .convert import ConvertOptions, ConvertResult, convert, write_volume
from .errors import UserError
from .spec import LayerSpec

__all__ = ["ConvertOptions", "ConvertResult", "LayerSpec", "UserError", "convert", "write_volume"]
__version__ = "0.1.0"
