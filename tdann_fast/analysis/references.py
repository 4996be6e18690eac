"""Macaque reference values the analysis compares with (DESIGN §7), each with its source, definition and status.

Fields of :class:`Reference` that matter when reading a comparison:

* ``verified`` is True only where this project read the number *and* its definition in the paper's own text
  (full text or abstract). Numbers taken from seed 001, from DESIGN.md or from secondary sources stay False, and
  ``note`` says where they came from and what is left to check.
* ``definition`` is how the source defines the statistic (formula, criterion, spontaneous-rate handling), as far
  as it is known; an empty or partial definition means it has not been extracted yet.
* ``comparable`` is True only where the model's metric (``tuning.py``: DSI = 1 - R_null/R_pref on time-mean
  rectified activations, CV = 1 - |Σ r e^{iφ}| / Σ r, von Mises FWHM, selective = DSI >= 0.5) is defined the same
  way as the reference's, so that a side-by-side number means something.
* ``map_metric`` marks map statistics (pinwheel density, density per Λ², column spacing): a report sets them beside
  the model only when a map is detected (DESIGN §7).
* ``statistic`` says what the number summarises: "median", "mean", "fraction" or "value".

Search record: the MT tuning numbers (DSI, CV, bandwidth, selective fraction) could not be found in any retrievable
text of the primary papers (only abstracts, or the first lines of them), so those references carry no value, or
the DESIGN §7 range marked unverified. The V1 numbers of Ringach et
al. (2002) were reproduced exactly from the authors' released per-cell database; they are still marked unverified
because the paper's text itself was not read.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

__all__ = ["Reference", "MT_REFERENCES", "V1_REFERENCES", "SOURCES", "references_for",
           "reference_table_markdown"]

SOURCES: Dict[str, str] = {
    "seed001": "Gu, Li, Su, Liu, Qian & Wang (2026). Self-organized MT direction maps emerge from spatiotemporal "
               "contrastive optimization. arXiv:2605.11718 (Fig. 2 and Fig. 4 captions).",
    "malonek1994": "Malonek, Tootell & Grinvald (1994). Optical imaging reveals the functional architecture of "
                   "neurons processing shape and motion in owl monkey area MT. Proc. R. Soc. B 258:109-119. "
                   "doi:10.1098/rspb.1994.0150",
    "kaschube2010": "Kaschube et al. (2010). Universality in the evolution of orientation columns in the visual "
                    "cortex. Science 330:1113-1116. doi:10.1126/science.1194869",
    "miller2010": "Miller (2010). π = visual cortex (Perspective on Kaschube et al. 2010). Science 330:1059-1060. "
                  "doi:10.1126/science.1198857",
    "albright1984": "Albright (1984). Direction and orientation selectivity of neurons in visual area MT of the "
                    "macaque. J. Neurophysiol. 52:1106-1130. doi:10.1152/jn.1984.52.6.1106",
    "albright1984columns": "Albright, Desimone & Gross (1984). Columnar organization of directionally selective "
                           "cells in visual area MT of the macaque. J. Neurophysiol. 51:16-31. "
                           "doi:10.1152/jn.1984.51.1.16",
    "britten1992": "Britten, Shadlen, Newsome & Movshon (1992). The analysis of visual motion: a comparison of "
                   "neuronal and psychophysical performance. J. Neurosci. 12:4745-4765. "
                   "doi:10.1523/JNEUROSCI.12-12-04745.1992",
    "britten1998": "Britten & Newsome (1998). Tuning bandwidths for near-threshold stimuli in area MT. "
                   "J. Neurophysiol. 80:762-770. doi:10.1152/jn.1998.80.2.762",
    "maunsell1983": "Maunsell & Van Essen (1983). Functional properties of neurons in middle temporal visual area "
                    "of the macaque monkey. I. Selectivity for stimulus direction, speed, and orientation. "
                    "J. Neurophysiol. 49:1127-1147. doi:10.1152/jn.1983.49.5.1127",
    "snowden1992": "Snowden, Treue & Andersen (1992). The response of neurons in areas V1 and MT of the alert rhesus "
                   "monkey to moving random dot patterns. Exp. Brain Res. (volume, pages and DOI to verify).",
    "lagae1993": "Lagae, Raiguel & Orban (1993). Speed and direction selectivity of macaque middle temporal neurons. "
                 "J. Neurophysiol. 69:19-39. doi:10.1152/jn.1993.69.1.19",
    "wang2016": "Wang & Movshon (2016). Properties of pattern and component direction-selective cells in area MT of "
                "the macaque. J. Neurophysiol. (2016), pp. 2705-2720 (volume and DOI to verify).",
    "nakhla2021": "Nakhla, Korkian, Krause & Pack (2021). Neural selectivity for visual motion in macaque area V3A. "
                  "eNeuro 8(1). doi:10.1523/ENEURO.0383-20.2020",
    "ringach2002": "Ringach, Shapley & Hawken (2002). Orientation selectivity in macaque V1: diversity and laminar "
                   "dependence. J. Neurosci. 22:5639-5651. doi:10.1523/JNEUROSCI.22-13-05639.2002",
    "ringach2002db": "Ringach et al. (2002) per-cell database (ringach_2002_db.mat, 308 V1 cells; fields orivar, "
                     "bw, po, spont, ...), released by the authors and redistributed in "
                     "github.com/neuroailab/TDANN (spacetorch/datasets/ringach_2002_db.mat).",
}

#: Allowed values of :attr:`Reference.statistic`.
STATISTICS = ("median", "mean", "fraction", "value")


@dataclass(frozen=True)
class Reference:
    """One macaque reference: ``value`` (a number) or ``band`` (lo, hi), or neither (not found / qualitative)."""

    metric: str              # key in the analysis summary it is compared with
    label: str
    value: Optional[float]
    band: Optional[Tuple[float, float]]
    text: str                # how the report states the reference
    sources: Tuple[str, ...]
    verified: bool           # number AND definition read in the paper's own text
    note: str = ""           # provenance: where the number was read, what is left to check
    definition: str = ""     # the source's definition (formula, criterion, spontaneous-rate handling)
    comparable: bool = False  # the model's metric is defined the same way (see the module docstring)
    map_metric: bool = False  # a map statistic: shown only when a map is detected
    statistic: str = ""      # "median", "mean", "fraction" or "value"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["band"] = list(self.band) if self.band is not None else None
        d["sources"] = list(self.sources)
        d["citations"] = [SOURCES[s] for s in self.sources]
        return d

    def lines(self):
        """Values to draw as reference lines in the figures."""
        if self.value is not None:
            return [self.value]
        if self.band is not None:
            return list(self.band)
        return []


_MODEL_DSI_NOTE = ("The model's DSI is 1 - R_null/R_pref; a normalised index x = (p - n)/(p + n) maps to it by "
                   "DSI = 2x/(1 + x), which is monotonic, so a median converts exactly but a mean does not.")

MT_REFERENCES: Tuple[Reference, ...] = (
    Reference(
        "pinwheel_density_per_mm2", "pinwheel density (mm⁻²)", 4.9, None, "≈ 4.9 mm⁻² (seed 001 estimate)",
        ("seed001", "malonek1994", "kaschube2010"), False,
        note="The number is read in seed 001's Fig. 4B caption ('~4.9 mm^-2 estimated from [1, 16]'), which does "
             "not say how it was derived; it is read as π/Λ² with Λ ≈ 0.8 mm (π/0.64 = 4.91). The "
             "Malonek et al. abstract (PubMed 7838851, read at https://www.ncbi.nlm.nih.gov/pubmed/7838851) "
             "describes owl-monkey (not macaque) MT direction maps that do not cover all of MT and gives no "
             "density or spacing; Kaschube et al. measured V1 orientation maps. To verify against the primary "
             "papers. A density per mm² also depends on the smoothing σ of the map.",
        definition="Pinwheel centres (±1 singularities of the direction map) per mm² of cortex; derivation not "
                   "stated by seed 001 (assuming π/Λ² with Λ ≈ 0.8 mm).",
        comparable=False, map_metric=True, statistic="value"),
    Reference(
        "spacing_mm", "direction column spacing Λ (mm)", None, None,
        "not found (seed 001's 4.9 mm⁻² implies Λ ≈ 0.8 mm if density = π/Λ²)",
        ("albright1984columns", "malonek1994", "seed001"), False,
        note="No spacing number was found in retrievable text: the Malonek et al. 1994 abstract gives none, and "
             "the Albright, Desimone & Gross 1984 abstract (columns of direction-selective cells in macaque MT) "
             "could not be retrieved. The 0.8 mm figure is a back-calculation from seed 001's density, "
             "so it is circular and is not used as a value. To extract from the primary papers.",
        definition="Period Λ of the direction map (for the model: from the peak of the radial power spectrum of "
                   "the smoothed vector field); the papers' estimator is not known.",
        comparable=False, map_metric=True, statistic="value"),
    Reference(
        "density_per_spacing2", "pinwheels per Λ²", math.pi, None,
        "π ≈ 3.14 per Λ² (V1 orientation maps; assumed for MT)",
        ("kaschube2010", "miller2010"), False,
        note="The Kaschube et al. abstract (PubMed 21051599, read at https://pubmed.ncbi.nlm.nih.gov/21051599/) "
             "gives no number. Secondary: Miller's Perspective (read at "
             "http://science.sciencemag.org/content/330/6007/1059) says the density 'closely approaches 3.14'; a "
             "2012 Technical Comment (http://science.sciencemag.org/content/336/6080/413.3) describes the claim "
             "as the average number of pinwheels per hypercolumn area approaching π, measured in ferret, tree "
             "shrew and galago. 'π within a few %' is not verified. Measured for V1 orientation maps; for MT "
             "direction maps it is an assumption of seed 001, not a measurement.",
        definition="Average number of pinwheels per hypercolumn area Λ² (Λ the local column spacing), in V1 "
                   "orientation preference maps (optical imaging).",
        comparable=False, map_metric=True, statistic="mean"),
    Reference(
        "selective_fraction", "direction-selective fraction", None, (0.5, 1.0), "most MT cells (> 0.5)",
        ("albright1984", "maunsell1983", "britten1992"), False,
        note="Qualitative only. Secondary: an NYU Visual Neuroscience Lab abstract page "
             "(https://www.cns.nyu.edu/~vnl/bib2php/pubs/makeAbs.php?loc=movshon1992neural) states that almost "
             "all MT neurons are direction selective; the MIT Schiller-lab notes "
             "(http://web.mit.edu/bcs/schillerlab/research/A-Vision/A11-2.html) say the overwhelming majority of "
             "MT/MST cells are. The fraction and the criterion of each primary study were not found in "
             "retrievable text; to extract.",
        definition="Share of recorded MT cells classed as direction-selective; each study's criterion (index "
                   "threshold or significance test, spontaneous rate subtracted or not) not yet extracted. The "
                   "model's criterion is DSI = 1 - R_null/R_pref >= 0.5.",
        comparable=False, map_metric=False, statistic="fraction"),
    Reference(
        "median_fwhm_deg", "direction tuning FWHM (°)", None, (80.0, 100.0), "≈ 80-100° (to verify)",
        ("albright1984", "maunsell1983", "britten1992", "britten1998", "wang2016"), False,
        note="The range is this project's working assumption, not read in any paper. Retrieved: only the opening lines of the "
             "Albright 1984 Summary (https://pdffox.com/direction-and-orientation-selectivity-of-pdf-free.html), "
             "no numbers; the Britten & Newsome 1998 abstract "
             "(https://scilit.com/publications/27c5041c50e4fffc81c21185aeb08a27) fits Gaussians to direction "
             "tuning curves and reports that tuning stays broad near threshold, without a width; the Wang & "
             "Movshon 2016 abstract (https://nyuscholars.nyu.edu/en/publications/properties-of-pattern-and-"
             "component-direction-selective-cells-in-) says more pattern-selective cells are more broadly tuned, "
             "without a width. Maunsell & Van Essen 1983 and Britten et al. 1992 were not retrieved.",
        definition="Full width at half height of the direction tuning curve; whether each study fitted a Gaussian "
                   "(with or without baseline), used half width or full width, and subtracted spontaneous rate is "
                   "not yet extracted (Britten & Newsome 1998: Gaussian fits). The model's FWHM is that of a "
                   "fitted von Mises with baseline, 2·arccos(1 + ln 0.5/κ).",
        comparable=False, map_metric=False, statistic="value"),
    Reference(
        "median_dsi", "median DSI", None, None, "not found (seed 001 Fig. 2F draws a line; value not given)",
        ("seed001", "nakhla2021", "albright1984", "britten1992", "lagae1993", "snowden1992"), False,
        note="Seed 001 draws macaque baselines from refs [24, 3, 4] (Nakhla 2021, Albright 1984, Britten 1992) "
             "without giving numbers. The Nakhla et al. page (https://www.eneuro.org/content/8/1/ENEURO.0383-20.2020) "
             "could be retrieved only up to the author list; the Lagae et al. 1993 abstract (read from a "
             "secondary abstract page without address) defines its indexes but gives no population value in the "
             "part retrieved; Snowden et al. 1992 was not retrieved. " + _MODEL_DSI_NOTE,
        definition="Direction index of each study, not yet extracted: Lagae et al. 1993 report DI averaged over "
                   "speeds with significant responses (MDI) and DI at the optimal speed (PDI), with bars moving in "
                   "opposite directions (formula not in the abstract); Nakhla et al. 2021 and Albright 1984 "
                   "formulas not retrieved.",
        comparable=False, map_metric=False, statistic="median"),
    Reference(
        "median_circular_variance", "median circular variance", None, None,
        "not found (seed 001 Fig. 2E draws a line; value not given)",
        ("seed001", "nakhla2021"), False,
        note="Seed 001 Fig. 2E draws a macaque line from refs [24, 3, 4]; Albright 1984 and Britten et al. 1992 "
             "predate the use of CV for direction tuning, so the number presumably comes from Nakhla et al. 2021, "
             "whose text could not be retrieved beyond the author list. To extract.",
        definition="Presumably direction CV = 1 - |Σ r e^{iθ}| / Σ r over directions (undoubled angles), as for the "
                   "model; the source's formula and spontaneous-rate handling not yet extracted.",
        comparable=False, map_metric=False, statistic="median"),
)

_RINGACH_NOTE = ("Reproduced exactly from the authors' released per-cell database (ringach_2002_db.mat, 308 cells, "
                 "redistributed in github.com/neuroailab/TDANN spacetorch/datasets; its documentation defines "
                 "orivar as the circular variance of the orientation tuning curve based on mean spike rate): median "
                 "orivar = 0.6052, 153/308 = 49.7 % of cells below 0.6. Not yet read in the paper's text, so not "
                 "marked verified. The formula is the one vhlab-toolbox compute_circularvariance and the "
                 "igorkagan.org Unitret help page attribute to Ringach et al. 2002.")
_RINGACH_DEF = ("Orientation CV = 1 - |Σ_k r_k e^{2iθ_k}| / Σ_k r_k over orientations (doubled angles), r_k the mean "
                "spike rate (no spontaneous-rate subtraction stated); 308 macaque V1 cells, drifting gratings.")

V1_REFERENCES: Tuple[Reference, ...] = (
    Reference("median_circular_variance", "median orientation CV", 0.605, None, "0.605",
              ("ringach2002", "ringach2002db"), False, _RINGACH_NOTE,
              definition=_RINGACH_DEF, comparable=True, map_metric=False, statistic="median"),
    Reference("fraction_cv_below_0.6", "fraction with CV < 0.6", 0.497, None, "49.7 %",
              ("ringach2002", "ringach2002db"), False, _RINGACH_NOTE,
              definition=_RINGACH_DEF + " Fraction of cells with CV < 0.6.",
              comparable=True, map_metric=False, statistic="fraction"),
    Reference("density_per_spacing2", "orientation pinwheels per Λ²", math.pi, None, "π ≈ 3.14",
              ("kaschube2010", "miller2010"), False,
              "No number in the Kaschube et al. abstract (PubMed 21051599); Miller's Perspective "
              "(http://science.sciencemag.org/content/330/6007/1059) says the density closely approaches 3.14, and "
              "the 2012 Technical Comment (http://science.sciencemag.org/content/336/6080/413.3) restates it as "
              "pinwheels per hypercolumn area approaching π. 'Within a few %' to verify in the paper. Kaschube et "
              "al. estimate Λ locally (wavelets); the model takes Λ from the radial power-spectrum peak.",
              definition="Average number of pinwheels per hypercolumn area Λ² (Λ the column spacing) in V1 "
                         "orientation maps of ferret, tree shrew and galago.",
              comparable=True, map_metric=True, statistic="mean"),
)


def references_for(kind: str) -> Tuple[Reference, ...]:
    """``"direction"`` (MT) or ``"orientation"`` (V1)."""
    if kind == "direction":
        return MT_REFERENCES
    if kind == "orientation":
        return V1_REFERENCES
    raise ValueError(f"kind must be 'direction' or 'orientation', got {kind!r}")


def _cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, line breaks flattened."""
    return " ".join(str(text).split()).replace("|", "\\|")


def reference_table_markdown(kind: str) -> str:
    """Markdown table of the references for ``kind``, one row per reference:
    metric | value | statistic | definition | sources | checked against the paper | comparable with the model."""
    rows = ["| metric | value | statistic | definition | sources | checked against the paper | "
            "comparable with the model |",
            "|---|---|---|---|---|---|---|"]
    for r in references_for(kind):
        label = r.label + (" (map)" if r.map_metric else "")
        cites = ", ".join(f"[{s}]" for s in r.sources)
        checked = "yes" if r.verified else "no – to verify"
        comparable = "yes" if r.comparable else "no"
        rows.append(f"| {_cell(label)} | {_cell(r.text)} | {_cell(r.statistic or '-')} | "
                    f"{_cell(r.definition or 'not yet extracted')} | {_cell(cites)} | {checked} | {comparable} |")
    return "\n".join(rows)
