"""colordim: the colorful-dimension plot of layer activations for fastai and PyTorch."""
from .health.checks import diagnose
from .health.report import Report
from .engine.find_layers import find_layers
from .integrations.loop import record
from .engine.recorder import HistogramRecorder
from .data.recording import Recording
from .probes.summary import summary

__version__ = "0.1.0"
_FIGURES = ("color_dim", "color_dims", "color_dim_epochs", "dead_chart", "plot_layer_stats", "compare", "update_ratio_chart")
__all__ = ["ActivationHistogram", "HistogramRecorder", "Recording", "Report", "diagnose", "find_layers", "record", "summary",
           "to_tensorboard", *_FIGURES, "__version__"]


def __getattr__(name):
    # fastai and matplotlib load on first use, so the engine imports without them.
    if name == "ActivationHistogram":
        from .integrations.fastai import ActivationHistogram
        return ActivationHistogram
    if name == "to_tensorboard":
        from .integrations.tensorboard import to_tensorboard
        return to_tensorboard
    if name in _FIGURES:
        from .views import plot
        return getattr(plot, name)
    raise AttributeError(f"module 'colordim' has no attribute {name!r}")
