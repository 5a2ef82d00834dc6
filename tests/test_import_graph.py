"""No import circles among hubbub's modules, counting imports inside functions and under
TYPE_CHECKING (scripts/import_graph.py draws the graph and lists them)."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "import_graph.py"
# Circles still to break, each with the edge to remove. Empty this as they go; never add to it.
KNOWN = {
    # layouts borrows ingest's private helpers (_hash, _reasons, _remove_written) while
    # ingest.ingest_folder dispatches to layouts
    "circle: hubbub.shards.ingest <-> hubbub.shards.layouts",
}


def test_the_package_has_no_import_circles():
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True).stdout
    found = {line for line in out.splitlines() if line.startswith("circle:")}
    assert found <= KNOWN, f"new import circles:\n{out}"
