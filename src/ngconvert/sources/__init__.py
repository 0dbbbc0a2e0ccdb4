"""Layer 4: reading volumes: source references, array, NIfTI, slice and TIFF readers, and precomputed datasets (info and chunks)."""
