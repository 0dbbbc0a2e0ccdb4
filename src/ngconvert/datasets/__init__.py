"""Layer 8: whole datasets after they are written: check, stats, re-encode, transfer, preview."""
