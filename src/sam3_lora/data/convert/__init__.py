"""Converters: one module per foreign annotation format, each writing COCO via ``CocoWriter``."""
