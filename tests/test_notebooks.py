"""The quickstart notebook runs top to bottom with a real kernel, as a newcomer would run it: it
makes a project in the folder this test names (QUICKSTART_DIR), starts its own stack
on free ports, trains through `run_deployment`, serves, sends traffic, monitors, plots, and stops
the stack. Its own `assert`s check the loop; this test checks that every one of them ran, and
stops the notebook's stack when a failed cell kept its last one from doing so."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"
DRIFTLOOP = str(Path(sys.executable).parent / "driftloop")


def _down(project: Path) -> str | None:
    """`driftloop down --force` for the notebook's home; None when it made none."""
    home = project / ".driftloop"
    if not home.exists():
        return None
    done = subprocess.run(
        [DRIFTLOOP, "down", "--force"],
        cwd=project,
        env={**os.environ, "DRIFTLOOP_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return done.stdout.strip() or done.stderr.strip()


def _text(cell: nbformat.NotebookNode) -> str:
    out = []
    for o in cell.get("outputs", []):
        out.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


@pytest.mark.integration
def test_the_quickstart_runs_the_loop_top_to_bottom_and_stops_its_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "quickstart"
    monkeypatch.setenv("QUICKSTART_DIR", str(project))
    notebook = nbformat.read(QUICKSTART, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    try:
        client.execute()
    finally:
        left = _down(project)  # the notebook's last cell stops the stack; a failed cell skips it
    code = [c for c in notebook.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert all(c.execution_count for c in code), "a cell did not run"
    checks = [c for c in code if "assert " in c.source]
    assert len(checks) >= 5, "the notebook's own checks of the loop are gone"
    assert "run_deployment(" in QUICKSTART.read_text()
    last = _text(code[-1])
    assert "stopped:" in last, last  # `driftloop down` ran
    assert "metadata.json" in last, last  # and the champion's files are listed
    assert left == "nothing was running", f"the notebook left its stack running: {left}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert not [c.execution_count for c in code if c.outputs or c.execution_count]
