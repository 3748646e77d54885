"""--config FILE: flag values from YAML or JSON, checked by the flags' own argparse types.

A run's <stem>_config.yaml holds the flags its user gave (the --config file's and the command line's),
not the values resolved from them: --config FILE --flag x is the original command plus --flag x, and
defaults that depend on other flags are decided again (fer.cli.train.resolve). An older file that holds
resolved values still loads: its values count as given.

Torch-free, like every module of fer.cli.
"""
import argparse
import difflib
import sys
from pathlib import Path

from fer.trust import FERError, check_input, load_json, load_yaml, read_regular_text

NOT_CONFIG = ("config", "resume", "overwrite", "quiet")  # how this invocation runs, not what the run is
MAX_CONFIG_BYTES = 1 << 20  # a config holds dozens of flags


class ConfigError(FERError):
    """A --config file that cannot be used, named with the key."""


# --- --config -----------------------------------------------------------------------------------
def config_values(args):
    """The flags to write as <stem>_config.yaml, but how this invocation runs (NOT_CONFIG): those the user
    gave (args.given, as fer.cli.train.get_args records them), or every flag of args without that record."""
    given = getattr(args, "given", None)
    return {k: v for k, v in (vars(args) if given is None else given).items() if k not in NOT_CONFIG}


def write_config(args, path):
    import yaml

    Path(path).write_text(yaml.safe_dump(config_values(args), sort_keys=False))


def read_config_file(path):
    """A dict of flag name -> value from a YAML or JSON file (PyYAML's safe loader only)."""
    check_input(path, "--config")
    # trust rule 6: a regular file of at most 1 MiB (a FIFO does not hang), no duplicate keys, no alias bomb
    text = read_regular_text(path, "--config", limit=MAX_CONFIG_BYTES)
    kind = "JSON" if Path(path).suffix.lower() == ".json" else "YAML"
    try:
        if kind == "JSON":
            data = load_json(text, f"--config {path}", object_pairs_hook=lambda pairs: _unique(pairs, path))
        else:
            data = load_yaml(text, f"--config {path}")
    except FERError:
        raise
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: both say where
        mark = getattr(e, "problem_mark", None)
        first = f"{e.problem} at line {mark.line + 1}" if mark is not None and getattr(e, "problem", None) else \
            (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--config {path}: not valid {kind} ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected flag name -> value pairs, found a {type(data).__name__}")
    return data


def _unique(pairs, path):
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise ConfigError(f"--config {path}: key {twice!r} given twice; give each key once")
    return dict(pairs)


def _checked(action, key, value, path):
    """value run through the flag's own argparse type and choices, as if typed on the command line."""
    where = f"--config {path}: {key}"
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if value is None:
        if action.default is None or action.nargs == "?":
            return None
        raise ConfigError(f"{where}: must have a value (null given)")
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        if not values and action.nargs == "+":
            raise ConfigError(f"{where}: expected at least one value")
        return [_checked_one(action, where, v) for v in values]
    return _checked_one(action, where, value)


def _checked_one(action, where, value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected {getattr(action.type, '__name__', 'text')}, got {value!r}")
    if action.type is None and not isinstance(value, str):
        raise ConfigError(f"{where}: expected text, got {value!r}")
    text = value if isinstance(value, str) else repr(value)
    try:
        out = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if action.choices is not None and out not in action.choices:
        raise ConfigError(f"{where}: {out!r} is not one of {', '.join(map(str, action.choices))}")
    return out


# --- --recipe -----------------------------------------------------------------------------------
RECIPES = Path(__file__).resolve().parents[2] / "recipes"  # recipes/NAME.yaml beside the scripts


def recipe_names():
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def read_recipe(parser, name):
    """The flag values of recipes/NAME.yaml, checked like a --config file's. A recipe is a layer between the
    defaults and --config: it names no other recipe or config, and how an invocation runs is not its business."""
    path = RECIPES / f"{name}.yaml"
    try:
        data = read_config_file(path)
        actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
        values = {}
        for key, value in data.items():
            key = str(key)
            if key not in actions or key in NOT_CONFIG or key == "recipe":
                raise ConfigError(f"--recipe {name}: {path} sets {key!r}, which is not a flag a recipe can set")
            values[key] = _checked(actions[key], key, value, path)
    except FERError as e:
        parser.error(str(e))
    return values


def apply_config(parser, argv=None):
    """Read --config FILE (if given) into the parser's defaults, so the command line still overrides it."""
    parser.set_defaults(**read_config(parser, argv))


def read_config(parser, argv=None):
    """The flag values of --config FILE, if argv gives one ({} if not), each checked as if typed on the
    command line. Unknown keys, wrong types and refused values end in one line naming the key."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return {}
    try:
        data = read_config_file(known.config)
        actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config") and a.option_strings}
        values = {}
        for key, value in data.items():
            key = str(key)
            if key == "overwrite":  # trust rule 3: replacing a run is a choice of this invocation, never a file's
                raise ConfigError(f"--config {known.config}: overwrite is not read from a file (a rerun would replace "
                                  f"the finished run); remove the key, and give --overwrite on the command line")
            if key not in actions:
                hint = difflib.get_close_matches(key, list(actions), 1)
                raise ConfigError(f"--config {known.config}: unknown key {key!r}"
                                  + (f" (did you mean {hint[0]}?)" if hint else ""))
            values[key] = _checked(actions[key], key, value, known.config)
            if key == "tensorboard" and values[key]:  # trust rule 3: the first run's curves are not written into
                print(f"note: --config {known.config}: tensorboard {values[key]} is that run's folder; this run writes "
                      f"its curves beside its own checkpoint (give --tensorboard DIR to choose)", file=sys.stderr)
                values[key] = ""
    except FERError as e:
        parser.error(str(e))
    return values
