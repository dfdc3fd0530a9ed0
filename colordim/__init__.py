"""colordim: the colorful-dimension plot of layer activations for fastai and PyTorch."""
from .layers import find_layers
from .recorder import HistogramRecorder
from .recording import Recording

__version__ = "0.1.0"
__all__ = ["ActivationHistogram", "HistogramRecorder", "Recording", "find_layers", "color_dim", "__version__"]


def __getattr__(name):
    # fastai and matplotlib load on first use, so the engine imports without them.
    if name == "ActivationHistogram":
        from .callback import ActivationHistogram
        return ActivationHistogram
    if name == "color_dim":
        from .plot import color_dim
        return color_dim
    raise AttributeError(f"module 'colordim' has no attribute {name!r}")
