"""Layer 5: what to write: the layer spec, the pyramid of scales, and the stages of tasks."""
