"""Physiology analysis of topographic models (DESIGN §7): grating stimuli, tuning metrics, preference maps,
pinwheels, figures and the report.

Main entry points: :func:`analyze_checkpoint` (direction or orientation maps), :func:`analyze_checkpoint_categories`
(IT category patches of image models), :func:`analyze_model`, :func:`tuning_metrics`, :func:`pinwheels`,
:func:`map_statistics` (map statistics against position-shuffled nulls, and the map-detected verdict).
Submodules are imported lazily (``import tdann_fast.analysis`` stays cheap).
"""
from tdann_fast._lazy import lazy_exports

_LAZY = {
    "DriftingGratings": "stimuli", "StaticGratings": "stimuli",
    "TuningMetrics": "tuning", "tuning_metrics": "tuning", "fit_von_mises": "tuning", "von_mises_fwhm": "tuning",
    "population_tuning_curve": "tuning",
    "PinwheelResult": "pinwheels", "pinwheels": "pinwheels", "smooth_vector_field": "pinwheels",
    "winding_numbers": "pinwheels", "angles_to_vectors": "pinwheels",
    "adjacent_differences": "neighbours", "smoothness_curve": "neighbours",
    "MapStatistics": "maps", "NullStat": "maps", "map_statistics": "maps", "rayleigh_test": "maps",
    "ring_spectrum_field": "maps", "synthetic_tuning_map": "maps",
    "GratingResponses": "responses", "grating_responses": "responses", "layer_responses": "responses",
    "analyze_model": "analyze", "analyze_checkpoint": "analyze", "analyze_random_init": "analyze",
    "analyze_checkpoint_categories": "categories",
    "analyze_categories": "categories", "category_tvalues": "categories", "find_patches": "categories",
    "category_report_lines": "categories", "CategoryStimuli": "floc", "embedded_floc": "floc",
    "load_floc_folder": "floc",
    "sweep_report": "sweep", "write_report": "report",
    "MT_REFERENCES": "references", "V1_REFERENCES": "references",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
