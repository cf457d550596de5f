"""Train and evaluate MobileNetV3-CaCo.

    python scripts/train.py --config configs/caco.py --workdir runs/caco \
        [--config.data.manual_dir=/path/to/HAM10000] [--config.key=value ...]

Rerunning with the same --workdir resumes from its latest checkpoint.
"""
from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # makes configs/ importable

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from caco_jax import compile_cache  # noqa: E402
from caco_jax.train import train_and_evaluate  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/caco.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, report); default runs/<config>")
_CACHE = flags.DEFINE_string("compile_cache", None, "persistent XLA compilation cache directory, or 'off' "
                             f"(default: ${compile_cache.ENV} or {compile_cache.default_dir()})")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and grain are chatty at INFO
    compile_cache.enable(_CACHE.value)
    config = _CONFIG.value
    config_file = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
    workdir = _WORKDIR.value or f"runs/{pathlib.Path(config_file).stem}"
    result = train_and_evaluate(config, workdir)
    if result["status"] == "finished" and result["paths"]:
        print(f"report: {result['paths']['md']}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
