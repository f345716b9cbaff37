"""Tiny pretrained models, shipped as the package data ``sam3_lora.assets``."""
