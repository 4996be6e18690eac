"""Macaque reference values the analysis compares with (DESIGN §7), each with its source and verification status.

``verified`` is False where the number was taken from the MT paper (seed 001) or from DESIGN.md and has not yet been
checked against the primary paper by this project. Keep it that way until someone has read the paper.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

__all__ = ["Reference", "MT_REFERENCES", "V1_REFERENCES", "SOURCES", "references_for"]

SOURCES: Dict[str, str] = {
    "seed001": "Gu, Li, Su, Liu, Qian & Wang (2026). Self-organized MT direction maps emerge from spatiotemporal "
               "contrastive optimization. arXiv:2605.11718 (Fig. 2 and Fig. 4 captions).",
    "malonek1994": "Malonek, Tootell & Grinvald (1994). Optical imaging reveals the functional architecture of "
                   "neurons processing shape and motion in owl monkey area MT. Proc. R. Soc. B 258:109-119. "
                   "doi:10.1098/rspb.1994.0150",
    "kaschube2010": "Kaschube et al. (2010). Universality in the evolution of orientation columns in the visual "
                    "cortex. Science 330:1113-1116. doi:10.1126/science.1194869",
    "albright1984": "Albright (1984). Direction and orientation selectivity of neurons in visual area MT of the "
                    "macaque. J. Neurophysiol. 52:1106-1130. doi:10.1152/jn.1984.52.6.1106",
    "britten1992": "Britten, Shadlen, Newsome & Movshon (1992). The analysis of visual motion: a comparison of "
                   "neuronal and psychophysical performance. J. Neurosci. 12:4745-4765. "
                   "doi:10.1523/JNEUROSCI.12-12-04745.1992",
    "maunsell1983": "Maunsell & Van Essen (1983). Functional properties of neurons in middle temporal visual area "
                    "of the macaque monkey. I. Selectivity for stimulus direction, speed, and orientation. "
                    "J. Neurophysiol. 49:1127-1147. doi:10.1152/jn.1983.49.5.1127",
    "nakhla2021": "Nakhla, Korkian, Krause & Pack (2021). Neural selectivity for visual motion in macaque area V3A. "
                  "eNeuro 8(1). doi:10.1523/ENEURO.0383-20.2020",
    "ringach2002": "Ringach, Shapley & Hawken (2002). Orientation selectivity in macaque V1: diversity and laminar "
                   "dependence. J. Neurosci. 22:5639-5651.",
}


@dataclass(frozen=True)
class Reference:
    """One macaque reference: ``value`` (a number) or ``band`` (lo, hi), or neither (qualitative only)."""

    metric: str              # key in the analysis summary it is compared with
    label: str
    value: Optional[float]
    band: Optional[Tuple[float, float]]
    text: str                # how the report states the reference
    sources: Tuple[str, ...]
    verified: bool
    note: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["citations"] = [SOURCES[s] for s in self.sources]
        return d

    def lines(self):
        """Values to draw as reference lines in the figures."""
        if self.value is not None:
            return [self.value]
        if self.band is not None:
            return list(self.band)
        return []


MT_REFERENCES: Tuple[Reference, ...] = (
    Reference("pinwheel_density_per_mm2", "pinwheel density (mm⁻²)", 4.9, None, "≈ 4.9 mm⁻²",
              ("seed001", "malonek1994", "kaschube2010"), False,
              "seed 001 estimates it as π/Λ² with Λ ≈ 0.8 mm (π/0.64 = 4.91); Malonek et al. imaged owl monkey, "
              "not macaque, MT; Λ ≈ 0.8 mm still to be checked in the primary paper"),
    Reference("selective_fraction", "direction-selective fraction", None, (0.5, 1.0), "most cells (> 0.5)",
              ("albright1984", "britten1992", "maunsell1983"), False,
              "qualitative ('most MT cells are direction-selective'); the exact fraction and DSI criterion of each "
              "study still to be extracted"),
    Reference("median_fwhm_deg", "direction tuning FWHM (°)", None, (80.0, 100.0), "≈ 80-100°",
              ("albright1984", "britten1992", "maunsell1983"), False,
              "range quoted in DESIGN §7; the studies' bandwidth definitions (FWHM of a fitted Gaussian / von "
              "Mises) to be checked"),
    Reference("median_dsi", "median DSI", None, None, "used in seed 001 Fig. 2F; value not yet extracted",
              ("seed001", "nakhla2021", "albright1984", "britten1992"), False,
              "seed 001 draws macaque baselines from refs [24, 3, 4]; the numbers are not given in the captions"),
    Reference("median_circular_variance", "median circular variance", None, None,
              "used in seed 001 Fig. 2E; value not yet extracted",
              ("seed001", "nakhla2021", "albright1984", "britten1992"), False,
              "as for the DSI"),
    Reference("density_per_spacing2", "pinwheels per Λ²", math.pi, None, "π ≈ 3.14 per Λ² (orientation maps)",
              ("kaschube2010",), False,
              "universal value for V1 orientation maps; for MT direction maps it is an assumption of seed 001"),
)

V1_REFERENCES: Tuple[Reference, ...] = (
    Reference("median_circular_variance", "median orientation CV", 0.605, None, "0.605",
              ("ringach2002",), False, "CV of the doubled-angle vector sum; to be checked against the paper"),
    Reference("fraction_cv_below_0.6", "fraction with CV < 0.6", 0.497, None, "49.7 %",
              ("ringach2002",), False, "to be checked against the paper"),
    Reference("density_per_spacing2", "orientation pinwheels per Λ²", math.pi, None, "π ≈ 3.14",
              ("kaschube2010",), False, "to be checked against the paper (reported as 3.14 ± small spread)"),
)


def references_for(kind: str) -> Tuple[Reference, ...]:
    """``"direction"`` (MT) or ``"orientation"`` (V1)."""
    if kind == "direction":
        return MT_REFERENCES
    if kind == "orientation":
        return V1_REFERENCES
    raise ValueError(f"kind must be 'direction' or 'orientation', got {kind!r}")
