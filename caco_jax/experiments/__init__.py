"""Reproduction grids: named presets of training runs, their runner and their result tables."""
