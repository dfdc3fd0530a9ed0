"""ActivationHistogram(show=...): the grid redrawn in one notebook output, in place; nothing in a terminal."""
import io

import matplotlib.image as mpimg
import pytest

from colordim import ActivationHistogram
from colordim.views.live import LiveGrid, notebook_display
from conftest import make_learner


class FakeDisplay:
    "IPython's display(obj, display_id=True) and the handle it returns: what was shown, how often replaced."
    def __init__(self):
        self.shown, self.updates = [], 0

    def __call__(self, image, display_id=None):
        assert display_id is True  # one output, kept to be updated
        self.shown.append(image)
        return self

    def update(self, image):
        self.shown.append(image)
        self.updates += 1


def decoded(image):
    assert image.format == "png" and image.data[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(image.data), format="png")


@pytest.fixture
def fake_notebook(monkeypatch):
    fake = FakeDisplay()
    monkeypatch.setattr("colordim.views.live.notebook_display", lambda: fake)
    return fake


def test_show_redraws_one_output_after_each_epoch(fake_notebook):
    learn = make_learner(cbs=ActivationHistogram(show=True))
    learn.fit(3)
    assert len(fake_notebook.shown) == 3 and fake_notebook.updates == 2  # made once, then replaced in place
    first, last = decoded(fake_notebook.shown[0]), decoded(fake_notebook.shown[-1])
    assert first.shape[1] > 500 and last.std() > 0.05  # a real grid of the 4 hooked layers
    assert first.shape == last.shape


def test_show_every_n_batches_also_redraws_in_the_epoch(fake_notebook):
    learn = make_learner(cbs=ActivationHistogram(show=4))
    learn.fit(2)  # 6 training batches an epoch: at 4 and 8 (counting validation columns too: ended), and epoch ends
    assert fake_notebook.updates == len(fake_notebook.shown) - 1 and len(fake_notebook.shown) >= 4


def test_in_a_terminal_show_draws_and_prints_nothing(capsys):
    assert notebook_display() is None  # pytest is no notebook kernel
    learn = make_learner(cbs=ActivationHistogram(show=True))
    learn.fit(1)
    assert capsys.readouterr().out == "" and not learn.activation_histogram._live.shown
    assert LiveGrid(display=None).update(learn.activation_histogram.recording) is None


@pytest.mark.parametrize("bad", [0, -2, 1.5, "yes"])
def test_bad_show_is_refused_at_once(bad):
    with pytest.raises(ValueError, match="show: .* is not valid; use True"):
        ActivationHistogram(show=bad)
