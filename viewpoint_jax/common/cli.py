"""Shared command-line plumbing: every entry point runs on `absl.app.run` through `run`, and a
mistake (an unknown flag or config key, a bad value, a missing file) is one clear line and exit
status 2, never a deep traceback."""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app, flags, logging


class UserError(ValueError):
    """Bad input from the user (a file, a key, an argument); the message names the problem."""


# Exceptions whose message is enough for the user; anything else is a bug and keeps its traceback.
USER_FACING = (
    UserError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    KeyError,
)

HELP_ARGUMENTS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")


def _run_with_user_errors(main: Callable[[], int | None]) -> int:
    """`main()`'s status; a user-facing error prints `error: <message>` and exits 2 (a bug keeps
    its traceback), an interrupt exits 130."""
    try:
        return main() or 0
    except USER_FACING as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _close_match(name: str, flag_values: flags.FlagValues) -> str:
    """` (did you mean --x?)` for the defined flag nearest to `name`, or ``."""
    # A config key (config.data.nmae) is compared with the keys, which are flags once the config
    # file is parsed; plain names with the plain flags.
    names = [known for known in flag_values if ("." in known) == ("." in name)]
    matches = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return f" (did you mean --{matches[0]}?)" if matches else ""


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flags parser with plain exits: `--help` prints the flags and exits 0; an unknown or
    malformed flag is one `error:` line and exit 2. Returns the positional arguments."""
    arguments = list(argv[1:])
    if "--" in arguments:
        arguments = arguments[: arguments.index("--")]
    if any(argument in HELP_ARGUMENTS for argument in arguments):
        print(_help(flag_values))
        sys.exit(0)
    try:
        positional = flag_values(list(argv))
        _check_config_files_loaded(flag_values)
        return positional
    except flags.UnrecognizedFlagError as error:
        name = error.flagname
        print(f"error: unknown flag --{name}{_close_match(name, flag_values)}", file=sys.stderr)
    except (AttributeError, KeyError) as error:
        # ml_collections: `--config.data.nmae=x` names a key the config does not have.
        print(f"error: {_unknown_config_key(error, arguments)}", file=sys.stderr)
    except (flags.Error, *USER_FACING) as error:
        # A bad value, or a config file that does not load: its first line names it.
        lines = str(error).strip().splitlines() or [type(error).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
    sys.exit(2)


def _help(flag_values: flags.FlagValues) -> str:
    """The program's usage (its docstring) and its flags: those of the entry point (absl names a
    script's by its path) and of the package's modules, not the libraries' (absl, TFDS)."""
    program = ("__main__", sys.argv[0])
    modules = [
        m
        for m in flag_values.flags_by_module_dict()
        if m.startswith("viewpoint_jax") or m in program
    ]
    # A console script's __main__ is pip's stub: the usage is then the module defining the flags.
    documented = [sys.modules.get("__main__")] + [sys.modules.get(m) for m in modules]
    usage = next((module.__doc__ for module in documented if module and module.__doc__), "")
    listing = "\n".join(flag_values.module_help(m) for m in modules)
    return usage.strip() + "\n\nflags:\n" + listing


def _unknown_config_key(error: Exception, arguments: Sequence[str]) -> str:
    """One line for ml_collections' `'nmae' Did you mean "name" instead of "nmae"?`."""
    text = str(error)
    named = re.findall(r'"([^"]+)"', text)  # [suggestion, key] when ml_collections has one
    key = named[1] if len(named) == 2 else (re.findall(r"\w+", text) or ["?"])[0]
    culprit = next(
        (a.split("=")[0] for a in arguments if a.startswith("--") and f".{key}" in a), key
    )
    hint = f" (did you mean {named[0]!r}?)" if len(named) == 2 else ""
    return f"unknown config key {culprit}{hint}"


def _check_config_files_loaded(flag_values: flags.FlagValues) -> None:
    """ml_collections defers a config file's load error to its first use: fail here instead."""
    for name in flag_values:
        flag = flag_values[name]
        if flag.present and type(flag).__module__.startswith("ml_collections"):
            try:
                getattr(flag.value, "lock", None)  # a failed load raises on first use
            except OSError as error:
                last = str(error).strip().splitlines()[-1].strip()
                raise UserError(f"--{name}: cannot load the config file: {last}") from None


def refuse_positional(argv: Sequence[str]) -> None:
    """Entry points without positional arguments: a stray word is a mistake, not ignored."""
    if len(argv) > 1:
        raise UserError(f"unexpected argument {argv[1]!r} (flags are --name=value)")


def _forget_entry_point_flags() -> None:
    """Drops the flags an earlier CLI of this package defined in this process.

    A process normally runs one CLI, but tests and notebooks run several one after another, and
    their flag names overlap (--config, --out, --overwrite, ...): absl refuses a second definition.
    """
    for module, module_flags in list(flags.FLAGS.flags_by_module_dict().items()):
        # absl names a module by its dotted name, or by its file when it ran as __main__
        # (`python -m viewpoint_jax.<command>`, runpy): both are this package's.
        if module.startswith("viewpoint_jax") or "viewpoint_jax" in Path(module).parts[:-1]:
            for flag in list(module_flags):
                if flag.name in flags.FLAGS:
                    delattr(flags.FLAGS, flag.name)


def run(
    main: Callable[[list[str]], int | None],
    define_flags: Callable[[], None] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """The entry point of every CLI: defines its flags (only here, so importing a CLI module as a
    library defines none), runs `main(positional argv)` under `absl.app.run` and exits with its
    status; user-facing errors print `error: <message>` and exit 2. `argv`: default sys.argv."""
    if define_flags is not None:
        _forget_entry_point_flags()
        define_flags()

    def main_with_user_errors(argv: list[str]) -> int:
        # absl.app logs at INFO by default, and Orbax and JAX log every save and restore there:
        # thousands of lines around a command's own output. `--verbosity=0` brings them back.
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        return _run_with_user_errors(lambda: main(argv))

    app.run(
        main_with_user_errors, argv=None if argv is None else list(argv), flags_parser=parse_flags
    )
