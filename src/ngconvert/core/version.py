"""The package version (one place: the CLI and ``ngconvert.__version__`` read it)."""
__version__ = "0.1.0"
