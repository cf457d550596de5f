"""The benchmark harness of ``caco-jax benchmark`` (caco_jax/cli/benchmark.py), split by concern.

* :mod:`.options` -- the options: one dataclass whose fields carry their help text; the
  command line is generated from it;
* :mod:`.timing` -- windows, shared rounds, rate / latency / paired-ratio statistics;
* :mod:`.jax_steps` -- caco-jax rows: the trainer's jitted steps from
  ``caco_jax.training.steps.build_steps`` (train, eval, predict), per variant x dtype x depthwise;
* :mod:`.torch_baseline` -- torchvision ``mobilenet_v3_small`` rows (eager, channels_last
  bf16, ``torch.compile``), timed in the same rounds as caco-jax's;
* :mod:`.pipeline` -- the grain pipeline feeding the train step, against synthetic input;
* :mod:`.dispatch` -- per-call cost of ``nnx.jit`` / ``nnx.cached_partial`` / our step;
* :mod:`.report` -- device and versions, ratios, the issues' targets, the markdown tables;
* :mod:`.run` -- the driver (every measurement in order, the JSON) and ``main``.
"""
