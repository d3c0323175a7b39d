"""ssl_jax.xla_flags.configure_cpu: the Eigen-convolution flag only for the jaxlib that knows it,
never over the user's own setting, and nothing at `import ssl_jax`."""
import os
import subprocess
import sys

from ssl_jax import xla_flags


def test_adds_flag_for_known_jaxlib(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert xla_flags.configure_cpu()
    assert os.environ["XLA_FLAGS"] == (
        f"--xla_force_host_platform_device_count=2 {xla_flags.CPU_CONV_FLAG}")
    assert not xla_flags.configure_cpu()  # idempotent
    assert os.environ["XLA_FLAGS"].count("ynn_fusion_type") == 1


def test_unknown_jaxlib_or_user_setting_left_alone(monkeypatch):
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.11.0")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert not xla_flags.configure_cpu()
    assert "XLA_FLAGS" not in os.environ
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: None)  # jaxlib not installed
    assert not xla_flags.configure_cpu()
    monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: "0.10.2")
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
    monkeypatch.setenv("XLA_FLAGS", mine)
    assert not xla_flags.configure_cpu()
    assert os.environ["XLA_FLAGS"] == mine


def test_import_has_no_side_effects():
    code = ("import os, sys\nimport ssl_jax, ssl_jax.xla_flags\n"
            "assert 'XLA_FLAGS' not in os.environ, os.environ['XLA_FLAGS']\n"
            "assert 'jax' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       timeout=60)
    assert r.returncode == 0, r.stderr
