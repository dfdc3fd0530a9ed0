"""The HTML report (Recording.to_html, `colordim report`), learn.activation_report and report=True."""
import base64
import io
import os
import stat
from html.parser import HTMLParser

import matplotlib.image as mpimg
import pytest
import torch

import colordim
from colordim import ActivationHistogram, Recording
from conftest import make_learner
from test_cli import run, saved_run


class Page(HTMLParser):
    "What a test checks in a page: images, the findings table's rows, every attribute that could load something."
    def __init__(self, text):
        super().__init__()
        self.images, self.rows, self.addresses, self.tags, self.text = [], [], [], [], []
        self._in_findings = self._in_body = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href", "action", "data", "poster", "srcset"):
            if key in attrs:
                self.addresses.append(attrs[key])
        if tag == "table" and attrs.get("id") == "findings":
            self._in_findings = True
        if tag == "tbody" and self._in_findings:
            self._in_body = True
        if tag == "tr" and self._in_body:
            self.rows.append([])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_findings = self._in_body = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_body and self.rows:
            self.rows[-1].append(data)


def png_of(source):
    "The decoded image of a data: URL, after checking it is a PNG."
    assert source.startswith("data:image/png;base64,")
    data = base64.b64decode(source.split(",", 1)[1], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(io.BytesIO(data), format="png")


def check_page(path, layers, validation=False, gradients=False):
    page = Page(path.read_text(encoding="utf-8"))
    # grid (and one of the validation batches, of the gradients), dead chart, and per layer: colour-dim, epochs
    assert len(page.images) == 2 + validation + gradients + 2 * len(layers)
    for source in page.images:
        image = png_of(source)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01   # a real figure
    assert [row[0] for row in page.rows] == layers                    # one findings-table row per layer
    assert all(address.startswith(("data:", "#")) for address in page.addresses)   # nothing from outside
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "url(" not in text
    return page


def test_to_html_writes_one_self_contained_page(tmp_path):
    saved = saved_run(tmp_path / "run.npz")
    recording = Recording.load(saved)
    path = recording.to_html(tmp_path / "out" / "report.html", title="my run")
    page = check_page(path, ["0", "1", "2"], validation=True)
    text = " ".join(page.text)
    for fact in ("my run", "0, 1, 2", "bins", "100", "-4 to 4", "1 fit, 2 epochs", colordim.__version__,
                 "10 (8 training, 2 validation batches)"):
        assert fact in text, fact
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH or os.name == "nt"   # not private like mkstemp's 0600


def test_the_page_lists_the_findings_of_a_bad_run(tmp_path):
    big = [torch.cat([torch.full((30,), 99.0), torch.randn(70)]) for _ in range(6)]
    layer = torch.nn.Identity()
    with colordim.record(torch.nn.Sequential(layer), layers=[0], range=(-10, 10)) as rec:
        for batch in big:
            rec.model(batch)
    path = rec.recording.to_html(tmp_path / "bad.html")
    page = check_page(path, ["0"])
    assert "0: 30% of values above 10, the top of range (healthy: below 1%)" in "".join(page.text)


def test_the_report_command_prints_and_writes_the_page(tmp_path):
    saved_run(tmp_path / "a.npz")
    result = run("report", tmp_path / "a.npz", "-o", tmp_path / "a.html")
    assert result.returncode == 0, result.stderr
    verdict, blank, header = result.stdout.splitlines()[:3]
    assert verdict.endswith("unhealthy: 2 clips") or verdict == "All 3 layers healthy", verdict
    assert blank == "" and header.split()[:3] == ["layer", "type", "shape"]
    assert f"wrote {tmp_path / 'a.html'}" in result.stdout
    check_page(tmp_path / "a.html", ["0", "1", "2"], validation=True)
    result = run("report", tmp_path / "missing.npz")
    assert result.returncode == 1 and "missing.npz: no such file" in result.stderr
    assert "report" in run("--help").stdout and "-o FILE" in run("report", "--help").stdout


def test_learner_activation_report_and_report_after_fit(capsys):
    learn = make_learner(cbs=ActivationHistogram(report=True))
    learn.fit(1)
    printed = capsys.readouterr().out
    report = learn.activation_report()
    assert isinstance(report, colordim.Report) and [row["layer"] for row in report.rows] == ["0.0", "1.0", "1.1", "3"]
    assert str(report) in printed                  # printed once after the fit
    assert learn.activation_report(dead=1.0).thresholds["dead"] == 1.0
    learn = make_learner(cbs=ActivationHistogram())
    learn.fit(1)
    assert "dead units" not in capsys.readouterr().out   # report=False: nothing printed


def test_no_recording_no_report():
    learn = make_learner()
    with pytest.raises(ValueError, match="no ActivationHistogram has recorded on this learner"):
        learn.activation_report()


def test_the_page_leads_with_its_verdict_links_findings_and_marks_the_cells_over_a_threshold(tmp_path):
    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.ReLU(), torch.nn.Identity())
    with colordim.record(model, layers=[0, 1, 2], range=(-10, 10), grads=True) as recorder:
        for _ in range(10):
            x = torch.randn(64, 8, generator=generator).requires_grad_()
            x.data[:, :4] = -1.0  # half of the ReLU's units never fire
            x.data[:8] *= 50      # and an eighth of the values lie beyond the range
            model(x).sum().backward()
    recording = recorder.recording
    report = colordim.diagnose(recording)
    assert report.verdict == "3 of 3 layers unhealthy: 1 and 2 have dead units; 0, 1 and 2 clip"
    text = (tmp_path / "page.html")
    recording.to_html(text)
    page_text = text.read_text(encoding="utf-8")
    page = check_page(text, ["0", "1", "2"], gradients=True)
    assert page_text.index('id="verdict"') < page_text.index('id="findings"')  # the answer first
    assert '<p class="verdict unhealthy" id="verdict">3 of 3 layers unhealthy: 1 and 2 have dead units; 0, 1 and 2 clip</p>' \
        in page_text
    assert '<h2 id="layer-1">Layer <code>1</code></h2>' in page_text and '<a href="#layer-1"><code>1</code></a>' in page_text
    assert '<td><a href="#layer-0">0</a></td>' in page_text  # the table's rows link too
    assert page_text.count('class="over"') == 6  # 1's and 2's dead units, 0's share below, each one's above
    assert "<h2>Gradients</h2>" in page_text and "validation batches</h2>" not in page_text
    assert 'img { width: 100%' in page_text and '<div class="scroll"><table id="findings"' in page_text
    html_in_notebook = report._repr_html_()
    assert html_in_notebook.startswith('<p class="colordim-verdict"') and html_in_notebook.count('class="over"') == 6
    printed = str(report).splitlines()
    assert printed[0] == report.verdict and printed[1] == ""


def test_verdicts_of_healthy_and_empty_reports():
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity())
    with colordim.record(model, layers=[0, 1]) as recorder:
        for _ in range(4):
            model(torch.randn(16, 4))
    assert colordim.diagnose(recorder.recording).verdict == "All 2 layers healthy"
    with colordim.record(model, layers=[0, 1]) as empty:
        pass
    assert colordim.diagnose(empty.recording).verdict == "Nothing recorded yet (2 layers hooked)"
