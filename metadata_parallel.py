"""Index a facial-expression dataset, in any of the common formats, into the same parquet files.

    --format affectnet      <root>/images/<name>.jpg + <root>/annotations/<name>_{exp,val,aro,lnd}.npy
    --format affectnet_csv  <root>/training.csv, validation.csv + <root>/Manually_Annotated_Images/...
    --format rafdb          <root>/EmoLabel/list_patition_label.txt + <root>/Image/aligned (or original)
    --format fer2013        <root>/fer2013.csv (pixels as text: written once as PNGs under --out_dir)
    --format ferplus        <root>/fer2013new.csv (ten votes per image) beside <root>/fer2013.csv
    --format folders        <root>/<class>/*.jpg, optionally under <root>/train/, val/ or test/
Without --format the layout of --root is recognised (AffectNet's .npy layout when nothing matches).

Writes metadata_all.parquet (every indexed row) and metadata_train.parquet / metadata_val.parquet
(+ metadata_test.parquet where the dataset has a third official split) with the same columns for every
format: filename (relative to the images folder recorded in the file), expression (int64: 0 Neutral,
1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt), valence, arousal (float64, NaN when
absent), landmarks (136 floats or null), source_label (the label as the dataset's files give it), and for
affectnet_csv the face box face_x, face_y, face_w, face_h. The split is the dataset's official one;
without one, scikit-learn's StratifiedShuffleSplit on the rows sorted by filename (same data, fraction and
seed: same split), with names that differ only in case or extension kept on one side.
Damaged input never stops the run: bad rows and files are skipped, counted and named in the summary.
"""
from fer.cli import add_face_arguments
from fer.cli import check_face_arguments
from fer.data.faces import best_face
from fer.data.faces import make_detector
import ast
import hashlib
import os
import re
import signal
import stat
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from fer.cli import ArgumentParser
from fer.trust import FERError
from fer.trust import check_input
from fer.trust import check_output
from fer.trust import check_replaceable
from fer.cli import float_in
from fer.cli import int_at_least
from fer.cli import nonneg_int
from fer.trust import remove_stale_temporaries
from fer.cli import run_main
from fer.trust import staged_outputs

CLASS_NAMES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
NUM_CLASSES = 8
COLUMNS = ["filename", "expression", "valence", "arousal", "landmarks", "source_label"]
FACE_BOX = ["face_x", "face_y", "face_w", "face_h"]
OPTIONAL = ("val", "aro", "lnd")
CHUNK = 2000  # images per worker task: large enough to amortise inter-process traffic
SHOW = 5  # problem files named per kind in the summary
FORMATS = ("affectnet", "affectnet_csv", "rafdb", "fer2013", "ferplus", "folders")

# Each dataset's own label codes -> the canonical class (from the datasets' documentation).
AFFECTNET_DROPPED = {8: "None", 9: "Uncertain", 10: "Non-Face"}
# RAF-DB: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAFDB_LABELS = {"1": 3, "2": 4, "3": 5, "4": 1, "5": 2, "6": 6, "7": 0}
# FER2013: 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
FER2013_LABELS = {"0": 6, "1": 5, "2": 4, "3": 1, "4": 2, "5": 3, "6": 0}
FER2013_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_VOTES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]
FERPLUS_LABELS = [0, 1, 3, 2, 6, 5, 4, 7]  # canonical class of each emotion column (unknown, NF: dropped)
SYNONYMS = {0: "neutral neutrality calm", 1: "happy happiness joy", 2: "sad sadness",
            3: "surprise surprised suprise surprize", 4: "fear fearful afraid scared",
            5: "disgust disgusted", 6: "anger angry", 7: "contempt contemptuous"}
CLASS_OF_NAME = {name: c for c, names in SYNONYMS.items() for name in names.split()}
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
OPENCV_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM"}  # what training's cv2.imread can read

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
    bar = tqdm(total=sum(sizes), desc=desc, unit="img", disable=not progress)
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


def build_index(images_dir, annotations_dir, ext="jpg", workers=None, verify_images=False, progress=True):
    """Index one AffectNet-layout folder. Returns (DataFrame sorted by filename, {kind: [(file, why)]})."""
    df, problems = read_affectnet(images_dir, annotations_dir, ext, workers, progress)
    return finish(df, problems, verify_images, workers, progress), problems


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
        for i in tqdm(range(len(table)), desc=fname, unit="row", disable=not opts.progress):
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
    import cv2

    images_dir = Path(out_dir).resolve() / "images"
    remove_stale_temporaries(images_dir)  # of a run killed before it could clean up
    kept, names = [], []
    for i, (stem, pixels, where) in enumerate(tqdm(list(zip(stems, table["pixels"], table["where"])),
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
def parse_class_map(text):
    """--class_map '0=anger,1=contempt,...' -> {folder name (case-folded): class}."""
    import argparse

    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        folder, _, name = item.partition("=")
        if not _ or not folder.strip() or name.strip().casefold() not in CLASS_OF_NAME:
            raise argparse.ArgumentTypeError(f"{item!r} is not FOLDER=CLASS with a class among "
                                             f"{', '.join(c.lower() for c in CLASS_NAMES)}")
        key = folder.strip().casefold()
        if key in mapping:  # the last one would silently win
            raise argparse.ArgumentTypeError(f"folder {folder.strip()!r} is given twice")
        mapping[key] = CLASS_OF_NAME[name.strip().casefold()]
    if not mapping:
        raise argparse.ArgumentTypeError("empty map")
    return mapping


def shown(name):
    """A folder name for a one-line message: quoted and escaped when it holds a line break or the like."""
    return name if name.isprintable() else repr(name)


def subfolders(folder):
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


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


# --- common to every format ---------------------------------------------------------------------
def finish(df, problems, verify=False, workers=None, progress=True):
    """The checks every format gets: impossible values out, images decoded (if asked), duplicates named."""
    va = df[["valence", "arousal"]].to_numpy(np.float64)
    bad = (np.isinf(va) | (~np.isnan(va) & ((va < -1) | (va > 1)) & (va != -2))).any(1)
    problems["bad_value"] += [(f, f"valence {v}, arousal {a}") for f, v, a in
                              zip(df["filename"][bad], df["valence"][bad], df["arousal"][bad])]
    df = df[~bad]
    if verify and len(df):
        unreadable = dict(check_images(df.attrs["images_dir"], df["filename"].tolist(), workers, progress))
        problems["unreadable_image"] += list(unreadable.items())
        df = df[~df["filename"].isin(unreadable)]
    df = listed_twice(df, problems)
    key = same_image_key(df["filename"])
    dup = key.duplicated(keep=False)
    problems["duplicate_name"] += [(", ".join(sorted(g)), "same name")
                                   for _, g in df["filename"][dup].groupby(key[dup])]
    if "split" in df.columns:
        sides = df.groupby(key)["split"].nunique()
        leaks = df["filename"][key.isin(sides.index[sides > 1])]
        problems["split_leak"] += [(f, "on both sides of the official split") for f in leaks]
    return df.sort_values("filename", kind="stable", ignore_index=True)


def listed_twice(df, problems):
    """The rule for an image the dataset lists more than once: with one label it is kept once, in the
    training split if it is listed there (validation must not hold training images); with different
    labels no row of it is kept (which label is right cannot be known). Both are named."""
    listed = (df["listed_as"] if "listed_as" in df.columns else df["filename"]).astype(str)
    if set(FACE_BOX) <= set(df.columns):  # one photo, several faces: rows with different boxes are not duplicates
        listed = listed + df[FACE_BOX].astype(str).agg(lambda box: f" (face box {', '.join(box)})", axis=1)
    again = listed.duplicated(keep=False)
    if not again.any():
        return df
    drop = []
    for name, rows in df[again].groupby(listed[again], sort=True):
        if rows["expression"].nunique() == 1:
            if "split" in rows.columns and rows["split"].nunique() > 1:
                rows = rows.sort_values("split", key=lambda s: s.map({"train": 0, "val": 1, "test": 2}), kind="stable")
                where = f" in {' and '.join(dict.fromkeys(rows['split']))}: kept in {rows['split'].iloc[0]} only"
            else:
                where = ": kept once"
            problems["listed_twice"].append((name, f"listed {len(rows)} times with the same label{where}"))
            drop += list(rows.index[1:])
        else:
            labels = ", ".join(dict.fromkeys(rows["source_label"].astype(str)))
            problems["conflicting_labels"].append((name, f"listed {len(rows)} times with different labels "
                                                         f"({labels}): dropped"))
            drop += list(rows.index)
    return df.drop(index=drop)


def same_image_key(filenames):
    """Names that differ only in case or extension are taken for the same image."""
    return filenames.astype(str).str.replace(r"\.[^./]*$", "", regex=True).str.casefold()


def _decode_chunk(task):
    """Worker: decode images fully (Pillow raises on a truncated file, where OpenCV only warns)."""
    from PIL import Image

    images_dir, names = task
    bad = []
    for name in names:
        try:
            with Image.open(os.path.join(images_dir, name)) as im:
                im.load()
                if im.format not in OPENCV_FORMATS:
                    raise ValueError(f"{im.format} image, which OpenCV cannot read")
        except Exception as e:  # Pillow raises many types for damaged files
            bad.append((name, f"cannot be decoded ({str(e).splitlines()[0] if str(e) else type(e).__name__})"))
    return bad


def check_images(images_dir, names, workers=None, progress=True):
    """(name, why) of every image that does not decode completely."""
    chunks = [names[i:i + CHUNK // 4] for i in range(0, len(names), CHUNK // 4)]
    return [bad for result in run_chunks(_decode_chunk, [(str(images_dir), c) for c in chunks], workers,
                                         [len(c) for c in chunks], "decoding", progress) for bad in result]


def stratified_split(df, val_fraction=0.2, seed=42):
    """Split the rows with labels 0-7 into (train, val), stratified on expression.

    Rows are sorted by filename first, then StratifiedShuffleSplit(n_splits=1, test_size=val_fraction,
    random_state=seed): the exact recipe behind the published baseline split. Names that differ only
    in case or extension count as one image (split as the first of them), so a face never lands on
    both sides; without such names the split is the recipe's exactly.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    valid = labelled(df).sort_values("filename", kind="stable", ignore_index=True)
    key = same_image_key(valid["filename"])
    first = ~key.duplicated()
    reps = valid[first]
    counts = reps["expression"].value_counts()
    if (counts < 2).any():
        few = ", ".join(f"class {c} has {n}" for c, n in counts[counts < 2].items())
        raise IndexError_(f"too few rows to stratify ({few}; at least 2 per class are needed)")
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    try:
        _, val_idx = next(splitter.split(np.zeros(len(reps)), reps["expression"]))
    except ValueError as e:
        raise IndexError_(f"cannot split {len(reps)} rows with --val_fraction {val_fraction}: {e}") from None
    is_val = key.isin(set(key[first].iloc[val_idx])).to_numpy()
    return valid[~is_val].reset_index(drop=True), valid[is_val].reset_index(drop=True)


def labelled(df):
    """The rows whose label is one of the 8 training classes (pandas carries df.attrs along)."""
    return df[df["expression"].between(0, NUM_CLASSES - 1)].reset_index(drop=True)


def official_split(df):
    """{split: rows with labels 0-7} from the reader's split column."""
    valid = labelled(df)
    parts = {name: valid[valid["split"] == name].reset_index(drop=True) for name in ("train", "val", "test")}
    if parts["train"].empty or parts["val"].empty:
        raise IndexError_(f"the official split leaves {len(parts['train'])} training and {len(parts['val'])} "
                          "validation rows with labels 0-7")
    return {name: part for name, part in parts.items() if name != "test" or not part.empty}


def write_parquet(df, path, stage=None):
    """Write atomically (alone or as part of a stage): a failed run never leaves a half-written index."""
    if stage is None:
        with staged_outputs() as stage:
            return write_parquet(df, path, stage)
    df.drop(columns=["split", "listed_as"], errors="ignore").to_parquet(stage(path), index=False)  # attrs travel in metadata


def skipped(problems):
    """'; N <kind>, e.g. <name>: <why>' for the two largest kinds of problems (skipped rows...), or ''."""
    kinds = sorted(((len(items), kind) for kind, items in problems.items() if items), reverse=True)[:2]
    return "".join(f"; {n} {PROBLEMS[kind]}, e.g. {problems[kind][0][0]}: {problems[kind][0][1]}"
                   for n, kind in kinds)


def summarize(problems, out=None):
    out = out or sys.stdout  # looked up now: a redirected stdout gets the summary too
    for kind, items in problems.items():
        if not items:
            continue
        if kind == "dropped":  # a count per reason says more than the first few names
            reasons = pd.Series([why for _, why in items]).value_counts()
            print(f"  {len(items)} {PROBLEMS[kind]}: " + ", ".join(f"{n} {why}" for why, n in reasons.items()),
                  file=out)
            continue
        shown = "; ".join(f"{name}: {why}" for name, why in items[:SHOW])
        more = f" ... and {len(items) - SHOW} more" if len(items) > SHOW else ""
        print(f"  {len(items)} {PROBLEMS[kind]}: {shown}{more}", file=out)


def class_table(parts):
    """Rows per class (canonical order) and split, with totals: the balance of what training will see."""
    counts = pd.DataFrame({name: pd.Series(part["expression"]).value_counts() for name, part in parts.items()})
    counts = counts.reindex(range(len(CLASS_NAMES))).fillna(0).astype(int)
    counts.index = CLASS_NAMES
    counts = counts[(counts > 0).any(axis=1)]  # a dataset without Contempt (RAF-DB, FER2013) shows 7 rows
    counts["all splits"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum()
    width = max(8, *map(len, counts.columns))
    lines = [f"  {'rows per class':<16}" + "".join(f"{c:>{width + 2}}" for c in counts.columns)]
    lines += [f"  {name:<16}" + "".join(f"{n:>{width + 2},}" for n in row) for name, row in counts.iterrows()]
    return "\n".join(lines)


def detect_format(root):
    """The format whose files are in root; AffectNet's .npy layout when none is recognised."""
    if (root / "fer2013new.csv").exists():
        return "ferplus"
    checks = [("fer2013", ["fer2013.csv"]), ("rafdb", ["EmoLabel/list_patition_label.txt"]),
              ("affectnet_csv", ["training.csv", "Manually_Annotated_file_lists/training.csv"]),
              ("affectnet", ["annotations"])]
    for fmt, names in checks:
        if any((root / n).exists() for n in names):
            return fmt
    if any(n.casefold() in CLASS_OF_NAME or n.casefold() in SPLIT_FOLDERS for n in subfolders(root)):
        return "folders"
    return "affectnet"


def check_val_root(root, val_root, flag="--root"):
    """--val_root must be another folder: equal or nested folders would validate on training images."""
    a, b = Path(root).resolve(), val_root.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise FERError(f"--val_root {val_root} overlaps {flag} {root}: validation images would also be "
                       "training images")
    return val_root


# --- five landmarks by the face detector (--detect_landmarks) ------------------------------------
def _detect_chunk(task):
    """Worker: five landmarks of the largest face (the one on the face box, where the index has one)
    of each image, in pixels of the image file; (name, why) for images without one."""
    import cv2

    pass

    paths, boxes, min_face, threshold = task
    detector = _detect_chunk.__dict__.get("detector")
    if detector is None or (detector.min_face, detector.threshold) != (min_face, threshold):
        detector = _detect_chunk.detector = make_detector("mtcnn", min_face, threshold)
    points, missed = [], []
    for (path, name), box in zip(paths, boxes):
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            points.append(None)
            missed.append((name, "cannot be decoded"))
            continue
        rgb, x0, y0 = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 0, 0
        if box is not None:  # detect inside the crop training makes, report in the file's pixels
            from fer.data.dataset import crop_rect
            x0, y0, x1, y1 = crop_rect(rgb.shape, box)
            rgb = rgb[y0:y1, x0:x1]
        face = best_face(detector(rgb))
        points.append(None if face is None else (face.points + (x0, y0)).reshape(-1).round(3))
        if face is None:
            missed.append((name, "no face found"))
    return points, missed


def detect_landmarks(df, args):
    """df with a landmarks5 column (10 floats: FER_face.POINTS in pixels of the image file, or None)
    from MTCNN on every image, in worker processes; images without a face are recorded as problems."""
    images_dir = Path(df.attrs["images_dir"])
    stage = getattr(args, "stage", None)
    paths = []
    for name in df["filename"]:
        target = images_dir / name  # PNGs written from CSV pixels are still under their staged names
        paths.append((str(stage.files.get(target, target) if stage is not None else target), name))
    boxes = [None] * len(df)
    if set(FACE_BOX) <= set(df.columns):
        boxes = [tuple(b) for b in df[FACE_BOX].to_numpy(np.float64)]
    step = 64
    tasks = [(paths[i:i + step], boxes[i:i + step], args.min_face, args.face_threshold)
             for i in range(0, len(df), step)]
    points, missed = [], []
    for chunk_points, chunk_missed in run_chunks(_detect_chunk, tasks, args.workers, [len(t[0]) for t in tasks],
                                                 "landmarks", args.progress):
        points += chunk_points
        missed += chunk_missed
    df = df.copy()
    df["landmarks5"] = points
    return df, missed


def index_dataset(fmt, root, args, stage, is_val_root=False):
    """(table, problems) for a format, with the common checks applied. --images_dir and --annotations_dir
    are --root's folders: --val_root has its own (else validation would read training files)."""
    args.stage, args.progress = stage, not args.quiet
    if fmt == "affectnet":
        images_dir, annotations_dir = (None, None) if is_val_root else (args.images_dir, args.annotations_dir)
        df, problems = read_affectnet(images_dir or root / "images", annotations_dir or root / "annotations",
                                      args.ext, args.workers, args.progress)
    else:
        reader = {"affectnet_csv": read_affectnet_csv, "rafdb": read_rafdb, "fer2013": read_fer2013,
                  "ferplus": read_ferplus, "folders": read_folders}[fmt]
        df, problems = reader(root, args)
    verify = args.verify_images and fmt not in ("fer2013", "ferplus")  # our own PNGs, from checked pixels
    df = finish(df, problems, verify, args.workers, args.progress)
    if args.detect_landmarks:
        df, problems["no_face"] = detect_landmarks(df, args)
    return df, problems


def random_split_flags(args, official):
    """--val_fraction and --seed set the random split: with an official split they are not used, and say so."""
    given = [f"{flag} {value}" for flag, value in (("--val_fraction", args.val_fraction), ("--seed", args.seed))
             if value is not None]
    if official and given:
        print(f"note: {' and '.join(given)} not used: this dataset has an official split ({official})")


def parse_args(argv):
    p = ArgumentParser(description=__doc__)
    p.add_argument("--format", choices=FORMATS, help="dataset layout (default: recognised from --root's files, "
                                                     "else affectnet)")
    p.add_argument("--root", default=".", help="dataset folder (default: .)")
    p.add_argument("--out_dir", default=".", help="where the parquet files (and PNGs of CSV pixels) go (default: .)")
    p.add_argument("--val_fraction", type=float_in(0, 1, True, True),
                   help="validation share of the random split, for datasets without an official one (default 0.2; "
                        "not used with an official split, and a note says so)")
    p.add_argument("--seed", type=int_at_least(0, 2**32 - 1),
                   help="random_state of the random split (default 42; not used with an official split)")
    p.add_argument("--workers", type=nonneg_int, default=0, help="worker processes (default 0: one per CPU core)")
    p.add_argument("--verify_images", action="store_true",
                   help="decode every image completely (Pillow) and skip, and name, unreadable or truncated ones "
                        "and formats OpenCV cannot read (slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--detect_landmarks", action="store_true",
                   help="add a landmarks5 column: five landmarks (eye centres, nose tip, mouth corners) per image "
                        "by the MTCNN face detector, for datasets without landmarks; training takes its crop "
                        "template from them. Images without a face are named")
    pass
    add_face_arguments(p.add_argument_group("with --detect_landmarks (MTCNN)"), min_face=20, detector=False,
                           align=False)
    g = p.add_argument_group("affectnet (.npy layout) only")
    g.add_argument("--images_dir", help="images folder, if not <root>/images (--val_root's is always its images/)")
    g.add_argument("--annotations_dir", help="annotations folder, if not <root>/annotations (--val_root's is always "
                                             "its annotations/)")
    g.add_argument("--ext", help="image file extension (default: jpg)")
    g.add_argument("--val_root", help="use this separately annotated folder (e.g. AffectNet's val_set, with images/ "
                                      "and annotations/) as the validation split instead of a random split; it "
                                      "must not be --root or inside it (an error)")
    g = p.add_argument_group("other formats")
    g.add_argument("--ferplus_label", choices=("majority", "plurality"),
                   help="ferplus: the authors' majority rule (votes of 1 dropped, top emotion needs more than half "
                        "of the rest) or the emotion with the most votes (ties dropped); default majority")
    g.add_argument("--class_map", type=parse_class_map,
                   help="folders: FOLDER=CLASS pairs, e.g. 0=anger,1=contempt,2=disgust,3=fear,4=happy,5=neutral,"
                        "6=sad,7=surprise for numeric folders; class names: neutral, happy, sad, surprise, fear, "
                        "disgust, anger, contempt or a synonym (happiness, angry, surprised, fearful, disgusted...)")
    args = p.parse_args(argv)
    check_face_arguments(p, args, args.detect_landmarks, "--detect_landmarks")
    return p, args


def main(argv=None):
    p, args = parse_args(argv)
    t0 = time.time()
    root = check_input(args.root, "--root", folder=True)
    out = check_output(args.out_dir, "--out_dir", folder=True)
    for name in ("all", "train", "val", "test"):  # a folder there would fail only after the whole run
        check_replaceable(out / f"metadata_{name}.parquet", "--out_dir")
    fmt = args.format or detect_format(root)
    if not args.format and fmt != "affectnet":
        print(f"format: {fmt} (recognised from {root}; --format overrides)")
    only = {"--images_dir": args.images_dir, "--annotations_dir": args.annotations_dir, "--val_root": args.val_root,
            "--ext": args.ext}
    for flag, value in only.items():
        if value and fmt != "affectnet":
            raise FERError(f"{flag} is for --format affectnet, not {fmt}")
    if args.ferplus_label and fmt != "ferplus":
        raise FERError(f"--ferplus_label is for --format ferplus, not {fmt}")
    official = "--val_root" if args.val_root else f"--format {fmt}" if fmt not in ("affectnet", "folders") else None
    random_split_flags(args, official)  # folders: checked once its split folders are known
    args.ext, args.ferplus_label = args.ext or "jpg", args.ferplus_label or "majority"
    if args.class_map and fmt != "folders":
        raise FERError(f"--class_map is for --format folders, not {fmt}")
    if args.val_root:
        val_root = check_input(args.val_root, "--val_root", folder=True)
        for flag, folder in (("--root", root), ("--images_dir", args.images_dir),
                             ("--annotations_dir", args.annotations_dir)):
            if folder:
                check_val_root(folder, val_root, flag)

    with staged_outputs() as stage:
        df, problems = index_dataset(fmt, root, args, stage)
        try:
            if args.val_root:
                val_root = Path(args.val_root)
                val_all, val_problems = index_dataset(fmt, val_root, args, stage, is_val_root=True)
                for kind, items in val_problems.items():
                    problems[kind] += [(f"{val_root.name}/{name}", why) for name, why in items]
                in_both = same_image_key(df["filename"]).isin(set(same_image_key(val_all["filename"])))
                problems["split_leak"] += [(f, "also in --val_root") for f in df["filename"][in_both]]
                parts = {"train": labelled(df), "val": labelled(val_all)}
                if parts["val"].empty or parts["train"].empty:
                    raise IndexError_(f"no rows with labels 0-7 in {'--val_root' if parts['val'].empty else '--root'}")
            elif "split" in df.columns:
                random_split_flags(args, "its split folders" if fmt == "folders" else None)  # others: said above
                parts = official_split(df)
            else:
                parts = dict(zip(("train", "val"), stratified_split(df, args.val_fraction or 0.2,
                                                                    42 if args.seed is None else args.seed)))
        except IndexError_ as e:  # too few rows: say what was skipped (the summary is not printed)
            raise IndexError_(f"{e}{skipped(problems)}") from None
        for name, part in {"all": df, **parts}.items():
            write_parquet(part, out / f"metadata_{name}.parquet", stage)
    stale = out / "metadata_test.parquet"
    if "test" not in parts and stale.is_file():
        stale.unlink()  # from an earlier run on another dataset: the set in out_dir is this run's
        print(f"removed {stale} (left by an earlier run; this dataset has no test split)")
    elapsed = time.time() - t0
    sizes = ", ".join(f"{name} {len(part)}" for name, part in parts.items())
    print(f"indexed {len(df)} images ({fmt}) in {elapsed:.1f}s ({len(df) / max(elapsed, 1e-9):.0f} img/s): "
          f"{sizes}, written to {out.resolve()}")
    print(class_table(parts))
    summarize(problems)


if __name__ == "__main__":
    run_main(main)
