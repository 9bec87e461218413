"""Data layer: raw datasets -> canonical Arrow tables -> samples -> prompts."""
