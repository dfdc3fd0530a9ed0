"""`colordim.hf.ActivationHistogram`: the Hugging Face Trainer's callback (`colordim.integrations.hf`)."""
from .integrations.hf import ActivationHistogram

__all__ = ["ActivationHistogram"]
