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
import os
import re
import shutil
import signal
import stat
import threading
from contextlib import contextmanager
from pathlib import Path


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


class Stage:
    """Temporary names for a run's outputs; commit() renames them all into place."""

    def __init__(self):
        self.files = {}  # target -> temporary path
        self.obsolete = []  # files of an earlier run to remove with the commit (not after it: a Ctrl-C between)

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
        with signals_held():
            for target, tmp in self.files.items():
                os.replace(tmp, target)
            for path in self.obsolete:
                path.unlink(missing_ok=True)
            self.files, self.obsolete = {}, []

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


# --- one line -----------------------------------------------------------------------------------
def one_line(e):
    """The message of an exception without the worker traceback that DataLoader wraps around it."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(e).__name__
    for prefix in ("FERError: ", "FERDataError: ", "CheckpointError: ", "TrainError: "):
        last = last.split(prefix, 1)[-1]
    return last
