"""Zero-download demo: synthetic HAM10000-like data, the real MobileNetV3-CaCo, a few epochs.

    python scripts/train.py --config configs/demo.py --workdir runs/demo

Runs on a laptop CPU in a few minutes and writes the full report (report.md,
confusion matrix, curves) to the workdir. No pretrained weights, no download.
"""

from caco_jax.configs import default


def get_config():
    c = default.get_config()
    c.model.pretrained = ""
    c.model.bn_momentum = 0.1  # ~100 steps: the running statistics must catch up quickly
    c.optimizer.learning_rate = 2e-3
    c.data.synthetic_images = 700
    c.data.build_size = 96
    c.data.image_size = 64
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 8
    c.log_every_steps = 5
    return c
