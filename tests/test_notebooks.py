"""The notebooks in nbs/ are the docs: each runs top to bottom on the CPU, and a failing cell fails here."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "nbs").glob("*.ipynb"))


def test_the_notebooks_are_committed_with_their_outputs():
    "Pictures visible on a repository page: each notebook is committed run, with its figures and no error."
    assert [path.name for path in NOTEBOOKS] == ["01_quickstart.ipynb", "02_plain_pytorch.ipynb", "03_diagnose.ipynb",
                                                 "04_lightning.ipynb", "05_hf_trainer.ipynb"]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.get("execution_count") for cell in code), path.name  # every cell ran, in order
        outputs = [output for cell in code for output in cell.outputs]
        assert sum("image/png" in output.get("data", {}) for output in outputs) >= 3, path.name
        assert not [output for output in outputs if output.output_type == "error"], path.name
        assert notebook.cells[0].cell_type == "markdown"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as outputs, even under Agg
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:  # run afresh: the committed outputs are not what is tested here
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    figures = sum(1 for cell in notebook.cells if cell.cell_type == "code"
                  for output in cell.outputs if "image/png" in output.get("data", {}))
    errors = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if output.output_type == "error"]
    assert errors == [] and figures >= 3
