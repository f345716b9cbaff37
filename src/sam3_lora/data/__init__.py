"""Data: read, convert, validate and synthesize datasets; everything becomes COCO first."""
