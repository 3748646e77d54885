"""Flags of sweep.py (a hyperparameter search with Optuna over training runs), the search-space file and
the study's storage. Torch-free (and Optuna-free), like every module of fer.cli: a mistyped flag, a bad
search space or a missing base config is one line within a second.

The search space is a YAML file of training flag -> what to try, in the order the flags are drawn:

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}     # a number in [low, high] (log scale); an integer if the
    epochs: {low: 2, high: 6}                      #   flag takes integers; optional step (not with log)
    arch: {choices: [resnet18, resnet34]}          # one of the values (null: the flag left at its default)
    mixup: {choices: [null, 0.2, 0.8]}
    ema: {choices: [true, false]}                  # an on/off flag: true or false
    freeze_epochs: {choices: [0, 1], when: {arch: resnet34}}   # drawn only when arch came out resnet34
                                                               # (when: {flag: [value, ...]} for several)

A flag not drawn (its `when` not met) keeps the base config's value. Every value is checked by the
training flag's own type and choices, as in a --config file.
"""
import os
from pathlib import Path

from fer.cli import ArgumentParser, int_at_least, positive_int
from fer.cli.config import ConfigError, _checked, read_config_file
from fer.trust import FERError, check_input, check_output, check_outputs

SCRIPT = "sweep.py"
# The objective (--metric): the validation metric of each epoch, of the weights the run's --best_on picks
# (ema_val_* with --best_on ema); a trial's value is its best epoch's. val_ccc: mean of valence and arousal CCC.
OBJECTIVES = {"val_acc": "maximize", "val_f1_macro": "maximize", "val_ccc": "maximize",
              "val_ccc_valence": "maximize", "val_ccc_arousal": "maximize", "val_rmse": "minimize",
              "val_loss": "minimize"}
PRUNERS = ("median", "hyperband", "none")
# Flags a search may not draw: where the trial's files go and how the invocation runs are the sweep's.
NOT_SEARCHED = ("config", "resume", "overwrite", "save_path", "tensorboard", "device")
SPEC_KEYS = ("low", "high", "log", "step", "choices", "when")
STUDY_DB = "study.db"  # the default storage: a SQLite file in the sweep folder
SQL_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "mysql", "mysql+pymysql")


class SweepError(FERError):
    """A sweep that cannot start or go on, in one line."""


class Param:
    """One searched flag: a range (low, high, log, step; integer if the flag is) or choices, drawn only
    when every flag named in `when` came out as one of the values given there."""

    def __init__(self, name, low=None, high=None, log=False, step=None, choices=None, integer=False, when=None):
        self.name, self.low, self.high, self.log, self.step = name, low, high, log, step
        self.choices, self.integer, self.when = choices, integer, when or {}

    def __repr__(self):
        what = f"choices={self.choices}" if self.choices is not None else \
            f"{'int' if self.integer else 'float'} [{self.low}, {self.high}]{' log' if self.log else ''}"
        return f"Param({self.name}: {what}{f', when {self.when}' if self.when else ''})"

    def active(self, drawn):
        """Whether this flag is drawn, given the values drawn before it."""
        return all(name in drawn and drawn[name] in values for name, values in self.when.items())


def train_actions():
    """The training flags (dest -> argparse action), from fer.cli.train's parser."""
    from fer.cli.train import flags_of, parser
    return {a.dest: a for a in flags_of(parser())}


def read_space(path):
    """The search space of a YAML file: a list of Param, in the file's order. Every mistake is one line
    naming the file and the flag."""
    try:
        data = read_config_file(path)  # YAML or JSON, one line if unreadable
    except ConfigError as e:
        raise SweepError(str(e).replace(f"--config {path}", f"--space {path}")) from None
    if not data:
        raise SweepError(f"--space {path}: no flag to search (expected flag: {{low, high}} or {{choices}})")
    actions = train_actions()
    params = []
    for name, spec in data.items():
        name = str(name)
        where = f"--space {path}: {name}"
        if name not in actions:
            import difflib
            hint = difflib.get_close_matches(name, list(actions), 1)
            raise SweepError(f"{where}: not a training flag" + (f" (did you mean {hint[0]}?)" if hint else ""))
        if name in NOT_SEARCHED:
            raise SweepError(f"{where}: set by the sweep itself, not searched ({', '.join(NOT_SEARCHED)})")
        if not isinstance(spec, dict) or not spec:
            raise SweepError(f"{where}: expected {{low: A, high: B}} or {{choices: [...]}}, got {spec!r}")
        unknown = [k for k in spec if k not in SPEC_KEYS]
        if unknown:
            raise SweepError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(SPEC_KEYS)})")
        action = actions[name]
        try:
            params.append(_param(name, spec, action, where, path, params))
        except ConfigError as e:  # a value the flag refuses, said as for a --config file
            raise SweepError(str(e).replace(f"--config {path}", f"--space {path}")) from None
    return params


def _param(name, spec, action, where, path, earlier):
    when = _when(spec.get("when"), where, earlier)
    if "choices" in spec:
        if any(k in spec for k in ("low", "high", "log", "step")):
            raise SweepError(f"{where}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{where}: choices must be a non-empty list")
        for value in choices:
            if isinstance(value, (list, dict)):
                raise SweepError(f"{where}: choices are single values (text, numbers, true/false, null), not {value!r}")
            if value is None and action.nargs == 0:
                raise SweepError(f"{where}: an on/off flag's choices are true and false")
            if value is not None:
                _checked(action, name, value, path)
        if len({repr(v) for v in choices}) < len(choices):
            raise SweepError(f"{where}: a value is listed twice in choices")
        return Param(name, choices=choices, when=when)
    if "low" not in spec or "high" not in spec:
        raise SweepError(f"{where}: a range needs both low and high (or give choices)")
    type_name = getattr(action.type, "__name__", None)
    if action.nargs == 0 or type_name not in ("int", "float"):
        raise SweepError(f"{where}: not a numeric flag: give choices")
    integer = type_name == "int"
    low, high = (_number(spec[k], integer, f"{where}: {k}") for k in ("low", "high"))
    for value in (low, high):
        _checked(action, name, value, path)
    if not low < high:
        raise SweepError(f"{where}: low {low} must be below high {high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SweepError(f"{where}: log must be true or false")
    if log and low <= 0:
        raise SweepError(f"{where}: a log-scale range needs low > 0")
    step = spec.get("step")
    if step is not None:
        step = _number(step, integer, f"{where}: step")
        if log:
            raise SweepError(f"{where}: step and log cannot go together")
        if not 0 < step <= high - low:
            raise SweepError(f"{where}: step must be in (0, high - low]")
    return Param(name, low, high, log, step, integer=integer, when=when)


def _number(value, integer, where):
    if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise SweepError(f"{where}: expected a finite number, got {value!r}")
    if integer:
        if value != int(value):
            raise SweepError(f"{where}: this flag takes integers, got {value!r}")
        return int(value)
    return float(value)


def _when(when, where, earlier):
    """{flag: [values]} of a `when:`, each flag one with choices earlier in the file."""
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise SweepError(f"{where}: when must be {{flag: value}} or {{flag: [values]}}")
    drawn = {p.name: p for p in earlier}
    out = {}
    for other, values in when.items():
        other = str(other)
        if other not in drawn or drawn[other].choices is None:
            raise SweepError(f"{where}: when names {other}, which must be a flag with choices earlier in the file")
        values = values if isinstance(values, list) else [values]
        missing = [v for v in values if v not in drawn[other].choices]
        if not values or missing:
            raise SweepError(f"{where}: when {other}: {missing[0] if missing else 'no value'!r} is not one of its "
                             f"choices {drawn[other].choices}")
        out[other] = values
    return out


# --- storage --------------------------------------------------------------------------------------
def storage_url(storage, out):
    """The SQLAlchemy URL of the study's database: a SQLite file in the sweep folder by default, else
    the URL given (postgresql://user@host/db runs on psycopg 3, the driver the kit pins)."""
    if not storage:
        return f"sqlite:///{Path(out).resolve() / STUDY_DB}"
    scheme = storage.split("://", 1)[0] if "://" in storage else ""
    if scheme not in SQL_SCHEMES:
        raise SweepError(f"--storage {redacted(storage)}: expected a database URL (sqlite:///FILE, "
                         f"postgresql://USER@HOST/DB, ...), got scheme {scheme or 'none'!r}")
    if scheme == "postgresql":
        storage = "postgresql+psycopg" + storage[len("postgresql"):]
    return storage


def redacted(url):
    """The URL without its password, for lines and records."""
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("://", 1)
    auth, host = rest.split("@", 1)
    return f"{scheme}://{auth.split(':', 1)[0]}{':***' if ':' in auth else ''}@{host}"


# --- the command line -------------------------------------------------------------------------------
def parser(description=None):
    p = ArgumentParser(description=description)
    p.add_argument("--config", metavar="BASE.yaml", required=True,
                   help="the base run: a training config (e.g. an earlier run's <stem>_config.yaml); every trial is "
                        "this run with the searched flags changed")
    p.add_argument("--space", metavar="SPACE.yaml", required=True,
                   help="the search space: training flag -> {low, high[, log, step]} or {choices}, optional "
                        "when: {flag: value} (see the README, Searching)")
    p.add_argument("--out", metavar="SWEEP_DIR", required=True,
                   help="the sweep folder: a run folder per trial (trial_0000/, ...), study.db (the default "
                        "storage), the table runs_table.md and the page sweep.html with sweep.png")
    p.add_argument("--trials", type=positive_int, default=20,
                   help="trials the study should hold in all (finished, pruned and running; failed ones are "
                        "replaced): a rerun, or another worker, continues up to this number")
    p.add_argument("--metric", choices=OBJECTIVES, default="val_acc",
                   help="the objective: this validation metric of each epoch, of the weights the run's --best_on "
                        "picks; a trial's value is its best epoch's (val_ccc: mean of valence and arousal CCC; "
                        "val_rmse and val_loss are minimised, the others maximised)")
    p.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="median: stop a trial whose epoch is below the median of earlier trials at that epoch "
                        "(once 3 trials have finished; from the first epoch on); hyperband: successive halving "
                        "over the epochs; none")
    p.add_argument("--storage", metavar="URL", default=None,
                   help=f"the study's database (default: sqlite in SWEEP_DIR/{STUDY_DB}); "
                        "postgresql://USER@HOST/DB lets several workers on several machines share one study")
    p.add_argument("--study", metavar="NAME", default=None,
                   help="the study's name in the database (default: the study of the trials in SWEEP_DIR, else "
                        "the SWEEP_DIR folder's name)")
    p.add_argument("--seed", type=int_at_least(0, 2**31 - 1), default=0,
                   help="seed of the TPE sampler (a second worker on the same study: give it another seed)")
    p.add_argument("--startup_trials", type=positive_int, default=5,
                   help="random trials before TPE models the results")
    return p


def get_args(argv=None, description=None):
    """The sweep's flags, its search space read and checked, the base config composed as training would
    (its flag errors in one line), the paths checked: all before Optuna or torch load."""
    p = parser(description)
    args = p.parse_args(argv)
    try:
        check_input(args.config, "--config")
        check_input(args.space, "--space")
        args.params = read_space(args.space)
        args.storage_url = storage_url(args.storage, args.out)
    except FERError as e:
        p.error(str(e))
    args.base = base_run(p, args.config)
    args.study_given = args.study is not None  # without it: the folder's own study (fer.training.sweep)
    args.study = args.study or Path(os.path.abspath(args.out)).name
    check_output(args.out, "--out", folder=True)
    if args.storage_url.startswith("sqlite:///"):  # trust rule 2: the study database is never another tool's file
        check_outputs([("--storage", args.storage_url[len("sqlite:///"):])],
                      [("--config", args.config), ("--space", args.space)], kind="study database")
    return args


def base_run(p, config):
    """The base config's flags as given (a dict), composed and checked by training's own get_args, and its
    index files there."""
    from fer.cli.train import get_args as train_args
    base = train_args(["--config", config])  # a bad value: one line, exit 2, as training says it
    for flag in ("train_meta", "val_meta"):
        for path in getattr(base, flag):
            try:
                check_input(path, f"--config {config}: {flag}")
            except FERError as e:
                p.error(str(e))
    return base
