"""The one error policy of every entry point (run_train.py, run_eval.py,
`python -m checkpoints_convert`, experiments/*.py, benchmarks/*.py).

An expected failure (a bad flag or config value, a missing or unreadable input, a run that
cannot go on: a NaN loss, no readable checkpoint) ends the program with ONE line on stderr,
`error: ...`, naming the bad value and what would be valid or what to do next, and exit code 2.
Anything else is a bug and ends with its traceback (exit code 1). `--debug` anywhere on the
command line, or SSL_JAX_DEBUG=1, shows the traceback of an expected failure too.

Rule for library code: an expected failure raises `UserError`, or the `ValueError` /
`OSError` (FileNotFoundError, PermissionError, a full disk) that ssl_jax already raises for a
bad argument or a missing file; `UserError` is a ValueError, so callers and tests that catch
ValueError see both. Raise `UserError` for a failure that is not a bad argument (a diverged
run, no readable checkpoint). Every other exception type counts as a bug.

Entry points: `errors.run(main)` instead of calling `main()`. Every entry point takes absl
flags: run_train.py and run_eval.py parse absl's global FLAGS (with their ml_collections config
flag) with `errors.parse_flags`; each script of experiments/ and benchmarks/ defines its flags on
its own `absl.flags.FlagValues()` (tests import several scripts into one process) and parses
them with `errors.parse_script_flags`. A usage error is one line too. Everything here imports
only the standard library (absl, itself stdlib-only, is imported when flags are parsed), so a
bad command line is reported before JAX or TensorFlow are imported (in about a second).
"""
from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
import types
from typing import Any, Callable

EXIT_CODE = 2
DEBUG_FLAG = "--debug"
DEBUG_ENV = "SSL_JAX_DEBUG"


class UserError(ValueError):
    """An expected failure: its message is the whole report (one line, no traceback)."""


# What an entry point reports as one line. OSError carries the path in its message.
EXPECTED = (ValueError, OSError)


def one_line(message: str) -> str:
    """Collapse a (possibly multi-line) message into one line."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _debug_requested(argv: list[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run(main: Callable[..., Any], *args: Any) -> None:
    """Call `main(*args)` under the policy and exit: 0 (or main's int return value) on
    success, 2 with one `error:` line on an expected failure, 1 with a traceback on a bug.
    Removes `--debug` from sys.argv first, so the script's own parser never sees it."""
    debug = _debug_requested(sys.argv)
    sys.argv[:] = [a for a in sys.argv if a != DEBUG_FLAG]
    try:
        code = main(*args)
    except KeyboardInterrupt:
        # Not a failure of the program: no traceback; 130 is the shell's code for SIGINT.
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except EXPECTED as e:
        if debug:
            traceback.print_exc()
        sys.stdout.flush()
        print(f"error: {one_line(e) or type(e).__name__}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CODE)
    sys.exit(code if isinstance(code, int) else 0)


# ---------------------------------------------------------------------------------------------
# absl flags of the scripts in experiments/ and benchmarks/
# ---------------------------------------------------------------------------------------------

HELP_FLAGS = ("--help", "-h", "-help")


def parse_script_flags(flag_values, argv: list[str] | None = None, doc: str | None = None,
                       prog: str | None = None) -> types.SimpleNamespace:
    """Parse `argv` (the arguments after the program name; default sys.argv[1:]) into a
    script's own `absl.flags.FlagValues` and return the values as a namespace: `args.outdir`,
    a hyphenated flag `--data-dir` as `args.data_dir`. Each call starts from the defaults (a
    test may parse several command lines in one process). `--help` / `-h` prints `doc` and the
    flags' help and exits 0; a bad value, an unknown flag or a positional argument (the scripts
    take flags only) raises UserError: one line naming the flag, then `(see PROG --help)`."""
    from absl import flags

    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0]) or "the script"
    options = argv[:argv.index("--")] if "--" in argv else argv
    if any(a in HELP_FLAGS for a in options):
        print((doc or "").strip(), "", flag_values.get_help(include_special_flags=False),
              sep="\n")
        sys.exit(0)
    flag_values.unparse_flags()  # back to the defaults
    try:
        rest = flag_values([prog] + argv)[1:]
    except flags.Error as e:
        raise UserError(f"{one_line(e) or type(e).__name__} (see {prog} --help)") from None
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r}: {prog} takes flags only, "
                        f"--name=value (see {prog} --help)")
    return types.SimpleNamespace(**{
        name.replace("-", "_"): (list(flag.value) if isinstance(flag.value, list)
                                 else flag.value)
        for name, flag in ((n, flag_values[n]) for n in flag_values) if name == flag.name})


# ---------------------------------------------------------------------------------------------
# absl + ml_collections config flags (run_train.py, run_eval.py)
# ---------------------------------------------------------------------------------------------

def parse_flags(flags_obj, argv: list[str], config_flag: str = "config",
                module: str = "__main__") -> None:
    """Parse `argv` into absl's FLAGS and load the config file, turning every parse problem into
    a UserError that names the bad flag: a missing config file (with the files next to it), a
    config file's own error (its message, not ml_collections' 'Error whilst parsing config
    file'), an unknown `--config.KEY` (close matches first, then the valid keys). `--help` prints
    the docstring and flags of `module`, the name of the module that defines them (a console
    script's __main__ is its wrapper, not the script)."""
    from absl import flags

    if "--help" in argv or "-h" in argv:  # absl's --help lives in absl.app, not used here
        flags_help = (flags_obj.main_module_help() if module == "__main__"
                      else flags_obj.module_help(module))
        print(sys.modules[module].__doc__ or "", flags_help, sep="\n")
        sys.exit(0)
    spec = _flag_value(argv, config_flag)
    if spec is not None:
        _check_config_file(config_flag, spec)
    try:
        flags_obj(argv)
        if spec is not None:
            flags_obj[config_flag].value  # noqa: B018  (loads the file: errors surface here)
    except (KeyError, AttributeError) as e:
        # ml_collections raises these for `--config.no_such_key=...`, naming only the leaf.
        raise UserError(_unknown_key_message(flags_obj, argv, config_flag, e)) from None
    except (flags.Error, ValueError) as e:
        raise UserError(_flag_error_message(e)) from None


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _check_config_file(flag: str, spec: str) -> None:
    path = spec.split(":", 1)[0]
    if os.path.isfile(path):
        return
    folder = os.path.dirname(path) or "."
    if os.path.isdir(folder):
        there = sorted(f for f in os.listdir(folder)
                       if f.endswith(".py") and _defines_get_config(os.path.join(folder, f)))
        valid = [os.path.join(os.path.dirname(path), f)
                 for f in _rank(os.path.basename(path), there)]
        hint = f"; valid: {', '.join(valid)}" if valid else ""
    else:
        hint = f" (no folder {folder!r})"
    raise UserError(f"--{flag}={spec}: config file {path!r} does not exist{hint}")


def _defines_get_config(path: str) -> bool:
    with open(path, errors="replace") as f:
        return "def get_config(" in f.read()


def _flag_error_message(e: Exception) -> str:
    text = str(e)
    if "Traceback (most recent call last)" in text:
        # A config file's get_config raised: ml_collections wraps the traceback as text.
        # Its last line is "ExceptionType: message"; keep the flag ("flag --config=...:").
        lines = [line for line in text.splitlines() if line.strip()]
        reason = lines[-1]
        if ": " in reason and reason.split(": ", 1)[0].replace(".", "").isidentifier():
            reason = reason.split(": ", 1)[1]
        head = lines[0].split(": Error whilst parsing", 1)[0]
        return f"{head}: {reason}"
    required = re.fullmatch(r"flag --(\S+)=None: Flag --\S+ must have a value other than None\.",
                            one_line(text))
    if required:
        return f"--{required[1]} is required (see --help)"
    return one_line(text) or type(e).__name__


def _unknown_key_message(flags_obj, argv: list[str], flag: str, e: Exception) -> str:
    leaf = str(e).strip("\"'")
    try:  # the flag holds no value after a failed parse: load the file again to list keys
        config = _load_config(_flag_value(argv, flag))
    except Exception:  # the config does not load either: nothing to list
        config = None
    for arg in argv:
        if not arg.startswith(f"--{flag}."):
            continue
        key = arg[len(flag) + 3:].split("=", 1)[0]
        node, parents = config, []
        for part in key.split("."):
            if node is None or not hasattr(node, "keys") or part not in node:
                break
            node, parents = node[part], parents + [part]
        else:
            continue  # this override exists: not the bad one
        prefix = ".".join(parents)
        if node is None or not hasattr(node, "keys"):
            return f"{arg}: unknown config key {key!r}" + (
                f" ({prefix!r} is a value, not a section)" if parents else "")
        full = [f"{prefix}.{k}" if prefix else k for k in sorted(node.keys())]
        close = difflib.get_close_matches(key, _dotted_keys(config), n=3, cutoff=0.6)
        near = f"did you mean {', '.join(close)}? " if close else ""
        return (f"{arg}: unknown config key {key!r}; {near}valid keys"
                f"{' under ' + prefix if prefix else ''}: {', '.join(full)}")
    return f"unknown config key {leaf!r} in --{flag}.KEY=VALUE"


def _load_config(spec: str):
    """get_config(ARG) of 'file.py[:ARG]', as ml_collections' config flag loads it."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_ssl_jax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _dotted_keys(node, prefix: str = "") -> list[str]:
    out = []
    for k in node.keys():
        out.append(prefix + k)
        if hasattr(node[k], "keys"):
            out += _dotted_keys(node[k], f"{prefix}{k}.")
    return out


def _rank(want: str, options: list[str]) -> list[str]:
    """`options`, close matches of `want` first (difflib), then the rest in order."""
    close = difflib.get_close_matches(want, options, n=3, cutoff=0.6)
    return close + [o for o in options if o not in close]
