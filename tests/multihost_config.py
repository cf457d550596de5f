"""The tiny training setup shared by the one- and two-process runs of the multi-host test."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from caco_jax.configs import demo


def config(data_dir: str):
    c = demo.get_config()
    c.model.arch = "tiny"
    c.model.dropout = 0.0
    c.data.synthetic_images = 0
    c.data.data_dir = str(data_dir)
    c.data.build_size = 48
    c.data.image_size = 32
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_epochs = 1
    c.log_every_steps = 1
    c.progress_bar = False
    c.optimizer.learning_rate = 1e-3
    return c
