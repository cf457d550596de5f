"""HAM10000 data: TFDS builder, splits, grain pipeline, augmentation, synthetic data.

Modules (import what you need; nothing heavy is imported here):
    layouts, metadata  find images and metadata tables in any official layout
    ham10000           the TFDS builder and `prepare(manual_dir, data_dir, ...)`
    splits             seeded stratified train/validation/test (by lesion or image)
    pipeline           `open_splits`, `train_iterator`, `eval_iterator` (grain, CPU side)
    augment            `augment_batch`, `normalize` (JAX, inside the jitted step)
    images             JPEG decode/resize helpers (PIL)
    synthetic          HAM10000-like synthetic manual_dir for tests and the demo
    errors             the exceptions raised for bad user data
"""
