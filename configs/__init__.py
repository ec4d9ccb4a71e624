"""The presets, shipped inside the package as `dedup.presets` (pyproject maps this folder there)."""
