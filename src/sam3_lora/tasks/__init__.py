"""Tasks: models + losses. ``concept``: SAM3 text/box prompts; SAM2 prompt task goes beside it."""
