"""Config presets, shipped as the package data ``sam3_lora.presets``."""
