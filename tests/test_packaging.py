"""pyproject.toml's console scripts name importable callables (each in its own interpreter:
run_train and run_eval both define absl's --config flag)."""
import os
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as _f:
    SCRIPTS = tomllib.load(_f)["project"]["scripts"]


def test_scripts_listed():
    assert set(SCRIPTS) == {"ssl-jax-train", "ssl-jax-eval", "ssl-jax-convert"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_resolves_to_callable(name):
    module, attr = SCRIPTS[name].split(":")
    code = ("import importlib, sys\n"
            f"target = getattr(importlib.import_module({module!r}), {attr!r})\n"
            "assert callable(target), target\n"
            "assert 'jax' not in sys.modules, 'the entry point imported jax at import time'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
