"""The six dataset layouts, read into one table: a registry FORMATS (name -> reader(root, opts)) and the
readers, each returning (DataFrame, problems) with the common columns (COLUMNS; FACE_BOX for
affectnet_csv; a split column where the dataset has an official split) and df.attrs["images_dir"].

    affectnet      <root>/images/<name>.jpg + <root>/annotations/<name>_{exp,val,aro,lnd}.npy
    affectnet_csv  <root>/training.csv, validation.csv + <root>/Manually_Annotated_Images/...
    rafdb          <root>/EmoLabel/list_patition_label.txt + <root>/Image/aligned (or original)
    fer2013        <root>/fer2013.csv (pixels as text: written once as PNGs under opts.out_dir)
    ferplus        <root>/fer2013new.csv (ten votes per image) beside <root>/fer2013.csv
    folders        <root>/<class>/*.jpg, optionally under <root>/train/, val/ or test/

Each dataset's label codes map to the canonical classes of fer.constants.CLASS_NAMES (RAFDB_LABELS,
FER2013_LABELS, FERPLUS_VOTES/FERPLUS_LABELS). The folder names of --format folders (SYNONYMS,
CLASS_OF_NAME, SPLIT_FOLDERS) and recognising a root's layout (detect_format) are in fer.cli.index: the
flags are checked against them before any heavy import. Also the low-level readers: fast .npy reading (read_npy), listing
regular files (scan_files) and CSV files (read_csv), and run_chunks for work in worker processes.
Damaged input is never fatal: bad rows and files go to `problems` ({kind: [(name, why)]}, kinds in
PROBLEMS); only a problem with the input as a whole raises IndexError_.

`opts` is the indexer's argparse namespace (fer.cli.index): out_dir, stage, progress, workers,
ferplus_label, class_map, and for affectnet images_dir, annotations_dir, ext.
"""
import ast
import hashlib
import os
import re
import signal
import stat
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fer.cli.index import CLASS_OF_NAME, SPLIT_FOLDERS, shown, subfolders
from fer.constants import CLASS_NAMES, NUM_CLASSES
from fer.trust import FERError, check_input, folder_inside, remove_stale_temporaries
from fer.trust import progress as progress_of

COLUMNS = ["filename", "expression", "valence", "arousal", "landmarks", "source_label"]
FACE_BOX = ["face_x", "face_y", "face_w", "face_h"]
OPTIONAL = ("val", "aro", "lnd")
CHUNK = 2000  # images per worker task: large enough to amortise inter-process traffic

# Each dataset's own label codes -> the canonical class (from the datasets' documentation).
AFFECTNET_DROPPED = {8: "None", 9: "Uncertain", 10: "Non-Face"}
# RAF-DB: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAFDB_LABELS = {"1": 3, "2": 4, "3": 5, "4": 1, "5": 2, "6": 6, "7": 0}
# FER2013: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
FER2013_LABELS = {"0": 6, "1": 5, "2": 4, "3": 1, "4": 2, "5": 3, "6": 0}
FER2013_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_VOTES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]
FERPLUS_LABELS = [0, 1, 3, 2, 6, 5, 4, 7]  # canonical class of each emotion column (unknown, NF: dropped)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

PROBLEMS = {
    "missing_exp": "images without _exp.npy (skipped)",
    "corrupt_npy": "unreadable or corrupt .npy files (image skipped if _exp, else value left empty)",
    "bad_label": "labels outside 0-7 (kept in metadata_all only)",
    "invalid_label": "labels that are not class codes (skipped)",
    "bad_value": "valence/arousal not finite or outside [-1, 1] (skipped)",
    "dropped": "rows the dataset's label rules drop",
    "bad_row": "damaged rows (skipped)",
    "bad_landmarks": "landmarks that are not 136 numbers (left empty)",
    "missing_image": "rows whose image file is missing (skipped)",
    "not_regular": "not regular files: FIFOs, devices, broken or looping links (skipped)",
    "bad_name": "file names that are not valid UTF-8 (skipped)",
    "unreadable_image": "images that cannot be decoded (skipped)",
    "listed_twice": "images listed more than once with the same label (kept once, in training if listed there)",
    "conflicting_labels": "images listed more than once with different labels (dropped: no label can be trusted)",
    "duplicate_name": "names that differ only in case or extension (kept on one side of a random split)",
    "split_leak": "names on both sides of the official split or in both --root and --val_root (left as given)",
    "no_face": "images where --detect_landmarks found no face (landmarks5 left empty; kept)",
    "same_image": "images reachable under two names: a link, or byte-identical files (kept; check them)",
}


class IndexError_(FERError):
    """A problem with the input as a whole (missing folder, unsplittable data): one line for the user."""


def new_problems():
    return {kind: [] for kind in PROBLEMS}


def printable(name):
    """A file name as text that can always be printed (undecodable bytes as \\x escapes)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


# --- files: regular ones only -------------------------------------------------------------------
def why_irregular(entry):
    """Why a directory entry cannot be read as a file (FIFO, device, broken link...), or None."""
    try:
        if entry.is_file():  # d_type answers this without a system call for plain files
            return None
        mode = entry.stat().st_mode
    except OSError:
        return "broken or looping link" if entry.is_symlink() else "cannot be read"
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")]
    return next((why for test, why in kinds if test(mode)), "not a regular file")


def scan_files(folder, suffixes, recursive=False, problems=None):
    """Regular files under folder with one of the suffixes (hidden ones left out), as sorted '/'-joined names.

    Entries that are not regular files or whose names are not UTF-8 go to problems (when given)
    and are left out, so nothing later opens a FIFO or chokes on a name.
    """
    found, stack = [], [("", str(folder))]
    while stack:
        prefix, path = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                name = prefix + entry.name
                if recursive and entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    stack.append((name + "/", entry.path))
                    continue
                if not entry.name.lower().endswith(suffixes) or entry.name.startswith("."):
                    continue  # hidden: macOS's ._x.jpg resource forks, our own temporaries
                why = why_irregular(entry)
                if why == "a folder":
                    continue
                if not name.isascii():
                    try:
                        name.encode("utf-8")
                    except UnicodeEncodeError:
                        if problems is not None:
                            problems["bad_name"].append((printable(name), "name is not valid UTF-8"))
                        continue
                if why is None:
                    found.append(name)
                elif problems is not None:
                    problems["not_regular"].append((name, why))
    return sorted(found)


# --- fast .npy reading --------------------------------------------------------------------------
# AffectNet has over a million tiny .npy files whose headers are almost all identical, so parsing
# each header once and reading the body with one read() is several times faster than np.load.
_HEADERS = {}
MAX_NPY_BYTES = 1 << 20  # an annotation is a scalar or 136 landmarks: never read a huge file whole
NPY_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)


def read_npy(path):
    """Read a .npy file (never pickled objects); raises ValueError on anything malformed.

    Opened non-blocking and checked with fstat: a FIFO or a device named *.npy never hangs the run."""
    fd = os.open(path, NPY_OPEN_FLAGS)  # raw fd: no buffered-file object per read
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_NPY_BYTES:
            raise ValueError(f"{st.st_size} bytes: too large for an annotation")
        data = os.read(fd, 1 << 16)
        while len(data) % (1 << 16) == 0 and data:  # only files over 64 KiB need more reads
            more = os.read(fd, 1 << 20)
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise ValueError("not a .npy file")
    if data[6] == 1:
        start, hlen = 10, int.from_bytes(data[8:10], "little")
    else:
        start, hlen = 12, int.from_bytes(data[8:12], "little")
    header = data[start:start + hlen]
    meta = _HEADERS.get(header)
    if meta is None:
        try:
            d = ast.literal_eval(header.decode("latin1"))
            dtype = np.lib.format.descr_to_dtype(d["descr"])
            shape = tuple(d["shape"])
            meta = (dtype, shape, bool(d["fortran_order"]), int(np.prod(shape)))
        except Exception as e:
            raise ValueError(f"bad header ({e})") from None
        if dtype.hasobject:
            raise ValueError("holds Python objects")
        _HEADERS[header] = meta
    dtype, shape, fortran, count = meta
    if len(data) - start - hlen != count * dtype.itemsize:
        raise ValueError("truncated or padded data")
    return np.frombuffer(data, dtype, count, start + hlen).reshape(shape, order="F" if fortran else "C")


class NotAClass(ValueError):
    """A readable label that is not a class code (3.5, 'abc', complex, 42)."""


def read_value(path):
    """The single value of a scalar .npy file as a Python str, int, float or complex."""
    arr = read_npy(path)
    if arr.size != 1:
        raise ValueError(f"expected one value, found {arr.size}")
    kind = arr.dtype.kind
    if kind not in "iufcUS":  # datetime, structured, bool... are not annotations
        raise ValueError(f"unexpected dtype {arr.dtype}")
    value = arr.item()
    return value.decode("latin1") if kind == "S" else value


def read_scalar(path):
    """A scalar annotation as float, whether stored as a number or (AffectNet) as a string."""
    value = read_value(path)
    try:
        return float(value)
    except (TypeError, ValueError):  # TypeError: complex
        raise ValueError(f"not a number: {value!r}") from None


def read_label(path):
    """An AffectNet class code 0-10: (int, text as stored). NotAClass for anything else readable."""
    value = read_value(path)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise NotAClass(f"class {value!r} is not a number") from None
    if not number.is_integer() or not 0 <= number <= 10:
        raise NotAClass(f"class {value} is not an AffectNet class code (0-10)")
    return int(number), str(value)


# --- parallel work ------------------------------------------------------------------------------
def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: no traceback per worker


def run_chunks(fn, tasks, workers, sizes, desc, progress):
    """fn over tasks, in worker processes when there are several; yields results in order."""
    workers = workers or os.cpu_count() or 1
    bar = progress_of(total=sum(sizes), desc=desc, unit="img", disable=not progress)
    pool = None
    if workers == 1 or len(tasks) <= 1:
        results = map(fn, tasks)
    else:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), initializer=_ignore_sigint)
        results = pool.map(fn, tasks)
    try:
        for result, size in zip(results, sizes):
            yield result
            bar.update(size)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


# --- affectnet: images/ + annotations/*.npy -----------------------------------------------------
def why(e):
    """An exception as a short reason (an OSError without its errno and path)."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def _index_chunk(task):
    """Worker: read the annotations of a chunk of images. Returns (columns, problems)."""
    ann_dir, items = task
    names, labels, texts, va = [], [], [], []
    landmarks = np.full((len(items), 136), np.nan)
    has_landmarks = np.zeros(len(items), bool)
    problems = []
    for stem, fname, has in items:
        base = os.path.join(ann_dir, stem)
        try:
            label, text = read_label(base + "_exp.npy")
        except NotAClass as e:
            problems.append(("invalid_label", f"{stem}_exp.npy", str(e)))
            continue
        except (OSError, ValueError) as e:
            problems.append(("corrupt_npy", f"{stem}_exp.npy", why(e)))
            continue
        row = len(names)
        values = [np.nan, np.nan]
        for i, key in enumerate(("val", "aro")):
            if has[key]:
                try:
                    values[i] = read_scalar(f"{base}_{key}.npy")
                    if np.isnan(values[i]):  # "none" is -2 in AffectNet: a NaN is damage, not a value
                        raise ValueError("not a number (nan)")
                except (OSError, ValueError) as e:
                    problems.append(("corrupt_npy", f"{stem}_{key}.npy", why(e)))
        if has["lnd"]:
            try:
                lnd = read_npy(base + "_lnd.npy")
                if lnd.size != 136:
                    raise ValueError(f"expected 136 values, found {lnd.size}")
                if lnd.dtype.kind not in "iufUS":
                    raise ValueError(f"unexpected dtype {lnd.dtype}")
                points = lnd.reshape(-1).astype(np.float64)  # also parses string-typed files
                if not np.isfinite(points).all():  # as parse_landmarks: NaN/inf points are no landmarks
                    raise ValueError(f"{int((~np.isfinite(points)).sum())} values not finite")
                landmarks[row] = points
                has_landmarks[row] = True
            except (OSError, ValueError) as e:
                problems.append(("corrupt_npy", f"{stem}_lnd.npy", why(e)))
        names.append(fname)
        labels.append(label)
        texts.append(text)
        va.append(values)
    n = len(names)
    columns = (names, labels, texts, np.asarray(va, np.float64).reshape(n, 2), landmarks[:n], has_landmarks[:n])
    return columns, problems


def read_affectnet(images_dir, annotations_dir, ext="jpg", workers=None, progress=True):
    """The AffectNet .npy layout as the common table (no official split: one folder is one set)."""
    images_dir, annotations_dir = Path(images_dir).resolve(), Path(annotations_dir).resolve()
    for what, d in (("images", images_dir), ("annotations", annotations_dir)):
        if not d.is_dir():
            raise IndexError_(f"{what} folder not found: {d}")
    problems = new_problems()
    # List each folder once; existence checks then become set look-ups instead of syscalls.
    suffix = "." + ext.lstrip(".").lower()
    images = scan_files(images_dir, (suffix,), problems=problems)
    annotations = set(os.listdir(annotations_dir))
    if not images and not problems["not_regular"]:
        raise IndexError_(f"no *{suffix} images in {images_dir} (see --ext)")

    items = []
    for fname in images:
        stem = fname[: -len(suffix)]
        if stem + "_exp.npy" not in annotations:
            problems["missing_exp"].append((fname, f"no {stem}_exp.npy"))
            continue
        items.append((stem, fname, {k: f"{stem}_{k}.npy" in annotations for k in OPTIONAL}))
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    columns = []
    for chunk_columns, chunk_problems in run_chunks(_index_chunk, [(str(annotations_dir), c) for c in chunks],
                                                    workers, [len(c) for c in chunks], "indexing", progress):
        columns.append(chunk_columns)
        for kind, name, why in chunk_problems:
            problems[kind].append((name, why))

    va = np.concatenate([c[3] for c in columns]) if columns else np.zeros((0, 2))
    lnd = np.concatenate([c[4] for c in columns]) if columns else np.zeros((0, 136))
    has_lnd = np.concatenate([c[5] for c in columns]) if columns else np.zeros(0, bool)
    df = pd.DataFrame({
        "filename": pd.Series([name for c in columns for name in c[0]], dtype=str),
        "expression": np.asarray([label for c in columns for label in c[1]], dtype=np.int64),
        "valence": va[:, 0], "arousal": va[:, 1],
        "landmarks": [row if ok else None for row, ok in zip(lnd, has_lnd)],
        "source_label": pd.Series([text for c in columns for text in c[2]], dtype=str),
    })
    bad = ~df["expression"].between(0, NUM_CLASSES - 1)
    problems["bad_label"] = [(f, f"class {e}") for f, e in zip(df["filename"][bad], df["expression"][bad])]
    df.attrs["images_dir"] = str(images_dir)
    return df, problems


def read_affectnet_root(root, opts):
    """--format affectnet: <root>/images and <root>/annotations, or opts.images_dir / opts.annotations_dir."""
    allow = getattr(opts, "allow_outside_root", False)  # trust rule 1: found folders, and annotation links, inside
    images = opts.images_dir or folder_inside(Path(root) / "images", root, f"--root {root}", allow)
    annotations = opts.annotations_dir or folder_inside(Path(root) / "annotations", root, f"--root {root}", allow)
    folder_inside(annotations, opts.annotations_dir or root, f"--root {root}", allow, links=True)
    return read_affectnet(images, annotations,
                          opts.ext, opts.workers, opts.progress)


# --- CSV-based formats --------------------------------------------------------------------------
def read_csv(path, required, what):
    """A CSV file as strings, or one line saying why it is not the expected file."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise IndexError_(f"{path}: not a text file (not a {what})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise IndexError_(f"{path}: not a {what}: {str(e).strip().splitlines()[-1]}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise IndexError_(f"{path}: not a {what}: no column {', '.join(missing)} "
                          f"(found: {', '.join(map(shown, table.columns[:12]))})")
    return table


def line_names(path, table):
    """'file line N' for each row (the header is line 1), for naming damaged rows."""
    return [f"{Path(path).name} line {i + 2}" for i in range(len(table))]


def as_numbers(column):
    return pd.to_numeric(column.str.strip(), errors="coerce").to_numpy(np.float64)


def parse_numbers(text, dtype, sep):
    """A separated list of numbers, strictly: any stray token is a ValueError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return np.fromstring(text, dtype=dtype, sep=sep)
        except (ValueError, DeprecationWarning):
            raise ValueError("not a list of numbers") from None


def table_of(filenames, labels, source_labels, split=None, valence=None, arousal=None, landmarks=None):
    n = len(filenames)
    df = pd.DataFrame({  # plain lists: Series arguments would be aligned on their old index
        "filename": pd.Series(list(filenames), dtype=str),
        "expression": np.asarray(labels, dtype=np.int64).reshape(n),
        "valence": np.full(n, np.nan) if valence is None else np.asarray(valence, np.float64),
        "arousal": np.full(n, np.nan) if arousal is None else np.asarray(arousal, np.float64),
        "landmarks": [None] * n if landmarks is None else list(landmarks),
        "source_label": pd.Series(list(source_labels), dtype=str),
    })
    if split is not None:
        df["split"] = pd.Series(list(split), dtype=str)
    return df


def find_image(name, regular, irregular, where, problems):
    """True if name is a regular file of the scanned images folder; else the problem is recorded."""
    if name in regular:
        return True
    if name in irregular:
        problems["not_regular"].append((name, irregular[name]))
    else:
        problems["missing_image"].append((where, f"no image {name}"))
    return False


def scan_images(images_dir, recursive=False):
    """(regular names as a set, {irregular name: why}) of an images folder."""
    found = new_problems()
    regular = set(scan_files(images_dir, IMAGE_SUFFIXES, recursive, found))
    irregular = dict(found["not_regular"]) | {name: "name is not valid UTF-8" for name, _ in found["bad_name"]}
    return regular, irregular


def read_affectnet_csv(root, opts):
    """AffectNet's original release: training.csv / validation.csv + Manually_Annotated_Images/."""
    images_dir = (root / "Manually_Annotated_Images").resolve()
    check_input(images_dir, "--root: AffectNet images folder", folder=True)
    problems = new_problems()
    regular, irregular = scan_images(images_dir, recursive=True)
    parts = []
    for split, fname in (("train", "training.csv"), ("val", "validation.csv")):
        path = next((p for p in (root / fname, root / "Manually_Annotated_file_lists" / fname) if p.exists()), None)
        if path is None:
            if split == "train":
                raise IndexError_(f"--root {root}: no training.csv (nor Manually_Annotated_file_lists/training.csv)")
            continue
        table = read_csv(check_input(path, "--root"), ["subDirectory_filePath", "face_x", "face_y", "face_width",
                                                       "face_height", "facial_landmarks", "expression", "valence",
                                                       "arousal"], "AffectNet CSV file")
        where = line_names(path, table)
        code = as_numbers(table["expression"])
        va = np.stack([as_numbers(table["valence"]), as_numbers(table["arousal"])], 1)
        box = np.stack([as_numbers(table[c]) for c in ("face_x", "face_y", "face_width", "face_height")], 1)
        keep, lnd_rows = [], []
        for i in progress_of(range(len(table)), desc=fname, unit="row", disable=not opts.progress):
            name = table["subDirectory_filePath"].iat[i].strip()
            if not (np.isfinite(code[i]) and code[i].is_integer() and 0 <= code[i] <= 10):
                problems["invalid_label"].append((where[i], f"expression {table['expression'].iat[i]!r}"))
            elif code[i] in AFFECTNET_DROPPED:
                problems["dropped"].append((where[i], AFFECTNET_DROPPED[int(code[i])]))
            elif np.isnan(va[i]).any():
                problems["bad_row"].append((where[i], "valence/arousal not a number"))
            elif not (np.isfinite(box[i]).all() and (box[i] == np.round(box[i])).all() and (box[i] >= 0).all()
                      and (box[i, 2:] > 0).all()):
                problems["bad_row"].append((where[i], "face box is not 4 integers >= 0 with width, height > 0"))
            elif find_image(name, regular, irregular, where[i], problems):
                keep.append(i)
                lnd_rows.append(parse_landmarks(table["facial_landmarks"].iat[i], name, problems))
        t = table.iloc[keep]
        va_kept = np.where(va[keep] == -2, np.nan, va[keep])  # AffectNet's "none" marker
        df = table_of(t["subDirectory_filePath"].str.strip().tolist(), code[keep].astype(np.int64),
                      t["expression"].str.strip().tolist(), [split] * len(t), va_kept[:, 0], va_kept[:, 1], lnd_rows)
        for col, values in zip(FACE_BOX, box[keep].T):
            df[col] = values.astype(np.int64)
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    df.attrs["images_dir"] = str(images_dir)
    return df, problems


def parse_landmarks(text, name, problems):
    try:
        points = parse_numbers(text, np.float64, ";")
        if points.size != 136 or not np.isfinite(points).all():
            raise ValueError(f"{points.size} values")
        return points
    except ValueError as e:
        problems["bad_landmarks"].append((name, str(e)))
        return None


def read_rafdb(root, opts):
    """RAF-DB basic: EmoLabel/list_patition_label.txt ('train_00001.jpg 5') + Image/aligned or original."""
    path = check_input(root / "EmoLabel" / "list_patition_label.txt", "--root: RAF-DB label file")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise IndexError_(f"{path}: not a text file") from None
    rows = []  # (line number, name, label): exactly two fields per line, blank lines skipped
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if fields and len(fields) != 2:
            raise IndexError_(f"{path}: line {number}: expected '<image> <label>', found {line.strip()[:80]!r} "
                              f"({len(fields)} fields)")
        if fields:
            rows.append((number, *fields))
    if not rows:
        raise IndexError_(f"{path}: not a RAF-DB label file: no '<image> <label>' line")
    aligned = (root / "Image" / "aligned").resolve()
    images_dir = aligned if aligned.is_dir() else (root / "Image" / "original").resolve()
    check_input(images_dir, "--root: RAF-DB images folder (Image/aligned or Image/original)", folder=True)
    problems = new_problems()
    regular, irregular = scan_images(images_dir)
    names, labels, sources, splits = [], [], [], []
    for number, name, label in rows:
        where = f"{path.name} line {number}"
        split = "train" if name.startswith("train_") else "val" if name.startswith("test_") else None
        if label not in RAFDB_LABELS:
            problems["invalid_label"].append((where, f"label {label!r} is not 1-7"))
        elif split is None:
            problems["bad_row"].append((where, f"{name!r} is neither train_* nor test_*"))
        else:
            fname = f"{Path(name).stem}_aligned.jpg" if images_dir == aligned else name
            if find_image(fname, regular, irregular, where, problems):
                names.append(fname)
                labels.append(RAFDB_LABELS[label])
                sources.append(label)
                splits.append(split)
    df = table_of(names, labels, sources, splits)
    df.attrs["images_dir"] = str(images_dir)
    return df, problems


def read_fer2013_csv(root, problems):
    """fer2013.csv (emotion, pixels, Usage) with each row's split; rows with an unknown Usage are named."""
    path = check_input(root / "fer2013.csv", "--root: fer2013.csv")
    table = read_csv(path, ["emotion", "pixels", "Usage"], "FER2013 file (emotion,pixels,Usage)")
    table["where"] = line_names(path, table)
    table["split"] = table["Usage"].str.strip().map(FER2013_SPLITS)
    for where, usage in zip(table["where"][table["split"].isna()], table["Usage"][table["split"].isna()]):
        problems["bad_row"].append((where, f"Usage {usage!r} is not Training, PublicTest or PrivateTest"))
    return table


def write_fer_images(table, stems, out_dir, stage, problems, progress):
    """Decode the text pixels of the rows in table and write them as PNGs under <out_dir>/images, named
    <stem>_<first 12 hex digits of the pixels' SHA-1>.png: a name always means the same pixels, so no
    run (of this format or another, into the same folder) ever changes the pixels behind an existing
    index; a run only adds files, staged with the index. Returns (rows written, their names, folder)."""
    images_dir = Path(out_dir).resolve() / "images"
    remove_stale_temporaries(images_dir)  # of a run killed before it could clean up
    kept, names = [], []
    for i, (stem, pixels, where) in enumerate(progress_of(list(zip(stems, table["pixels"], table["where"])),
                                                   desc="pixels -> PNG", unit="img", disable=not progress)):
        try:
            values = parse_numbers(pixels, np.int64, " ")
            if values.size != 48 * 48:
                raise ValueError(f"{values.size} pixels, not 48x48")
            if values.min() < 0 or values.max() > 255:
                raise ValueError("pixel values outside 0-255")
        except ValueError as e:
            problems["bad_row"].append((where, str(e)))
            continue
        grey = values.astype(np.uint8).reshape(48, 48)
        name = f"{stem}_{hashlib.sha1(grey.tobytes()).hexdigest()[:12]}.png"
        data = cv2.imencode(".png", grey)[1].tobytes()
        target = images_dir / name
        if not same_bytes(target, data):
            Path(stage(target)).write_bytes(data)
        kept.append(i)
        names.append(name)
    return kept, names, images_dir


def same_bytes(path, data):
    """True if path is a regular file holding exactly data (then it need not be rewritten)."""
    try:
        st = path.stat()
        return stat.S_ISREG(st.st_mode) and st.st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def read_fer2013(root, opts):
    """FER2013: labels 0 Angry ... 6 Neutral; Usage Training / PublicTest / PrivateTest."""
    problems = new_problems()
    table = read_fer2013_csv(root, problems)
    code = table["emotion"].str.strip()
    bad = ~code.isin(list(FER2013_LABELS))
    for where, label in zip(table["where"][bad], table["emotion"][bad]):
        problems["invalid_label"].append((where, f"emotion {label!r} is not 0-6"))
    # the stripped codes of the rows kept (a Series assigned to an empty frame would bring its rows back)
    table = table[~bad & table["split"].notna()].assign(emotion=lambda t: t["emotion"].str.strip())
    stems = [f"fer{i:07d}" for i in table.index]  # row number in fer2013.csv, from 0
    kept, names, images_dir = write_fer_images(table, stems, opts.out_dir, opts.stage, problems, opts.progress)
    t = table.iloc[kept]
    df = table_of(names, t["emotion"].map(FER2013_LABELS), t["emotion"], t["split"])
    df.attrs["images_dir"] = str(images_dir)
    return df, problems


def ferplus_labels(votes, rule="majority"):
    """Canonical class (or -1) and the reason for dropping, per row of ten FERPlus vote counts.

    majority (the FERPlus authors' rule): votes of 1 are outliers and removed; the top emotion is kept
    if it holds more than half of the remaining votes. plurality: the emotion with the most votes,
    ties dropped. Either way an image whose top is unknown or NF (not a face) is dropped."""
    votes = np.asarray(votes, np.float64).reshape(-1, len(FERPLUS_VOTES))
    if rule == "majority":
        votes = np.where(votes <= 1, 0, votes)
    top = votes.argmax(1)
    top_votes = votes.max(1)
    if rule == "majority":
        clear = top_votes > 0.5 * votes.sum(1)
        unclear_why = "no majority"
    else:
        clear = (top_votes > 0) & ((votes == top_votes[:, None]).sum(1) == 1)
        unclear_why = "tie"
    labels = np.where(clear & (top < 8), np.asarray(FERPLUS_LABELS + [-1, -1])[top], -1)
    why = np.where(~clear, unclear_why, np.where(top == 8, "unknown", np.where(top == 9, "not a face (NF)", "")))
    return labels, why


def read_ferplus(root, opts):
    """FERPlus: fer2013new.csv's ten votes per fer2013.csv row (same order), FER2013's splits."""
    problems = new_problems()
    table = read_fer2013_csv(root, problems)
    path = check_input(root / "fer2013new.csv", "--root: fer2013new.csv")
    votes_table = read_csv(path, ["Usage", "Image name"] + FERPLUS_VOTES, "FERPlus file (fer2013new.csv)")
    if len(votes_table) != len(table):
        raise IndexError_(f"{path} has {len(votes_table)} rows but fer2013.csv has {len(table)}: "
                          "they must be the same images in the same order")
    votes = np.stack([as_numbers(votes_table[c]) for c in FERPLUS_VOTES], 1)
    labels, why = ferplus_labels(np.nan_to_num(votes), opts.ferplus_label)
    names = votes_table["Image name"].str.strip()
    where = line_names(path, votes_table)
    keep = np.zeros(len(table), bool)
    for i in range(len(table)):
        if not names.iat[i]:
            problems["dropped"].append((where[i], "no image name (not a face in FERPlus)"))
        elif not re.fullmatch(r"[\w.-]+\.png", names.iat[i]) or names.iat[i].startswith("."):
            problems["bad_row"].append((where[i], f"image name {names.iat[i]!r} is not a plain .png name"))
        elif not (np.isfinite(votes[i]).all() and (votes[i] >= 0).all() and (votes[i] == np.round(votes[i])).all()):
            problems["bad_row"].append((where[i], "votes are not counts"))
        elif labels[i] < 0:
            problems["dropped"].append((names.iat[i], why[i]))
        else:
            keep[i] = pd.notna(table["split"].iat[i])  # an unknown Usage is already named
    sources = votes_table[FERPLUS_VOTES].apply(lambda c: c.str.strip()).agg(",".join, axis=1)
    t = table[keep]
    kept, files, images_dir = write_fer_images(t, [n[:-4] for n in names[keep]], opts.out_dir, opts.stage,
                                               problems, opts.progress)
    rows = np.flatnonzero(keep)[kept]
    df = table_of(files, labels[rows], sources.iloc[rows].tolist(), table["split"].iloc[rows])
    df["listed_as"] = names.iloc[rows].tolist()  # the name FERPlus gives: the same one twice is a duplicate
    df.attrs["images_dir"] = str(images_dir)
    return df, problems


# --- folders: <root>/[split/]<class>/*.jpg ------------------------------------------------------
def read_folders(root, opts):
    """One folder per class, optionally under train/, val/ or test/ (test is the validation split
    when there is no val/). An --out_dir inside --root is not a class."""
    def folders(parent):
        names = subfolders(parent)
        here = [n for n in names if (parent / n).resolve() == Path(opts.out_dir).resolve()]
        if here and here[0].casefold() in {**SPLIT_FOLDERS, **(opts.class_map or CLASS_OF_NAME)}:
            raise IndexError_(f"--out_dir {opts.out_dir}: is the folder {here[0]} of the dataset, whose images "
                              "would be left out; choose another --out_dir")
        return [n for n in names if n not in here]
    top = folders(root)
    by_split = {}
    for name in top:
        split = SPLIT_FOLDERS.get(name.casefold())
        if split in by_split:  # val/ and validation/: which one is the split cannot be known
            raise IndexError_(f"--root {root}: folders {by_split[split]} and {name} are both the {split} split; "
                              "merge them")
        if split:
            by_split[split] = name
    if by_split and ("train" not in by_split or len(by_split) == 1):
        missing = "a validation folder (val/, validation/ or test/)" if "train" in by_split else "train/"
        raise IndexError_(f"--root {root}: split folder{'s' * (len(by_split) > 1)} {', '.join(by_split.values())} "
                          f"without {missing}; for a random split of one folder of class folders, pass that folder "
                          "as --root")
    if by_split:
        others = [n for n in top if n not in by_split.values()]
        if others:
            raise IndexError_(f"--root {root}: split folders beside other folders ({', '.join(map(shown, others))})")
        if "val" not in by_split:
            by_split["val"] = by_split.pop("test")
        groups = {split: (f"{folder}/", root / folder) for split, folder in by_split.items()}
    else:
        groups = {None: ("", root)}
    classes = {(split, name): prefix for split, (prefix, folder) in groups.items() for name in folders(folder)}
    if not classes:
        raise IndexError_(f"--root {root}: no class folders")
    mapping = opts.class_map or CLASS_OF_NAME
    unknown = sorted({name for _, name in classes if name.casefold() not in mapping})
    if unknown:
        hint = (" (numeric folder names need --class_map, e.g. --class_map 0=anger,1=contempt,...)"
                if any(n.isdigit() for n in unknown) and not opts.class_map else "")
        raise IndexError_(f"--root {root}: class folders not recognised: {', '.join(map(shown, unknown))}; expected "
                          f"{'the names in --class_map' if opts.class_map else 'expression names (see --help)'}{hint}")
    if not opts.class_map:  # synonyms: two folders of one class (happy/, happiness/) may be a mistake
        for split in groups:
            same = pd.Series({name: CLASS_NAMES[mapping[name.casefold()]] for s, name in classes if s == split})
            twice = same[same.duplicated(keep=False)]
            if len(twice):
                cls = twice.iloc[0]
                both = sorted(twice.index[twice == cls])
                raise IndexError_(f"--root {root}: folders {', '.join(both)} are all class {cls}; merge them, or say "
                                  f"so with --class_map {','.join(f'{f}={cls.lower()}' for f in both)},...")
    problems = new_problems()
    names, labels, sources, splits = [], [], [], []
    for (split, name), prefix in classes.items():
        found = new_problems()
        files = scan_files(groups[split][1] / name, IMAGE_SUFFIXES, recursive=True, problems=found)
        names += [f"{prefix}{name}/{f}" for f in files]
        labels += [mapping[name.casefold()]] * len(files)
        sources += [name] * len(files)
        splits += [split] * len(files)
        for kind in ("not_regular", "bad_name"):
            problems[kind] += [(f"{prefix}{name}/{n}", why) for n, why in found[kind]]
    df = table_of(names, labels, sources, splits if None not in groups else None)
    df.attrs["images_dir"] = str(root.resolve())
    return df, problems


# The registry: every reader takes (root, opts); its names are fer.cli.index.FORMATS (--format's choices).
FORMATS = {"affectnet": read_affectnet_root, "affectnet_csv": read_affectnet_csv, "rafdb": read_rafdb,
           "fer2013": read_fer2013, "ferplus": read_ferplus, "folders": read_folders}
