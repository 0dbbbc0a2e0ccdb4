"""Layer 2: bytes of the format: chunk encodings, downsampling kernels, the sharded format (write and read)."""
