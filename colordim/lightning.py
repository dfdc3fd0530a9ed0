"""`colordim.lightning.ActivationHistogram`: the PyTorch Lightning callback (`colordim.integrations.lightning`)."""
from .integrations.lightning import ActivationHistogram

__all__ = ["ActivationHistogram"]
