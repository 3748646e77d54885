"""The trust rules every script follows, in one place.

- Outputs are staged: each file is written beside its target under a hidden temporary name and
  renamed into place only when every file of the run is complete, so a failed or interrupted run
  leaves earlier outputs byte-identical and no stray temporary file.
- Inputs and outputs are checked before any expensive work: inputs exist and are regular files or
  folders; an output is never one of the inputs; an earlier output is replaced only when asked.
- Every expected failure is an FERError and ends the script with one line, never a traceback.

Imports nothing heavy: every other module may import this one.
"""
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from fer.constants import PROGRESS_LOG_SECONDS


class FERError(Exception):
    """A problem that ends a script with one line; the message names the file, flag or value."""


# --- staged outputs -----------------------------------------------------------------------------
def _disk_full(path):
    """True when the filesystem that holds path has (almost) no room left."""
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


class CompleteInterrupt(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) that arrived during a commit and was held back until it was complete: the
    outputs it names are whole and in place."""

    def __init__(self, committed):
        super().__init__()
        self.committed = list(committed)


class Stage:
    """Temporary names for a run's outputs; commit() renames them all into place."""

    def __init__(self):
        self.files = {}  # target -> temporary path
        self.obsolete = []  # files of an earlier run to remove with the commit (not after it: a Ctrl-C between)
        self.output_sets = []  # (folder, name): manifests written with the commit (stage_output_set)
        self.committed = []  # targets renamed into place by the last commit

    def __call__(self, target):
        """The temporary path to write instead of target (same folder and suffix, so writers that
        pick a format from the suffix, e.g. cv2 and matplotlib, still do)."""
        target = Path(target)
        if target in self.files:
            return self.files[target]
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.{len(self.files)}.tmp{target.suffix}")
        self.files[target] = tmp
        return tmp

    def commit(self):
        """Rename every temporary into place. Ctrl-C (or SIGTERM) during the renames is held back
        until the last one is done, so the files of a run (an index and its images, a checkpoint and
        its history) are replaced together or not at all."""
        for target, tmp in self.files.items():
            if not tmp.exists():
                raise FERError(f"{target}: nothing was written")
            if target.is_dir() and not target.is_symlink():  # made during the run: os.replace would fail halfway
                raise FERError(f"{target}: is a folder now (it was made while the run wrote its files); nothing "
                               f"was replaced")
        for folder, name in self.output_sets:  # the manifest is renamed with the files it lists
            self._write_manifest(folder, name)
        if not self.files:
            with signals_held():
                for path in self.obsolete:
                    path.unlink(missing_ok=True)
            self.obsolete = []
            return
        # One atomic step (rule 4): a journal of every rename is written (atomically) into every folder the
        # commit writes to before the first rename; a process killed between the renames leaves them, and
        # finish_commits() on any of those folders completes the renames and removes every copy.
        folders = dict.fromkeys(Path(os.path.abspath(t)).parent for t in self.files)
        journals = [f / f".fer-commit.{os.getpid()}.json" for f in folders]
        plan = {"renames": [[os.path.abspath(t), os.path.abspath(g)] for g, t in self.files.items()],
                "obsolete": [os.path.abspath(p) for p in self.obsolete], "journals": [str(j) for j in journals]}
        try:
            self._renames(journals, plan)
        except KeyboardInterrupt:  # held back until the commit was complete: say so
            raise CompleteInterrupt(self.committed) from None

    def _renames(self, journals, plan):
        with signals_held():
            for journal in journals:
                tmp_journal = journal.with_name(journal.name + ".tmp")
                with open(tmp_journal, "w") as fh:
                    json.dump(plan, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp_journal, journal)
            for target, tmp in self.files.items():
                os.replace(tmp, target)
            for path in self.obsolete:
                path.unlink(missing_ok=True)
            for journal in journals:
                journal.unlink()
            self.committed += list(self.files)
            self.files, self.obsolete = {}, []

    def _write_manifest(self, folder, name):
        """The manifest of an output set: the files this stage writes into it, with the size and mtime
        they will have (a rename keeps both), staged like them."""
        listed = {}
        for target, tmp in self.files.items():
            if tmp.exists() and not tmp.is_dir():
                st = tmp.stat()
                # relative to the set's folder: a copy of the folder (cp -a, rsync) names its own files
                listed[os.path.relpath(os.path.abspath(target), os.path.abspath(folder))] = [st.st_size, st.st_mtime_ns]
        Path(self(_manifest(folder, name))).write_text(json.dumps({"files": listed}, indent=1))

    def discard(self):
        for tmp in self.files.values():
            try:
                if tmp.is_dir():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
            except FileNotFoundError:
                pass
        self.files = {}


@contextmanager
def signals_held(signals=(signal.SIGINT, signal.SIGTERM)):
    """Deliver these signals only after the block: their handlers (Python runs them in the main thread,
    whichever thread the kernel picks) just note them meanwhile; the first is raised again after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught, old = [], {}
    for s in signals:
        if signal.getsignal(s) is not None:  # None: a handler Python did not install, left alone
            old[s] = signal.signal(s, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


def _failed_target(stage, e):
    """The output being written when e happened: the one whose temporary e names, else the one
    staged last (writers ask for their temporary name just before they write)."""
    name = getattr(e, "filename", None)
    for target, tmp in stage.files.items():
        if name and os.path.abspath(name) == os.path.abspath(tmp):
            return target
    return next(reversed(stage.files), None)


@contextmanager
def staged_outputs():
    """with staged_outputs() as stage: write(stage(target)) ... -- all targets replaced at the end,
    none on an exception (Ctrl-C included). A full disk becomes one FERError naming the file."""
    stage = Stage()
    try:
        yield stage
        stage.commit()
    except BaseException as e:
        target = _failed_target(stage, e)  # not the first file of the run: the one that failed
        full = target is not None and _disk_full(stage.files[target])
        stage.discard()
        if isinstance(e, FERError):
            raise
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or (isinstance(e, Exception) and full):
            raise FERError(f"no space left on device writing {target or getattr(e, 'filename', None) or 'output'}") \
                from None
        if isinstance(e, OSError) and e.errno == errno.EFBIG:
            raise FERError(f"{target or e.filename or 'output'}: not written, larger than this process may write "
                           f"(the file-size limit, ulimit -f, or the file system's)") from None
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise FERError(f"cannot write {e.filename or 'output'}: {e.strerror}") from None
        raise


def write_text(text, target, stage=None):
    """Write a text file atomically (alone, or as part of a stage)."""
    if stage is None:
        with staged_outputs() as stage:
            return write_text(text, target, stage)
    Path(stage(target)).write_text(text)


# --- up-front checks ----------------------------------------------------------------------------
def check_replaceable(path, flag):
    """An output file is renamed into place: an existing target must be a plain file. Renaming onto a
    link would replace the link itself (think of /dev/stdout), onto a FIFO or device the special file."""
    path = Path(path)
    if path.is_symlink():
        raise FERError(f"{flag} {path}: is a symbolic link; give the path it points to")
    if path.exists() and not path.is_file():
        mode = path.stat().st_mode
        kind = next((what for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                                             (stat.S_ISSOCK, "a socket")) if test(mode)), "a device")
        raise FERError(f"{flag} {path}: exists and is {kind}, not a regular file")


def check_not_inputs(outputs, inputs):
    """Refuse two outputs of a run that are the same file (a predictions CSV onto the metrics JSON) and
    an output that is one of the run's inputs (a checkpoint overwritten by its own export, an index by
    a checkpoint): compared as files, so links and other spellings are caught too."""
    seen = {}
    for flag, out in outputs:
        if out:
            key = os.path.normcase(os.path.realpath(out))
            if key in seen:
                raise FERError(f"{flag} {out}: is also the output {seen[key][0]} {seen[key][1]}; one run would "
                               f"write both to the same file: choose another name")
            seen[key] = (flag, out)
    for flag, out in outputs:
        for in_flag, inp in inputs:
            if inp and out and os.path.exists(out) and os.path.exists(inp) and os.path.samefile(out, inp):
                raise FERError(f"{flag} {out}: is the input {in_flag} {inp}; choose another output name")


_TEMPORARY = re.compile(r"\.(?P<stem>.*)\.(?P<pid>\d+)\.\d+\.tmp(?P<suffix>\.[^.]*)?")  # Stage's names


def process_gone(pid):
    """True when no process has this id (a temporary of it is stale)."""
    if pid == os.getpid() or os.name == "nt":  # os.kill(pid, 0) would end a process on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process
        return False
    return False


def remove_stale_temporaries(folder, target=None):
    """Remove the temporaries that a staged run killed before it could clean up left in folder (of
    target only, when given): names Stage gives, of processes that no longer exist. Says so; returns
    the removed paths."""
    folder, removed = Path(folder), []
    finish_commits(folder)  # the temporaries a half-done commit lists are the new state: renamed, not removed
    finish_commits(folder.parent)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.fullmatch(entry.name)
        if not m or (target is not None and (m["stem"], m["suffix"] or "") != (target.stem, target.suffix)):
            continue
        if not process_gone(int(m["pid"])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    if removed:
        print(f"removed {len(removed)} temporary file(s) left in {folder} by an interrupted run: "
              f"{', '.join(p.name for p in removed[:3])}{' ...' if len(removed) > 3 else ''}")
    return removed


def check_output(path, flag, folder=False):
    """Fail now, not after an epoch, if path cannot be written: a path that is a folder (or a file,
    for a folder), a link or special file, a parent that is a file, a read-only folder. Temporaries
    that an interrupted earlier run left for this output (or in this folder) are removed."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise FERError(f"{flag} {path}: is {'a file' if folder else 'a folder'}")
    if not folder:
        check_replaceable(path, flag)
    parent = path if folder else path.parent
    while not parent.exists():
        if parent.is_symlink():
            raise FERError(f"{flag} {path}: {parent} is a broken link")
        parent = parent.parent
    if not parent.is_dir():
        raise FERError(f"{flag} {path}: {parent} is a file, not a folder")
    # A real probe: os.access says yes to root even on a read-only filesystem.
    try:
        fd = os.open(parent / f".write-test.{os.getpid()}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(parent / f".write-test.{os.getpid()}")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise FERError(f"{flag} {path}: no space left on device in {parent}") from None
        raise FERError(f"{flag} {path}: folder {parent} is not writable ({e.strerror})") from None
    if path.is_dir() if folder else parent == path.parent:
        remove_stale_temporaries(path if folder else parent, None if folder else path)
    return path


def check_input(path, flag, folder=False):
    """An input that must exist (a regular file, or a folder)."""
    path = Path(path)
    if folder:
        if not path.is_dir():
            raise FERError(f"{flag} {path}: {'not a folder' if path.exists() else 'folder not found'}")
    elif not path.is_file():
        raise FERError(f"{flag} {path}: {'not a regular file' if path.exists() else 'file not found'}")
    else:
        finish_commits(path.parent)  # a reader trusts what a half-done commit of a killed run wrote, completed
    return path


def check_device(name):
    """A torch.device for --device (None: cuda if available), or one line saying why not."""
    import torch

    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, ValueError):
        raise FERError(f"--device {name}: unknown device (use cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise FERError(f"--device {name}: not supported (use cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FERError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FERError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    return device


# --- progress -------------------------------------------------------------------------------------
_quiet = False


def set_quiet(quiet=True):
    """--quiet: no progress at all, from any step of this process (results and errors are still printed)."""
    global _quiet
    _quiet = bool(quiet)


def quiet():
    return _quiet


class _Lines:
    """A stream for tqdm outside a terminal: each refresh becomes one plain line (no carriage returns or
    cursor moves), which a log file can hold."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def progress(iterable=None, total=None, desc="", unit="it", disable=False, stream=None, interval=None):
    """A progress report of a long step: a tqdm bar on stderr when it is a terminal; otherwise (a log file
    under nohup, SLURM, cron, a notebook) plain lines "desc: n/total unit (p%), rate, elapsed, left" on stdout
    every `interval` seconds (PROGRESS_LOG_SECONDS) and when done, so that stderr keeps the one-line errors
    only. stream: one stream for both (tests). Nothing with --quiet (set_quiet) or disable. Use as tqdm:
    for x in progress(items, desc="evaluate", unit="batch"), or bar = progress(total=n); bar.update()."""
    from tqdm import tqdm

    if disable or _quiet:
        return tqdm(iterable, total=total, disable=True)
    try:
        terminal = (sys.stderr if stream is None else stream).isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal:
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=stream or sys.stderr,
                    dynamic_ncols=True)
    stream = sys.stdout if stream is None else stream
    every = PROGRESS_LOG_SECONDS if interval is None else interval
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=True, file=_Lines(stream), ascii=True,
                mininterval=every, maxinterval=max(every, 1e-9), miniters=1,
                bar_format="{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%), {rate_fmt}, elapsed {elapsed}, "
                           "left {remaining}")


# --- one line -----------------------------------------------------------------------------------
def one_line(e):
    """The message of an exception without the worker traceback that DataLoader wraps around it."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(e).__name__
    for prefix in ("FERError: ", "FERDataError: ", "CheckpointError: ", "TrainError: "):
        last = last.split(prefix, 1)[-1]
    return last


# === the rules of issue 25 ===================================================================
# --- rule 1: an index never reaches outside its root ---------------------------------------------
ALLOW_OUTSIDE = "--allow_outside_root"


def inside(path, root):
    """True when the real path of path (links followed) lies in the real path of root."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


MAX_ROOT_DEPTH = 3  # a dataset root lies at most this many folders above its images (RAF-DB: Image/aligned, 2)


def recorded_root_fits(images_dir, recorded):
    """True when a dataset root recorded in an index (parquet metadata, editable by anyone who writes the
    file) can be the root of its images folder: the folder itself or one at most MAX_ROOT_DEPTH levels above
    it, never the file system's root. Otherwise the loader checks rows against the images folder alone."""
    real, base = Path(os.path.realpath(images_dir)), Path(os.path.realpath(recorded))
    if base == Path(base.anchor) or not inside(real, base):
        return False
    return len(real.relative_to(base).parts) <= MAX_ROOT_DEPTH


def resolve_rows(folder, names, root, where, allow_outside=False):
    """The real paths of the images `names` (relative to folder), checked: a name that is absolute or
    climbs out with ../, or a link whose target lies outside the dataset root, is an FERError naming the
    row (`where` says which file's rows), unless allow_outside (the documented --allow_outside_root)."""
    base = os.path.realpath(root)
    prefix = base.rstrip(os.sep) + os.sep
    out = []
    for i, name in enumerate(names):
        real = os.path.realpath(os.path.join(folder, name))
        if not allow_outside and real != base and not real.startswith(prefix):
            how = ("an absolute path" if os.path.isabs(name) else "climbs out with ../"
                   if ".." in Path(name).parts else "a link to")
            raise FERError(f"{where}: row {i} ({name}) is {how} {real}, outside the dataset root {base}; "
                           f"images are read only inside it (pass {ALLOW_OUTSIDE} if this is intended)")
        out.append(real)
    return out


def folder_inside(folder, root, flag, allow_outside=False, links=False):
    """Rule 1 for a folder the indexer finds inside a dataset root (its images/ or annotations/, not one
    the user named with its own flag): the folder, and with links every link in it, resolves inside root;
    a link out of the root is an FERError naming it, unless allow_outside. Returns the folder."""
    if allow_outside:
        return folder
    base = os.path.realpath(root)
    outside = [] if inside(folder, root) else [str(folder)]
    if links and not outside:
        try:
            outside = [e.path for e in os.scandir(folder) if e.is_symlink() and not inside(e.path, root)]
        except OSError:
            pass
    if outside:
        first = outside[0]
        raise FERError(f"{flag}: {first} is a link to {os.path.realpath(first)}, outside the dataset root {base}"
                       f"{f' ({len(outside)} such links)' if len(outside) > 1 else ''}; files are read only inside "
                       f"it (pass {ALLOW_OUTSIDE} if this is intended)")
    return folder


def exact_duplicates(paths, names=None, digests=None):
    """Groups of rows that reach the same image: the same real path (a link, two spellings) or
    byte-identical files (two class folders, train and validation). [(names...)], each with 2+ rows;
    files are hashed (SHA-1) only where their sizes collide and digests ({path: SHA-1 hex}, what a caller
    already hashed, e.g. the index's leakage guard) has none. (Near-duplicates are another check's.)"""
    known = {os.path.realpath(p): d for p, d in (digests or {}).items()}
    names = list(paths) if names is None else list(names)
    groups = {}  # real path -> the names that reach it
    for name, path in zip(names, paths):
        groups.setdefault(os.path.realpath(path), []).append(name)
    by_size = {}
    for real in groups:
        try:
            by_size.setdefault(os.stat(real).st_size, []).append(real)
        except OSError:
            pass
    merged = {}
    for reals in by_size.values():
        for real in reals:
            digest = known.get(real) if len(reals) > 1 else None
            if len(reals) > 1 and digest is None:
                h = hashlib.sha1()
                try:
                    with open(real, "rb") as fh:
                        for block in iter(lambda: fh.read(1 << 20), b""):
                            h.update(block)
                    digest = h.hexdigest()
                except OSError:
                    pass
            merged.setdefault(("sha1", digest) if digest else ("path", real), []).extend(groups[real])
    return [tuple(g) for g in merged.values() if len(g) > 1]


# --- rule 2: an output is never an input, another tool's artefact, or user data ------------------
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Files (or folders) a dataset root holds in the layouts the indexer reads (fer.data.formats).
DATASET_MARKERS = ("annotations", "EmoLabel", "Manually_Annotated_Images", "Manually_Annotated_file_lists",
                   "fer2013.csv", "fer2013new.csv", "training.csv", "validation.csv")
_CLASS_FOLDERS = {"neutral", "happy", "happiness", "sad", "sadness", "surprise", "surprised", "fear", "fearful",
                  "disgust", "disgusted", "anger", "angry", "contempt", "joy", "scared", "contemptuous"}


def dataset_root_of(path):
    """The dataset root a path lies in (a folder holding the files of a layout the indexer reads, or a
    folder of two or more class folders), or None."""
    p = Path(os.path.realpath(path))
    for folder in [p, *p.parents]:
        try:
            if any((folder / m).exists() for m in DATASET_MARKERS):
                return folder
            if folder.is_dir() and sum((folder / c).is_dir() for c in _CLASS_FOLDERS) >= 2:
                return folder
        except OSError:
            continue
    return None


def artefact_kind(path):
    """What the project would take path for: 'checkpoint', 'run record', 'index', 'run config',
    'ONNX model', 'dataset image' (an image under a dataset root), or None (something else: a user's)."""
    p = Path(path)
    name, suffix = p.name.lower(), p.suffix.lower()
    if suffix in (".pth", ".pt"):
        return "checkpoint"
    if name.endswith("_run.json"):
        return "run record"
    if suffix == ".parquet":
        return "index"
    if name.endswith("_config.yaml"):
        return "run config"
    if suffix == ".onnx":
        return "ONNX model"
    if suffix in IMAGE_SUFFIXES and dataset_root_of(p.parent) is not None:
        return "dataset image"
    return None


def check_outputs(outputs, inputs, kind=None, may_replace=(), images=False):
    """The one policy for every script's outputs, before any work. outputs, inputs: (flag, path) pairs
    (None paths are skipped; inputs may be folders). Refused: two outputs that are one file; an output
    that is an input (real paths: links and other spellings count); an output onto a file the project
    recognises as its own artefact of another kind than `kind` (what this output is, in artefact_kind's
    words; may_replace: more kinds it may replace); with images (outputs that are, or are folders of,
    pictures), any output inside a dataset root, where it would sit among (or replace) the dataset's
    images. Returns the outputs' real paths."""
    outputs = [(flag, Path(p)) for flag, p in outputs if p is not None and str(p) != ""]
    inputs = [(flag, Path(p)) for flag, p in inputs if p is not None and str(p) != ""]
    check_not_inputs(outputs, inputs)
    for flag, out in outputs:
        real = os.path.realpath(out)
        found = artefact_kind(real) if os.path.lexists(out) else None
        if found is not None and found != kind and found not in may_replace:
            raise FERError(f"{flag} {out}: is a {found}, another tool's file; this output is "
                           f"{'a ' + kind if kind else 'something else'}: choose another name")
        root = dataset_root_of(real if os.path.isdir(real) else Path(real).parent) if images else None
        if root is not None:
            raise FERError(f"{flag} {out}: lies in the dataset {root}; pictures are never written among a dataset's "
                           f"images: choose another folder")
    return [os.path.realpath(p) for _, p in outputs]


# Output sets: a manifest, written last with the files it lists, says which files of a folder a script
# wrote. --overwrite then replaces them and removes those the new set does not write, if they are as the
# script left them: files a user put there, or changed, are never deleted.
def _manifest(folder, name):
    return Path(folder) / f".{name}.fer-outputs.json"


def earlier_outputs(folder, name):
    """{path: (size, mtime_ns)} of the files the last run of output set `name` wrote (and left as written).
    Names are read relative to the folder the manifest is in now, so a copied or moved folder lists its own
    files, never the original's; an absolute name (older manifests) counts only inside that folder."""

    try:
        listed = read_json(_manifest(folder, name), "manifest", default={})["files"]
        listed = [(p, int(size), int(mtime)) for p, (size, mtime) in listed.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    out = {}
    for path, size, mtime in listed:
        if os.path.isabs(path):
            if not inside(path, folder):
                continue
        else:
            path = os.path.normpath(os.path.join(os.path.abspath(folder), path))
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (size, mtime):
            out[Path(path)] = (size, mtime)
    return out


def stage_output_set(stage, folder, name):
    """With the stage's commit: files of the earlier run of set `name` in folder that this run does not
    write are removed (only if unchanged since written), and the new manifest lists this run's files.
    Never removed: a file the project recognises as an artefact of its own (artefact_kind: a checkpoint an
    evaluation wrote its temperature into, in the same commit, is listed but is no output of the set).
    Returns the names to be removed."""
    stage.output_sets.append((Path(folder), name))
    stale = [p for p in earlier_outputs(folder, name) if p not in stage.files and p.resolve() not in
             {t.resolve() for t in stage.files} and artefact_kind(p) is None]
    stage.obsolete += stale
    return [p.name for p in stale]


# --- rule 3: one run per folder ------------------------------------------------------------------
@contextmanager
def run_lock(target, flag):
    """Hold a lock for target (a run's --save_path, an output folder) for the block's life: a second
    process is refused in one line naming the holder's pid. A lock of a killed run (the OS frees it) is
    taken over, and said."""
    from filelock import FileLock, Timeout

    target = Path(target)
    lock_path = target.parent / f".{target.name}.lock"
    pid_path = target.parent / f".{target.name}.lock.pid"
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = pid_path.read_text().strip()
        except OSError:
            holder = "unknown"
        raise FERError(f"{flag} {target}: another run (pid {holder}) is using it; wait for it to end, or choose "
                       f"another path") from None
    try:
        try:
            previous = int(pid_path.read_text().strip())
        except (OSError, ValueError):
            previous = None
        if previous is not None and previous != os.getpid() and process_gone(previous):
            print(f"note: a lock on {target} left by run pid {previous}, which no longer runs, was taken over")
        pid_path.write_text(str(os.getpid()))
        yield
    finally:
        pid_path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)  # while still held: a run folder keeps no lock file after the run
        lock.release()


# --- rule 4: each commit one atomic step ----------------------------------------------------------
_JOURNAL = re.compile(r"\.fer-commit\.(?P<pid>\d+)\.json(?P<tmp>\.tmp)?")


def finish_commits(folder):
    """Complete the commits a killed process left half done in folder: its journal, written before the
    first rename, lists every rename; those not done yet are done now, so the folder holds the new state
    whole (before the journal the old state stands: the temporaries are only removed). Returns how many."""

    done = 0
    try:
        entries = [e for e in os.scandir(folder) if _JOURNAL.fullmatch(e.name)]
    except OSError:
        return 0
    for entry in entries:
        m = _JOURNAL.fullmatch(entry.name)
        if not process_gone(int(m["pid"])):
            continue
        if m["tmp"]:  # killed while writing the journal: no rename was made, the old state stands
            Path(entry.path).unlink(missing_ok=True)
            continue
        plan = read_json(entry.path, "commit journal", default=[])
        if not isinstance(plan, dict):
            Path(entry.path).unlink(missing_ok=True)  # written atomically: a broken one is not ours
            continue
        for tmp, target in plan.get("renames", []):
            if os.path.lexists(tmp):
                os.replace(tmp, target)
        for path in plan.get("obsolete", []):
            Path(path).unlink(missing_ok=True)
        for journal in [*plan.get("journals", []), entry.path]:  # its copies in the commit's other folders too
            Path(journal).unlink(missing_ok=True)
        done += 1
    if done:
        print(f"completed {done} commit(s) an interrupted run left half done in {folder}")
    return done


# --- rule 6: hostile files end in one line, quickly -----------------------------------------------
MAX_TEXT_INPUT = 16 << 20  # bytes of a config file, run record or predictions file read as text


def open_regular(path):
    """A binary file object of path when it is a regular file, else None: opened non-blocking and checked
    on the open descriptor, so a FIFO or device (even one swapped in after a check) never hangs a reader."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError:
        os.close(fd)
        return None


def read_regular_text(path, flag, limit=MAX_TEXT_INPUT):
    """The text of a regular file of at most `limit` bytes: a FIFO, device or folder is refused without
    opening it (no hang), a larger file without reading it."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise FERError(f"{flag} {path}: {e.strerror.lower() if e.strerror else 'cannot be read'}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FERError(f"{flag} {path}: not a regular file")
    if st.st_size > limit:
        raise FERError(f"{flag} {path}: {st.st_size:,} bytes, more than the {limit:,} such a file may have")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a file swapped for a FIFO: no hang
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as e:
        raise FERError(f"{flag} {path}: cannot be read ({e.strerror})") from None
    if len(data) > limit:
        raise FERError(f"{flag} {path}: more than the {limit:,} bytes such a file may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FERError(f"{flag} {path}: not a readable text file (not UTF-8)") from None


def load_json(text, where, **kw):
    """json.loads where any malformed text, also nesting deep enough to exhaust Python's recursion (a 'JSON
    bomb' of 100,000 brackets), is one FERError naming where."""
    try:
        return json.loads(text, **kw)
    except FERError:
        raise
    except (ValueError, RecursionError, MemoryError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:120] if str(e) else \
            type(e).__name__
        raise FERError(f"{where}: not valid JSON ({why})") from None


def read_json(path, flag, default=None, limit=MAX_TEXT_INPUT):
    """The JSON in a regular file, or default (when not None) if it is missing, special or malformed: the
    files the kit writes beside its outputs (manifests, journals, protocol cards) are read this way."""
    try:
        return load_json(read_regular_text(path, flag, limit), f"{flag} {path}")
    except FERError:
        if default is None:
            raise
        return default


MAX_YAML_NODES = 100_000  # nodes after alias expansion: a config has dozens


def load_yaml(text, where):
    """YAML with the safe loader, refusing duplicate keys and documents that expand (through aliases)
    to more than MAX_YAML_NODES nodes (a 'billion laughs' bomb): one FERError naming where."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        keys = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in keys:
                raise FERError(f"{where}: key {key!r} given twice (line {key_node.start_mark.line + 1}); give "
                               f"each key once")
            keys.add(key)
        return yaml.SafeLoader.construct_mapping(loader, node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        count, stack, seen = 0, [node], {}
        while stack:  # expanded size: an alias counts every time it is used
            n = stack.pop()
            count += 1
            if count > MAX_YAML_NODES:
                raise FERError(f"{where}: expands to more than {MAX_YAML_NODES:,} values (aliases of aliases?); "
                               f"not a config file")
            if isinstance(n, yaml.SequenceNode):
                stack.extend(n.value)
            elif isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    stack.extend((k, v))
        del seen
        return loader.construct_document(node)
    finally:
        loader.dispose()
