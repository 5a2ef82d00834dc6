"""No import circles among hubbub's modules, counting imports inside functions and under
TYPE_CHECKING (scripts/import_graph.py draws the graph and lists them)."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "import_graph.py"


def test_the_package_has_no_import_circles():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, f"import circles:\n{done.stdout}{done.stderr}"
