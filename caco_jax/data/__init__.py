"""HAM10000 data: TFDS builder, splits, grain pipeline, augmentation, synthetic data."""
