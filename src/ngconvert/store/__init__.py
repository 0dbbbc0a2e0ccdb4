"""Layer 1: where bytes live: the Store interface, local, memory, S3, GCS and HTTP stores, retries, and the destination (scratch, locks, publishing)."""
from .base import StorageOptions
from .open import open_store

__all__ = ["StorageOptions", "open_store"]
