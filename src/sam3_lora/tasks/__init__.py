"""Tasks: SAM3 concept (text/box prompts) and, later, SAM2 promptable segmentation; models + losses."""
