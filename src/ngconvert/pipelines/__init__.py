"""Layer 9: the conversions end to end: convert, assemble, the slice workflow, examples."""
