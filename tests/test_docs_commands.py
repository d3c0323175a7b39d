"""Every command the README and docs/ show still parses: each `python experiments/X.py ...` and
`python benchmarks/X.py ...` line's flags against the script's own absl flags, and each
`python run_train.py` / `run_eval.py` line's config file, config argument and `--config.KEY`
overrides against the config it builds. (Running them is the job of their own tests and of
the experiments; this catches a renamed flag or config key that a page still shows.)"""
import glob
import importlib.util
import os
import re
import shlex

import pytest

from ssl_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
SCRIPT = re.compile(r"^(experiments|benchmarks)/\w+\.py$")
# Placeholders the pages use for a value the reader supplies.
PLACEHOLDER = re.compile(r"[A-Z]{2,}|\[|\.\.\.|gs://")


def shown_commands() -> list[tuple[str, list[str]]]:
    """(page: line, argv from the script on) of every python command in a code block or an
    indented block, continuation lines joined and trailing comments dropped."""
    out = []
    for page in PAGES:
        lines = open(page, encoding="utf-8").read().splitlines()
        in_fence, i = False, 0
        while i < len(lines):
            line = lines[i]
            if line.strip().startswith("```"):
                in_fence = not in_fence
                i += 1
                continue
            start = i
            for span in re.findall(r"`([^`]*python[^`]*)`", line):  # inline code
                argv = command_argv(span)
                if argv:
                    out.append((f"{os.path.relpath(page, ROOT)}:{start + 1}", argv))
            if in_fence or line.startswith("    "):
                text = line.strip()
                while text.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text[:-1] + " " + lines[i].strip()
                for part in text.split("&&"):
                    argv = command_argv(part)
                    if argv:
                        out.append((f"{os.path.relpath(page, ROOT)}:{start + 1}", argv))
            i += 1
    return out


def command_argv(text: str) -> list[str] | None:
    """['experiments/x.py', '--flag', ...] of `python experiments/x.py --flag ...`, or None."""
    text = text.split(" #")[0].strip()
    try:
        words = shlex.split(text)
    except ValueError:
        return None
    for k, w in enumerate(words[:-1]):
        if os.path.basename(w).startswith("python"):
            script = words[k + 1]
            if SCRIPT.match(script):
                return words[k + 1:]
            # An entry point named in prose ("= `python run_train.py`") is not a command.
            if script in ("run_train.py", "run_eval.py") and any(
                    w.startswith("--config") for w in words):
                return words[k + 1:]
    return None


COMMANDS = shown_commands()


def test_the_pages_show_commands_of_every_kind():
    scripts = {argv[0] for _, argv in COMMANDS}
    assert {"run_train.py", "run_eval.py", "experiments/quickstart.py",
            "experiments/methods_table.py", "experiments/behaviour.py",
            "experiments/similarity_methods.py"} <= scripts


def _load(path: str):
    name = "docs_cmd_" + re.sub(r"\W", "_", path)
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("where,argv", [c for c in COMMANDS if SCRIPT.match(c[1][0])],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_script_flags_parse(where, argv):
    module = _load(argv[0])
    try:
        errors.parse_script_flags(module.FLAGS, argv[1:], prog=argv[0])
    except errors.UserError as e:
        pytest.fail(f"{where}: `{' '.join(argv)}`: {e}")


@pytest.mark.parametrize("where,argv", [c for c in COMMANDS if not SCRIPT.match(c[1][0])],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_entry_point_configs_load(where, argv):
    flags = dict(a.split("=", 1) if "=" in a else (a, None) for a in argv[1:]
                 if a.startswith("--"))
    spec = flags.get("--config")
    if spec is None:  # `--config X` as two words
        spec = argv[argv.index("--config") + 1]
    if PLACEHOLDER.search(spec):
        pytest.skip(f"{where}: a placeholder config ({spec})")
    path, _, arg = spec.partition(":")
    assert os.path.exists(os.path.join(ROOT, path)), f"{where}: no config file {path}"
    config = _load(path).get_config(arg or None)
    for key, value in flags.items():
        if key.startswith("--config."):
            node = config
            for part in key[len("--config."):].split("."):
                assert part in node, f"{where}: {key} is not a key of {spec}"
                node = node[part]
