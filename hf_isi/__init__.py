"""hf_isi: layer-wise information-flow diagnostics for Hugging Face vision transformers.

    >>> import hf_isi
    >>> report = hf_isi.analyze("isi-vit-d8", images, labels)      # doctest: +SKIP
    >>> report.table, report.phases, report.provenance              # doctest: +SKIP
"""

from importlib.resources import files as _files

from .engine import ALL_METRICS, AnalysisConfig, Analyzer, ModelSource, analyze
from .models import ActivationError, ModelAdapter, ModelError, ModuleNames, load_model
from .phases import PhaseFit, align_phases, fit_phases
from .report import Report
from .states import LayerStates, TokenLayout

__version__ = "0.1.0"

#: folder of the packaged evaluate module: ``evaluate.load(hf_isi.ISI_METRIC_PATH)`` works from any directory
ISI_METRIC_PATH = str(_files("hf_isi") / "evaluate_module" / "isi")


def load_isi(config_name: str | None = None, **kwargs):
    """``evaluate.load`` of the packaged ISI module (offline, from any directory); needs ``pip install evaluate``."""
    import evaluate

    return evaluate.load(ISI_METRIC_PATH, config_name, **kwargs)


__all__ = [
    "ISI_METRIC_PATH", "load_isi", "ALL_METRICS", "AnalysisConfig", "Analyzer", "ModelSource", "analyze",
    "ActivationError", "ModelAdapter", "ModelError", "ModuleNames", "load_model",
    "PhaseFit", "align_phases", "fit_phases",
    "Report", "LayerStates", "TokenLayout",
]
