"""Live pictures: the colour-dim grid of a recording, redrawn in place in the notebook cell that runs `fit`.

One output, updated in place (an IPython display handle, as fastai's `ShowGraphCallback` does), drawn
from the host copy the recorder already made (an epoch end is a move to the host anyway: no sync of
its own). Outside a notebook kernel (a terminal, a script, CI) it draws nothing and prints nothing.
"""
from __future__ import annotations

__all__ = ["LiveGrid", "notebook_display"]


def notebook_display():
    "IPython's `display` when running in a notebook kernel; None elsewhere (a terminal: nothing is drawn)."
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    from IPython.display import display
    return display


class LiveGrid:
    "One notebook output holding the colour-dim grid of the hooked layers, replaced in place by each `update`."
    def __init__(self, display=None, cols: int = 3, dpi: int = 72):
        self.display = display if display is not None else notebook_display()
        self.cols, self.dpi, self.handle, self.updates = cols, dpi, None, 0

    @property
    def shown(self) -> bool:
        "Whether there is a notebook to draw in."
        return self.display is not None

    def update(self, recording) -> None:
        "Draw `recording`'s grid (training batches) into the one output: made at the first call, replaced later."
        if not self.shown or not len(recording) or not recording.layer_names:
            return
        image = self._image(recording)
        if self.handle is None:
            self.handle = self.display(image, display_id=True)
        else:
            self.handle.update(image)
        self.updates += 1

    def _image(self, recording):
        from IPython.display import Image
        from .plot import color_dims, png_bytes
        phase = "train" if (recording.phase == "train").any() else "valid"
        figure, _ = color_dims(recording, cols=self.cols, phase=phase)
        return Image(data=png_bytes(figure, self.dpi), format="png")
