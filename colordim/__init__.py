"""colordim: the colorful-dimension plot of layer activations for fastai and PyTorch."""
from .health.diagnose import Report, diagnose
from .engine.find_layers import find_layers
from .integrations.loop import record
from .engine.recorder import HistogramRecorder
from .data.recording import Recording
from .probes.summary import summary
from .data import saved  # noqa: F401  (sets Recording.save and Recording.load)

__version__ = "0.1.0"
_FIGURES = ("color_dim", "color_dims", "color_dim_epochs", "dead_chart", "plot_layer_stats", "compare")
__all__ = ["ActivationHistogram", "HistogramRecorder", "Recording", "Report", "diagnose", "find_layers", "record", "summary",
           "to_tensorboard", *_FIGURES, "__version__"]


def _to_html(self, path, title: str = "colordim report", **thresholds):
    """Write one self-contained HTML page of this run (metadata, health report, every figure as an
    embedded PNG) to `path`; `thresholds` as in `colordim.diagnose`. Returns the path."""
    from .views.html_page import write_html  # matplotlib loads on first use
    return write_html(self, path, title=title, **thresholds)


Recording.to_html = _to_html


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
