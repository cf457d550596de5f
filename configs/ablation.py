"""The paper's ablations as overrides of the default recipe, chosen by argument:

    --config configs/ablation.py:attention=cbam          (Table 5: se, cbam, seco, eca, caco)
    --config configs/ablation.py:loss=focal               (Table 4: ce, focal, ldam, joint)
    --config configs/ablation.py:attention=se,pretrained=0  (Table 2: no pretraining)

Arguments are comma-separated key=value pairs among attention, loss, pretrained.
"""

from caco_jax.configs import default

_ALLOWED = {"attention", "loss", "pretrained"}


def get_config(arg: str | None = None):
    c = default.get_config()
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in _ALLOWED:
            raise ValueError(f"unknown ablation argument {key!r} in {arg!r}; expected one of {sorted(_ALLOWED)}")
        if key == "attention":
            c.model.attention = value
        elif key == "loss":
            c.loss.name = value
        elif value in ("0", "false", "False", "off"):
            c.model.pretrained = ""
    return c
