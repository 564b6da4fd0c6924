"""The prediction server: the same code runs in `mlship serve` and inside every image."""
