"""``federate`` without Flower installed: the package and the command line import without flwr, and a run says how
to install the extra (one line, exit 2)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from svdlora_pl.cli.main import main


def test_the_command_line_and_run_module_import_without_flwr():
    code = (
        "import sys\n"
        "import svdlora_pl.cli.main, svdlora_pl.cli.federate, svdlora_pl.federated.run\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('flwr', 'ray')], 'flwr or ray imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_run_without_flower_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "ray" else real(name, *args))
    assert main(["federate", "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "svdlora: error: svdlora federate needs Flower's simulation engine (ray is not installed): "
        "pip install -e '.[flower]' (or pip install 'flwr[simulation]==1.42.0')"
    )
    assert not (tmp_path / "out").exists()
