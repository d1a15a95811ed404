"""The notebooks: committed without outputs, one ``parameters`` cell, and they run end to end
(the way nbmake runs them: nbclient with the ``python3`` kernel) against the session's runs."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")  # the dev/notebooks extras: nbmake, jupyter, ipykernel
pytest.importorskip("ipykernel")
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NAMES = ("compare_runs.ipynb", "inspect_dck.ipynb")


def read(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    return notebook


def execute(
    name: str | nbformat.NotebookNode, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel whose environment holds ``env``; raises on any cell error."""
    # The kernel inherits this process's environment; figures display inline, as in Jupyter.
    defaults = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    for key, value in {**defaults, **env}.items():
        monkeypatch.setenv(key, value)
    notebook = read(name) if isinstance(name, str) else name
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return notebook


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    for cell in read(name).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: clear the outputs before committing"
            assert cell.execution_count is None, f"{name}: clear the execution counts"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_one_parameters_cell_read_from_the_environment(name):
    tagged = [c for c in read(name).cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert 'os.environ.get("DCK_RUNS"' in tagged[0].source


def test_compare_runs_notebook_runs(runs_root, monkeypatch):
    notebook = execute("compare_runs.ipynb", {"DCK_RUNS": str(runs_root)}, monkeypatch)
    images = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2  # learning curves, ablation chart
    text = "".join(
        o.get("data", {}).get("text/plain", "")
        for c in notebook.cells
        for o in c.get("outputs", [])
    )
    assert "ablation/version_3" in text and "static" in text


def test_inspect_dck_notebook_runs(ablation_runs, monkeypatch):
    notebook = execute(
        "inspect_dck.ipynb",
        {"DCK_CHECKPOINT": str(ablation_runs[0]), "DCK_NUM_IMAGES": "2"},
        monkeypatch,
    )
    images = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 5  # receptive fields, 2 offset fields, predictions, per class, confusion


def test_an_exception_in_a_notebook_fails_the_test(monkeypatch):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                               nbformat.v4.new_code_cell("raise ValueError('broken cell')")])  # fmt: skip
    with pytest.raises(CellExecutionError, match="broken cell"):
        execute(notebook, {}, monkeypatch)
