"""The Colab notebooks run top to bottom (smoke mode) and are committed without outputs."""

import pathlib

import jax
import nbclient
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("quickstart.ipynb", "cvar.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_clean(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    assert "colab" in notebook.metadata
    for cell in notebook.cells:
        if cell.cell_type == "code":
            # Outputs (plots, logs) would bloat every diff: clear them before committing.
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name} has outputs: clear them (Jupyter: Edit > Clear All Outputs)."
            )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, monkeypatch, tmp_path):
    # The kernel inherits this process's environment: smoke mode (tiny run, temp workdir), and
    # the suite's persistent XLA cache (conftest) so re-runs skip most compiles.
    monkeypatch.setenv("JAXDD_NOTEBOOK_SMOKE", "1")
    cache_dir = jax.config.jax_compilation_cache_dir
    if cache_dir:
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache_dir))
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # The smoke workdir (tempfile.mkdtemp) lands here.
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    errors = _cell_errors(notebook)
    assert not errors, "\n\n".join(errors)
    if name == "quickstart.ipynb":
        assert list(tmp_path.glob("jaxdd-quickstart-*/eval.json")), "smoke workdir not in TMPDIR"


def _cell_errors(notebook) -> list[str]:
    """Runs every cell (continuing past errors); the traceback of each cell that raised."""
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        allow_errors=True,  # Collect every failing cell instead of stopping at the first.
        # Jupyter's usual working directory: the notebook walks up from it to the repository.
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return [
        f"cell {i}: {output.ename}: {output.evalue}\n" + "\n".join(output.traceback)
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]


def test_a_raising_cell_is_reported():
    """The check above can fail: a cell that raises is reported, with later cells still run."""
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("raise ValueError('broken cell')"),
            nbformat.v4.new_code_cell("print('still runs')"),
        ]
    )
    notebook.metadata.kernelspec = {"name": "python3", "display_name": "Python 3"}
    errors = _cell_errors(notebook)
    assert len(errors) == 1 and "ValueError: broken cell" in errors[0]
    assert notebook.cells[1].outputs[0]["text"] == "still runs\n"
