"""Layer 0: what every layer uses: errors, geometry (boxes and chunk grids), fingerprints, gzip, the JSON writer, the version."""
