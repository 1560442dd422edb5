"""The command line of every tool: one flag dialect, one way to fail.

- train.py (and data.py's preview) read a stage file, plain Python assignments, then `--key=value` overrides
  into a dataclass the caller hands over (`parse_config`): nanoGPT's configurator with a dataclass's checks,
  so an unknown key or a wrong type is an error that names it.
- The other tools use argparse, through `parse_args`: `--a_b` is `--a-b`, `--k v` is `--k=v`, and --help works
  anywhere.
- A usage error is one line, `error: ...`, on stderr, and exit status 2 (`one_line_errors`).

This room imports nothing from the project.
"""
import argparse
import ast
import contextlib
import dataclasses
import difflib
import os
import sys

DTYPES = ("auto", "float32", "bfloat16")  # every tool's --dtype; "auto" is each tool's default (see its --help)
TRUE_FALSE = ("true", "false", "1", "0")


def hms(seconds: float) -> str:
    """A duration as every tool prints it (ETAs, estimates): hours:minutes:seconds, hours unbounded."""
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class UsageError(ValueError):
    """Bad input on the command line or in a stage file; shown as one line."""


@contextlib.contextmanager
def one_line_errors(*kinds):
    """Turn the exceptions `kinds` (UsageError always) into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except (UsageError, *kinds) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """parser.parse_args in the one dialect of every tool: `--a_b` is `--a-b` (flag names only; argparse takes
    `--k v` and `--k=v`, and --help anywhere), and a usage error is one line, `error: ...`, exit status 2."""
    # (A tool that reports usage errors its own way has set parser.error already.)
    vars(parser).setdefault("error", lambda message: parser.exit(2, f"error: {message}\n"))
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)  # after a bare "--", every word is a value

    def spelled(arg):
        name, eq, value = arg.partition("=")
        return name.replace("_", "-") + eq + value if arg.startswith("--") else arg
    return parser.parse_args([*map(spelled, argv[:end]), *argv[end:]])


def read_stage(path: str) -> dict:
    """A stage file's assignments (names starting with "_" are its own helpers)."""
    if not os.path.isfile(path):
        raise UsageError(f"stage file {path} does not exist")
    namespace = {}
    try:
        with open(path, encoding="utf-8") as f:
            exec(compile(f.read(), path, "exec"), namespace)
    except Exception as e:
        raise UsageError(f"stage file {path}: {type(e).__name__}: {e}") from None
    return {k: v for k, v in namespace.items() if not k.startswith("_")}


def parse_config(cls, argv):
    """An instance of dataclass `cls` from [STAGE.py] [--key=value ...]: the stage file's assignments, then the
    command line. `--key value` is `--key=value`, `--a-b` is `--a_b`; a bool key alone is true."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    values, args = {}, list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            key = key.replace("-", "_")
            if key in types and not eq:  # the value is the next word (a bool takes one only if it is one)
                if types[key] is not bool or (args and args[0].lower() in TRUE_FALSE):
                    if not args or args[0].startswith("--"):
                        raise UsageError(f"--{key} needs a value (--{key}=VALUE or --{key} VALUE)")
                    text = args.pop(0)
                else:
                    text = "true"
            pairs, from_cli = [(key, text)], True
        elif not values and (os.path.isfile(arg) or arg.endswith(".py")):
            pairs, from_cli = list(read_stage(arg).items()), False
        else:
            raise UsageError(f"{arg!r} is neither a stage file (given first) nor a --key=value or --key value")
        for key, value in pairs:
            if key not in types:
                close = difflib.get_close_matches(key, types, n=3)
                raise UsageError(f"unknown key {key!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
            values[key] = coerce(key, value, types[key], from_cli)
    return cls(**values)


def coerce(name, value, typ, from_cli=False):
    """Check a stage-file value, or parse a command-line one, against the field's type (ints pass as floats)."""
    if from_cli and typ is bool and value.lower() in TRUE_FALSE:
        return value.lower() in ("true", "1")
    if from_cli and typ is not str:
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if typ is not float or value.lower().lstrip("+-") not in ("inf", "nan"):
                raise UsageError(f"--{name}={value}: not a valid {typ.__name__}") from None
            value = float(value)  # a float all the same: the caller's bounds refuse it with their own message
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)  # tokens = 6.3e9
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UsageError(f"{name} must be {typ.__name__}, got {type(value).__name__} {value!r}")
    return value
