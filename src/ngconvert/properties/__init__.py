"""Layer 3: what segments are called and look like: label tables and their files, segment properties."""
