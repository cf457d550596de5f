"""A run directory on disk: its saved config, the data it points at, weights directories and loading."""
