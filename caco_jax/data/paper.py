"""The paper's reported figures (Shi, Fang, Luo & Liu 2023, HAM10000 test split), in one place: the
``ham10000`` dataset entry carries them (``caco_jax.data.registry``), so a report compares a run with
them only on that dataset.

Tables 2 (SE, with and without ImageNet pretraining), 4 (CaCo with each loss) and 5
(the attention ablation, trained with cross-entropy as its text says). BACC is the
paper's own figure; it defines BACC as (sensitivity + specificity) / 2, which its
numbers do not obviously follow. The paper does not say how it counted parameters.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PaperRow:
    accuracy: float  # %
    bacc: float  # %
    params_m: float  # millions, as printed
    table: str


# (attention, loss, ImageNet-pretrained) -> the paper's row.
RESULTS: dict[tuple[str, str, bool], PaperRow] = {
    ("se", "ce", False): PaperRow(87.17, 73.71, 2.18, "Table 2"),
    ("se", "ce", True): PaperRow(90.88, 83.44, 2.18, "Table 2"),
    ("caco", "ce", True): PaperRow(91.78, 85.70, 2.29, "Table 4"),
    ("caco", "focal", True): PaperRow(91.98, 85.74, 2.29, "Table 4"),
    ("caco", "ldam", True): PaperRow(91.78, 86.31, 2.29, "Table 4"),
    ("caco", "joint", True): PaperRow(93.39, 86.35, 2.29, "Tables 4 and 5"),
    ("cbam", "ce", True): PaperRow(91.48, 85.72, 2.20, "Table 5"),
    ("seco", "ce", True): PaperRow(89.68, 78.70, 2.64, "Table 5"),
    ("eca", "ce", True): PaperRow(90.98, 82.64, 2.08, "Table 5"),
}


def row(attention: str, loss: str, pretrained: bool = True) -> PaperRow | None:
    """The paper's figures for this configuration, if it reports one."""
    return RESULTS.get((attention, loss, pretrained))


def params_m(attention: str) -> float | None:
    """The parameter count (millions) the paper prints for an attention variant."""
    return next((r.params_m for (a, _, _), r in RESULTS.items() if a == attention), None)
