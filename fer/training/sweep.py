"""A hyperparameter search over training runs (sweep.py): an Optuna study, TPE sampler, a pruner fed by
each epoch's validation metric, the study kept in a database.

Every trial is an ordinary training run in its own folder, SWEEP_DIR/trial_NNNN/ (checkpoint, history,
run record, config): the base config with the drawn flags, written as trial.yaml, checked by the same
get_args/preflight as train_vggface2_resnet50.py and trained in this process by fer.training.loop.train,
whose on_epoch hook reports the objective to Optuna and stops a trial the pruner gives up on. The run
record (<stem>_run.json) says what the sweep made of the trial under "sweep": its number, the drawn
flags, complete / pruned / failed, the value. So compare_runs.py, TensorBoard and the evaluation work on
trials unchanged.

The study lives in a database: SQLite in SWEEP_DIR/study.db by default, or any URL (PostgreSQL: several
workers on several machines, each running the same command, share one study; trial numbers are the
study's, so no two workers run the same trial). Rerunning continues the study up to --trials. A worker
that dies leaves its trial RUNNING; its heartbeat stops, and after the grace period the next worker to
start a trial marks it failed (and its run record says so): failed trials are replaced, never lost. A
worker with no trial left to start waits for the running ones, so a dead worker's last trial is replaced too.
"""
import contextlib
import html
import io
import math
import sys
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import TrialState

from fer.cli.compare import get_args as compare_args
from fer.cli.sweep import OBJECTIVES, STUDY_DB, SweepError, redacted, storage_url
from fer.cli.train import get_args as train_args
from fer.cli.train import output_paths, preflight
from fer.training.compare import compare
from fer.training.loop import train
from fer.training.record import chosen, command_line, json_safe, run_record_path, write_json
from fer.trust import FERError, one_line, read_json, staged_outputs, write_text

HEARTBEAT_S = 20  # a running trial says it is alive this often
GRACE_S = 120  # a RUNNING trial silent this long belongs to a worker that died: marked failed
WAIT_S = 5  # how often a worker with no trial left to start looks at the others' last ones
FAILURES_IN_A_ROW = 3  # then the worker stops: the base config or the space is broken, not one trial
MEDIAN_STARTUP = 3  # finished trials before the median pruner prunes
TRIAL_DIR = "trial_{:04d}"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.RUNNING, TrialState.WAITING)


def say(*a):
    print(*a, flush=True)


# --- the objective --------------------------------------------------------------------------------
def epoch_value(row, metric, best_on):
    """The objective of one epoch's history row: the metric of the weights --best_on picks (NaN if absent)."""
    counted = chosen(row, best_on)
    if metric == "val_ccc":
        return float((counted.get("val_ccc_valence", math.nan) + counted.get("val_ccc_arousal", math.nan)) / 2)
    return float(counted.get(metric, math.nan))


def kept_epoch(kept, row, value, best_on):
    """(validation accuracy, objective value) of the epoch a trial's checkpoint keeps, after one more epoch:
    training keeps the epoch of the best validation accuracy of the --best_on weights (the first of equals), so
    the trial's value is the objective there, not the objective's best over the epochs (the checkpoint in the
    trial's folder would not have it)."""
    acc = epoch_value(row, "val_acc", best_on)
    return (acc, value) if kept is None or acc > kept[0] else kept


def better(a, b, direction):
    """The better of two values (None: none yet) under the study's direction."""
    if a is None:
        return b
    return max(a, b) if direction == "maximize" else min(a, b)


def suggest(trial, params):
    """The flags drawn for a trial, in the space's order ({} for flags whose `when` is not met)."""
    drawn = {}
    for p in params:
        if not p.active(drawn):
            continue
        if p.choices is not None:
            drawn[p.name] = trial.suggest_categorical(p.name, p.choices)
        elif p.integer:
            drawn[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            drawn[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return drawn


def flag_text(drawn):
    """The drawn flags as a command line would give them (null: the flag at its default)."""
    out = []
    for k, v in drawn.items():
        if v is None:
            out.append(f"--{k} (default)")
        elif isinstance(v, bool):
            out.append(f"--{k}" if v else ("--pretrained" if k == "no_pretrained" else f"--no_{k}"))
        else:
            out.append(f"--{k} {v:.4g}" if isinstance(v, float) else f"--{k} {v}")
    return " ".join(out)


def trial_flags(base, drawn):
    """The trial's config: the base run's given flags with the drawn ones (null: back to the default)."""
    flags = {k: v for k, v in base.given.items() if k not in ("save_path",)}
    if flags.get("tensorboard") is not None:
        flags["tensorboard"] = ""  # beside each trial's checkpoint, not one folder for all
    flags.update(drawn)
    return {k: v for k, v in flags.items() if v is not None}


def trial_run(folder, flags, base):
    """(args, argv) of a trial's training run: trial.yaml written, then composed and checked exactly as
    train_vggface2_resnet50.py --config trial.yaml --save_path ... would be."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "trial.yaml"
    write_text(yaml.safe_dump(json_safe(flags), sort_keys=False), config)
    argv = ["--config", str(config), "--save_path", str(folder / Path(base.save_path).name)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = train_args(argv)
    except SystemExit:  # a combination the training flags refuse (e.g. --warmup_epochs >= --epochs)
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "flags refused"
        raise SweepError(f"the drawn flags are refused: {message.split('error: ', 1)[-1]}") from None
    preflight(args)
    return args, argv


def mark_run(save_path, info):
    """Write the sweep's view of a trial into its run record (if the trial got as far as one)."""
    path = run_record_path(save_path)
    record = read_json(path, "run record", default=[])
    if not isinstance(record, dict):
        return False
    record["sweep"] = {**record.get("sweep", {}), **info}
    with staged_outputs() as stage:
        write_json(record, stage(path))
    return True


def drop_resume_state(save_path):
    """A trial that ended is never resumed (the study draws a new one instead): its <stem>_last.pth, the
    full training state (weights, optimiser, ...: three times the checkpoint) goes, the best checkpoint stays."""
    output_paths(save_path)["last"].unlink(missing_ok=True)


class Objective:
    """One trial: draw, write trial.yaml, train with the pruning hook, record the outcome."""

    def __init__(self, args, direction):
        self.args, self.direction = args, direction
        self.out = Path(args.out)

    def __call__(self, trial):
        a = self.args
        self.number = trial.number  # this worker's trial (others may start theirs meanwhile)
        folder = self.out / TRIAL_DIR.format(trial.number)
        trial.set_user_attr("folder", str(folder.resolve()))
        drawn = suggest(trial, a.params)
        say(f"sweep: trial {trial.number}: " + (flag_text(drawn) or "(base config)")
            + f" -> {folder}")
        info = {"study": a.study, "storage": study_home(a), "trial": trial.number, "params": drawn,
                "metric": a.metric}
        save_path = None
        kept, epochs = None, 0

        def on_epoch(row, state):
            nonlocal kept, epochs
            value = epoch_value(row, a.metric, run.best_on)
            if value != value:
                raise SweepError(f"--metric {a.metric}: not measured on this validation data (n/a at epoch "
                                 f"{row['epoch']}: no valence/arousal labels?)")
            kept = kept_epoch(kept, row, value, run.best_on)
            epochs = row["epoch"]
            trial.report(value, row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"at epoch {row['epoch']}: {a.metric} {value:.4f}")

        try:
            run, argv = trial_run(folder, trial_flags(a.base, drawn), a.base)
            save_path = run.save_path
            train(run, command=command_line("train_vggface2_resnet50.py", argv), on_epoch=on_epoch)
        except optuna.TrialPruned:
            drop_resume_state(save_path)
            mark_run(save_path, {**info, "state": "pruned", "pruned_at_epoch": epochs, "value": kept and kept[1]})
            trial.set_user_attr("epochs", epochs)
            raise
        except (FERError, KeyboardInterrupt, torch.OutOfMemoryError) as e:
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else one_line(e)
            trial.set_user_attr("error", why)
            if save_path is not None:
                mark_run(save_path, {**info, "state": "failed", "error": why, "value": kept and kept[1]})
                drop_resume_state(save_path)  # a failed trial is replaced, never resumed
            if isinstance(e, torch.OutOfMemoryError):  # a drawn batch size too large: this trial fails, in one line
                raise SweepError(f"out of memory ({why[:120]})") from None
            raise
        if kept is None:
            raise SweepError("the run trained no epoch")
        trial.set_user_attr("epochs", epochs)
        mark_run(save_path, {**info, "state": "complete", "value": kept[1]})
        drop_resume_state(save_path)
        return kept[1]


def mark_stale(study, trial):
    """Optuna's callback for a trial whose worker died (heartbeat stopped): its run record says so."""
    folder = trial.user_attrs.get("folder")
    if folder:
        for record in Path(folder).glob("*_run.json"):
            mark_run(str(record)[:-len("_run.json")] + ".pth",
                     {"trial": trial.number, "state": "failed", "error": "its worker stopped (no heartbeat)"})


# --- the study ------------------------------------------------------------------------------------
def open_storage(url):
    """The RDB storage with heartbeats (so a dead worker's trial is found and marked failed). Several
    workers creating the tables at once may collide: retried."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S, heartbeat_stale_trial_callback=mark_stale)
        except sqlalchemy.exc.OperationalError as e:
            if attempt == 4 or not url.startswith("postgresql"):
                raise SweepError(f"--storage {redacted(url)}: cannot open the database "
                                 f"({one_line(e.orig) if e.orig else type(e).__name__})") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            if attempt == 4:
                raise SweepError(f"--storage {redacted(url)}: cannot create the study's tables "
                                 f"({one_line(e.orig) if e.orig else type(e).__name__})") from None
        except sqlalchemy.exc.DatabaseError as e:  # e.g. a SQLite file that is something else: not a database
            raise SweepError(f"--storage {redacted(url)}: cannot open the database "
                             f"({one_line(e.orig) if e.orig else type(e).__name__})") from None
        time.sleep(1 + attempt)


def make_pruner(name, epochs, params=()):
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP)  # steps = epochs 1, 2, ...
    if name == "hyperband":  # the most epochs a trial trains: the base config's, unless the space draws them
        drawn = [p for p in params if p.name == "epochs"]
        top = max([epochs] + [int(p.high) for p in drawn if p.high is not None]
                  + [int(c) for p in drawn for c in p.choices or [] if c is not None])
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(top, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def space_record(args):
    """What defines the study (stored with it): a rerun or another worker must search the same thing."""
    return {"metric": args.metric, "space": [repr(p) for p in args.params],
            "base": json_safe({k: v for k, v in args.base.given.items() if k != "save_path"})}


DEFAULT_HOME = f"SWEEP_DIR/{STUDY_DB}"  # how a run record names the default storage, the folder's own study.db


def study_home(args):
    """Where this sweep's study lives, as its trials' run records name it: DEFAULT_HOME for the sweep folder's
    own study.db (wherever the folder lies now), otherwise the storage URL without its password."""
    return DEFAULT_HOME if args.storage_url == storage_url(None, args.out) else redacted(args.storage_url)


def recorded_home(storage, out):
    """study_home of a run record's storage; records written before DEFAULT_HOME named the folder's study.db
    by its absolute URL: that one, or a study.db that no longer exists (the folder moved), is the default."""
    if storage.startswith("sqlite:///") and storage.endswith("/" + STUDY_DB):
        db = Path(storage[len("sqlite:///"):])
        if db.resolve() == (Path(out) / STUDY_DB).resolve() or not db.exists():
            return DEFAULT_HOME
    return storage


def recorded_studies(out, look_at=20):
    """(study, home, trial folder) of the first look_at trials' run records that name them; unreadable or
    damaged records are passed over."""
    found = []
    for path in sorted(Path(out).glob("trial_*/*_run.json"))[:look_at]:
        record = read_json(path, "run record", default=[])
        info = record.get("sweep") if isinstance(record, dict) else None
        if isinstance(info, dict) and isinstance(info.get("study"), str) and isinstance(info.get("storage"), str):
            found.append((info["study"], recorded_home(info["storage"], out), path.parent.name))
    return found


def check_one_study(args):
    """A sweep folder holds one study: trial_NNNN is that study's trial number, so a second study's trials
    would meet the first one's folders (each refused by training: three failures, then a stop) and its page
    and table would replace the first one's. The trials' run records name their study. Without --study, the
    folder's study is continued (a renamed folder: its name is no longer the study's). Checked before the
    study is opened, so a refusal writes nothing."""
    found = recorded_studies(args.out)
    home = study_home(args)
    if not args.study_given and found and found[0][1] == home:
        args.study = found[0][0]
    for study, where, folder in found:
        if (study, where) != (args.study, home):
            raise SweepError(f"--out {args.out}: holds the trials of study {study!r} in {where} (e.g. {folder}); "
                             f"a sweep folder holds one study: continue that one (--study {study}"
                             + ("" if where == DEFAULT_HOME else f" --storage {where}") + ") or give this one "
                             "another --out")


def check_study_exists(args):
    """Trial folders in --out belong to a study that must be in the storage already: a new, empty study
    (its database deleted or replaced) would number its trials from 0 among those folders. Checked before
    the study is opened, so a refusal creates no database and no study."""
    if not any(Path(args.out).glob("trial_*/*_run.json")):
        return
    where = f"study {args.study!r} in {redacted(args.storage_url)}"
    if args.storage_url.startswith("sqlite:///"):
        db = Path(args.storage_url[len("sqlite:///"):])
        if not db.is_file() or db.stat().st_size == 0:
            raise SweepError(f"--out {args.out}: holds trial folders, but {db} (the study's database) is missing or "
                             f"empty (deleted or replaced?): a new study's trial numbers would meet those folders; "
                             f"give another --out")
    if args.study not in optuna.get_all_study_names(storage=open_storage(args.storage_url)):
        raise SweepError(f"--out {args.out}: holds trial folders, but {where} does not exist (deleted or "
                         f"replaced?): a new study's trial numbers would meet those folders; give another --out")


def open_study(args):
    direction = OBJECTIVES[args.metric]
    storage = open_storage(args.storage_url)
    study = optuna.create_study(storage=storage, study_name=args.study, direction=direction, load_if_exists=True,
                                pruner=make_pruner(args.pruner, args.base.epochs, args.params))
    if study.direction.name.lower() != direction:
        raise SweepError(f"study {args.study!r} in {redacted(args.storage_url)} {study.direction.name.lower()}s, "
                         f"--metric {args.metric} is to {direction}: give another --study or --out")
    mine, theirs = space_record(args), study.user_attrs.get("defines")
    if theirs is None:
        study.set_user_attr("defines", mine)
    elif theirs != mine:
        what = next(k for k in mine if mine[k] != theirs.get(k))
        flag = {"metric": "--metric", "space": "--space", "base": "--config"}[what]
        raise SweepError(f"study {args.study!r} in {redacted(args.storage_url)} was run with another {flag}; "
                         f"continue it with the same one, or start a new study (--study NAME or another --out)")
    # Seeded, and distinct per worker start: the trials the study holds when this worker joins.
    study.sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.trials),
                                               n_startup_trials=args.startup_trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return study


def counts(study):
    trials = study.get_trials(deepcopy=False)
    return {s: sum(t.state == s for t in trials) for s in TrialState}, trials


def progress(study, target, direction, metric, started):
    """One line: trials done / running / pruned / failed, best so far, ETA."""
    n, trials = counts(study)
    done, running = n[TrialState.COMPLETE] + n[TrialState.PRUNED], sum(n[s] for s in LIVE)
    line = (f"sweep: {done}/{target} trials done ({n[TrialState.COMPLETE]} complete, {n[TrialState.PRUNED]} pruned), "
            f"{running} running, {n[TrialState.FAIL]} failed")
    best = best_trial(study, direction)
    if best is not None:
        line += f" | best {metric} {best.value:.4f} (trial {best.number})"
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                 if t.state in FINISHED and t.datetime_complete and t.datetime_start]
    left = max(0, target - done)
    if durations and left:
        workers = running + 1  # the others running now, and this worker
        line += f" | ETA {eta_text(sum(durations) / len(durations) * left / workers)}"
    elif not left:
        line += f" | {time.time() - started:.0f}s in this worker"
    return line


def eta_text(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def sweep(args):
    """sweep.py once its flags, space and base config are checked (fer.cli.sweep.get_args). Returns the exit code."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this module says what happened, in its own lines
    direction = OBJECTIVES[args.metric]
    check_one_study(args)
    check_study_exists(args)
    study = open_study(args)
    say(f"sweep: study {args.study!r} in {redacted(args.storage_url)}: {len(study.trials)} trials so far, "
        f"target {args.trials}; {args.metric} to {direction}, TPE (seed {args.seed}), pruner {args.pruner}; "
        f"searching {', '.join(p.name for p in args.params)}")
    objective, started, failed_in_a_row, waiting = Objective(args, direction), time.time(), 0, False
    while True:
        n, _ = counts(study)
        done, running = n[TrialState.COMPLETE] + n[TrialState.PRUNED], sum(n[s] for s in LIVE)
        if done >= args.trials:
            break
        objective.number = None
        try:
            if done + running >= args.trials:
                # The last trials run elsewhere: wait for them, so that the study is whole when a worker ends.
                # One whose worker died (killed, power cut) is failed once its heartbeat is GRACE_S old, and this
                # worker runs a trial in its place.
                if not waiting:
                    say(f"sweep: waiting for {running} running trial(s) of other workers (or of a killed one: "
                        f"failed {GRACE_S} s after its last heartbeat, then replaced here)")
                waiting = True
                time.sleep(WAIT_S)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                continue
            waiting = False
            study.optimize(objective, n_trials=1, catch=(FERError,), gc_after_trial=True)
        except KeyboardInterrupt:
            say(progress(study, args.trials, direction, args.metric, started))
            what = ("while waiting for the other workers' trials" if objective.number is None else
                    f"trial {objective.number} is marked failed (the study draws a new one instead)")
            print(f"\ninterrupted: {what}; rerun the same command to continue the study", file=sys.stderr)
            write_summary(args, study, direction)
            return 130
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == objective.number)
        if trial.state == TrialState.FAIL:
            failed_in_a_row += 1
            say(f"sweep: trial {trial.number} failed: {trial.user_attrs.get('error', 'see above')}")
            if failed_in_a_row >= FAILURES_IN_A_ROW:
                write_summary(args, study, direction)
                raise SweepError(f"{failed_in_a_row} trials in a row failed (the last: "
                                 f"{trial.user_attrs.get('error', 'see above')}): check --config and --space")
        else:
            failed_in_a_row = 0
            if trial.state == TrialState.PRUNED:
                last = trial.last_step
                say(f"sweep: trial {trial.number} pruned at epoch {last}: {args.metric} "
                    f"{trial.intermediate_values.get(last, math.nan):.4f}")
            else:
                say(f"sweep: trial {trial.number} complete: {args.metric} {trial.value:.4f}")
        say(progress(study, args.trials, direction, args.metric, started))
    say(progress(study, args.trials, direction, args.metric, started))
    write_summary(args, study, direction)
    return 0


# --- the table and the page -------------------------------------------------------------------------
def best_trial(study, direction):
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return None
    return (max if direction == "maximize" else min)(complete, key=lambda t: t.value)


def importances(study):
    """{flag: importance} over the complete trials (optuna.importance), or a line saying why there is none."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return f"needs 2 complete trials ({len(complete)} so far)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as e:
        return one_line(e)


def plot_sweep(path, study, direction, metric, imp):
    """Optimisation history (every trial's value, pruned ones at their last epoch, the best so far) and
    parameter importance, side by side."""
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE]
    pruned = [(t.number, t.intermediate_values[t.last_step]) for t in trials
              if t.state == TrialState.PRUNED and t.last_step is not None]
    if done:
        ax.plot(*zip(*done), "o", color="tab:blue", label="complete")
        best, line = None, []
        for number, value in done:
            best = better(best, value, direction)
            line.append((number, best))
        ax.step(*zip(*line), where="post", color="tab:red", label="best so far")
    if pruned:
        ax.plot(*zip(*pruned), "x", color="grey", label="pruned (last epoch)")
    ax.set(title="optimisation history", xlabel="trial", ylabel=metric)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    if isinstance(imp, dict) and imp:
        names = list(imp)[::-1]
        bx.barh(names, [imp[k] for k in names], color="tab:green")
        bx.set(title="parameter importance", xlabel="share of the variation explained")
    else:
        bx.set_axis_off()
        bx.set_title("parameter importance")
        bx.text(0.5, 0.5, f"not available:\n{imp}", ha="center", va="center", wrap=True, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def trials_html(study, args, direction, imp):
    best = best_trial(study, direction)
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        value = t.value if t.state == TrialState.COMPLETE else t.intermediate_values.get(t.last_step) \
            if t.last_step is not None else None
        folder = Path(t.user_attrs.get("folder", ""))
        link = f'<a href="{html.escape(folder.name)}/">{html.escape(folder.name)}</a>' \
            if folder.name and folder.parent == Path(args.out).resolve() else html.escape(str(folder) or "")
        params = flag_text(t.params)
        note = t.user_attrs.get("error", "")
        rows.append(f"<tr><td>{t.number}</td><td>{t.state.name.lower()}</td>"
                    f"<td>{'' if value is None else f'{value:.4f}'}</td><td>{t.last_step or ''}</td>"
                    f"<td>{html.escape(params)}</td><td>{link}</td><td>{html.escape(note)}</td></tr>")
    best_text = "no complete trial yet" if best is None else \
        (f"trial {best.number}: {args.metric} {best.value:.4f} with "
         + html.escape(flag_text(best.params)))
    imp_text = ", ".join(f"{k} {v:.2f}" for k, v in imp.items()) if isinstance(imp, dict) else html.escape(imp)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>sweep {html.escape(args.study)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:2px 8px;font-size:13px}}</style></head><body>
<h1>Sweep {html.escape(args.study)}</h1>
<p>{html.escape(redacted(args.storage_url))}; {args.metric} ({direction}); base config {html.escape(str(args.config))};
search space {html.escape(str(args.space))}.</p>
<p><b>Best:</b> {best_text}</p><p><b>Parameter importance:</b> {imp_text}</p>
<img src="sweep.png" alt="optimisation history and parameter importance">
<p>The runs side by side: <a href="runs_table.md">runs_table.md</a> (compare_runs.py {html.escape(str(args.out))}).</p>
<table><tr><th>trial</th><th>state</th><th>{args.metric}</th><th>epochs</th><th>flags drawn</th><th>run</th>
<th>note</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""


def write_summary(args, study, direction):
    """sweep.png, sweep.html and the compare_runs table runs_table.md in the sweep folder; says the best."""
    out = Path(args.out)
    best = best_trial(study, direction)
    imp = importances(study)
    with staged_outputs() as stage:
        plot_sweep(stage(out / "sweep.png"), study, direction, args.metric, imp)
        write_text(trials_html(study, args, direction, imp), out / "sweep.html", stage)
    if any(out.glob("trial_*/*_run.json")):
        sort = {"val_f1_macro": "f1_macro", "val_ccc_valence": "ccc_valence", "val_ccc_arousal": "ccc_arousal"}
        compare(compare_args([str(out), "--out", str(out / "runs_table.md"), "--sort", sort.get(args.metric, "val_acc")]))
    if best is not None:
        say(f"sweep: best trial {best.number}: {args.metric} {best.value:.4f} with "
            + flag_text(best.params)
            + f" ({out / TRIAL_DIR.format(best.number)})")
    say(f"sweep: wrote {out / 'sweep.html'}, {out / 'sweep.png'}"
        + (f", {out / 'runs_table.md'}" if (out / "runs_table.md").exists() else ""))

