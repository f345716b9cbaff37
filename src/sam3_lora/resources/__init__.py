"""Text resources: the hard-negative vocabulary."""
