"""The package as a new user meets it: its import surface, its layout rules."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xpcnn"


def test_import_xpcnn_gives_the_library_without_plotting_or_progress_bars():
    probe = (
        "import sys, xpcnn; xpcnn.layers.Conv2D, xpcnn.optim.SGD, xpcnn.losses.cross_entropy, "
        "xpcnn.data.load_dataset, xpcnn.models.build_model, xpcnn.train.fit; "
        "print(sorted(m for m in ('matplotlib', 'tqdm', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_no_module_is_over_400_lines_and_each_says_what_it_holds():
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) <= 400, path
        assert ast.get_docstring(ast.parse(source)), f"{path} has no module docstring"


def test_only_the_command_line_names_flags():
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        strings = [
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ]
        flags = [s for s in strings if any(w.startswith("--") and w[2:3].isalpha()
                                           for w in s.split())]  # fmt: skip
        assert flags == [], f"{path.relative_to(PACKAGE)} names flags: {flags}"
