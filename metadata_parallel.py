"""Index an AffectNet-style folder into parquet files.

    <root>/images/<name>.jpg
    <root>/annotations/<name>_exp.npy   required: expression class (0-7 are used for training)
    <root>/annotations/<name>_val.npy   optional: valence
    <root>/annotations/<name>_aro.npy   optional: arousal
    <root>/annotations/<name>_lnd.npy   optional: 68 landmarks as 136 floats

Writes metadata_all.parquet (every indexed image, any label), and metadata_train.parquet /
metadata_val.parquet: a stratified split of the rows with labels 0-7 (scikit-learn's
StratifiedShuffleSplit on the rows sorted by filename, so the same folder, fraction and seed always
give the same split), or, with --val_root, the rows of a separately annotated folder as validation.
Each file records the absolute images folder, so it works from any working directory.
"""
import argparse
import ast
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

NUM_CLASSES = 8
OPTIONAL = ("val", "aro", "lnd")
CHUNK = 2000  # images per worker task: large enough to amortise inter-process traffic
SHOW = 5  # problem files named per kind in the summary


class IndexError_(Exception):
    """A problem with the input as a whole (missing folder, unsplittable data): one line for the user."""


# --- fast .npy reading --------------------------------------------------------------------------
# AffectNet has over a million tiny .npy files whose headers are almost all identical, so parsing
# each header once and reading the body with one read() is several times faster than np.load.
_HEADERS = {}


def read_npy(path):
    """Read a .npy file (never pickled objects); raises ValueError on anything malformed."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # raw fd: no buffered-file object per read
    try:
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


def read_scalar(path):
    """A scalar annotation as float, whether stored as a number or (AffectNet) as a string."""
    arr = read_npy(path)
    if arr.size != 1:
        raise ValueError(f"expected one value, found {arr.size}")
    try:
        return float(arr.reshape(-1)[0])
    except ValueError:
        raise ValueError(f"not a number: {arr.reshape(-1)[0]!r}") from None


# --- indexing -----------------------------------------------------------------------------------
def _index_chunk(task):
    """Worker: read the annotations of a chunk of images. Returns (columns, problems)."""
    images_dir, ann_dir, items, verify = task
    if verify:
        import cv2  # only the workers that decode need it
    names, labels, va = [], [], []
    landmarks = np.full((len(items), 136), np.nan)
    has_landmarks = np.zeros(len(items), bool)
    problems = []
    for stem, fname, has in items:
        base = os.path.join(ann_dir, stem)
        try:
            label = read_scalar(base + "_exp.npy")
            if not label.is_integer():
                raise ValueError(f"class {label} is not an integer")
        except (OSError, ValueError) as e:
            problems.append(("corrupt_npy", f"{stem}_exp.npy", str(e)))
            continue
        if verify:
            img = cv2.imread(os.path.join(images_dir, fname), cv2.IMREAD_COLOR)
            if img is None or img.size == 0:
                problems.append(("unreadable_image", fname, "cannot be decoded"))
                continue
        row = len(names)
        values = [np.nan, np.nan]
        for i, key in enumerate(("val", "aro")):
            if has[key]:
                try:
                    values[i] = read_scalar(f"{base}_{key}.npy")
                except (OSError, ValueError) as e:
                    problems.append(("corrupt_npy", f"{stem}_{key}.npy", str(e)))
        if has["lnd"]:
            try:
                lnd = read_npy(base + "_lnd.npy")
                if lnd.size != 136:
                    raise ValueError(f"expected 136 values, found {lnd.size}")
                landmarks[row] = lnd.reshape(-1).astype(np.float64)  # also parses string-typed files
                has_landmarks[row] = True
            except (OSError, ValueError) as e:
                problems.append(("corrupt_npy", f"{stem}_lnd.npy", str(e)))
        names.append(fname)
        labels.append(int(label))
        va.append(values)
    n = len(names)
    return (names, labels, np.asarray(va, np.float64).reshape(n, 2), landmarks[:n], has_landmarks[:n]), problems


def build_index(images_dir, annotations_dir, ext="jpg", workers=None, verify_images=False, progress=True):
    """Index one folder. Returns (DataFrame sorted by filename, {problem kind: [(file, why), ...]})."""
    images_dir, annotations_dir = Path(images_dir).resolve(), Path(annotations_dir).resolve()
    for what, d in (("images", images_dir), ("annotations", annotations_dir)):
        if not d.is_dir():
            raise IndexError_(f"{what} folder not found: {d}")
    # List each folder once; existence checks then become set look-ups instead of syscalls.
    suffix = "." + ext.lstrip(".").lower()
    images = sorted(e.name for e in os.scandir(images_dir) if e.name.lower().endswith(suffix) and e.is_file())
    annotations = set(os.listdir(annotations_dir))
    if not images:
        raise IndexError_(f"no *{suffix} images in {images_dir} (see --ext)")

    problems = {"missing_exp": [], "corrupt_npy": [], "bad_label": [], "unreadable_image": []}
    items = []
    for fname in images:
        stem = fname[: -len(suffix)]
        if stem + "_exp.npy" not in annotations:
            problems["missing_exp"].append((fname, f"no {stem}_exp.npy"))
            continue
        items.append((stem, fname, {k: f"{stem}_{k}.npy" in annotations for k in OPTIONAL}))

    tasks = [(str(images_dir), str(annotations_dir), items[i:i + CHUNK], verify_images)
             for i in range(0, len(items), CHUNK)]
    workers = workers or os.cpu_count() or 1
    columns = []
    bar = tqdm(total=len(items), desc="indexing", unit="img", disable=not progress)
    if workers == 1 or len(tasks) <= 1:
        results = map(_index_chunk, tasks)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)))
        results = pool.map(_index_chunk, tasks)
    try:
        for (chunk_columns, chunk_problems), task in zip(results, tasks):
            columns.append(chunk_columns)
            for kind, name, why in chunk_problems:
                problems[kind].append((name, why))
            bar.update(len(task[2]))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    names = [name for c in columns for name in c[0]]
    va = np.concatenate([c[2] for c in columns]) if columns else np.zeros((0, 2))
    lnd = np.concatenate([c[3] for c in columns]) if columns else np.zeros((0, 136))
    has_lnd = np.concatenate([c[4] for c in columns]) if columns else np.zeros(0, bool)
    df = pd.DataFrame({
        "filename": pd.Series(names, dtype=str),
        "expression": np.asarray([label for c in columns for label in c[1]], dtype=np.int64),
        "valence": va[:, 0], "arousal": va[:, 1],
        "landmarks": [row if ok else None for row, ok in zip(lnd, has_lnd)],
    })
    bad = ~df["expression"].between(0, NUM_CLASSES - 1)
    problems["bad_label"] = [(f, f"class {e}") for f, e in zip(df["filename"][bad], df["expression"][bad])]
    df.attrs["images_dir"] = str(images_dir)
    return df.sort_values("filename", kind="stable", ignore_index=True), problems


def stratified_split(df, val_fraction=0.2, seed=42):
    """Split the rows with labels 0-7 into (train, val), stratified on expression.

    Rows are sorted by filename first, then StratifiedShuffleSplit(n_splits=1, test_size=val_fraction,
    random_state=seed): the exact recipe behind the published baseline split.
    """
    from sklearn.model_selection import StratifiedShuffleSplit

    valid = labelled(df).sort_values("filename", kind="stable", ignore_index=True)
    counts = valid["expression"].value_counts()
    if (counts < 2).any():
        few = ", ".join(f"class {c} has {n}" for c, n in counts[counts < 2].items())
        raise IndexError_(f"too few rows to stratify ({few}; at least 2 per class are needed)")
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    try:
        train_idx, val_idx = next(splitter.split(np.zeros(len(valid)), valid["expression"]))
    except ValueError as e:
        raise IndexError_(f"cannot split {len(valid)} rows with --val_fraction {val_fraction}: {e}") from None
    return valid.iloc[np.sort(train_idx)].reset_index(drop=True), valid.iloc[np.sort(val_idx)].reset_index(drop=True)


def labelled(df):
    """The rows whose label is one of the 8 training classes (pandas carries df.attrs along)."""
    return df[df["expression"].between(0, NUM_CLASSES - 1)].reset_index(drop=True)


def write_parquet(df, path):
    """Write atomically, so an interrupted run never leaves a half-written index behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)  # df.attrs (the images folder) travels in the file's metadata
    os.replace(tmp, path)


def summarize(problems, out=sys.stdout):
    labels = {"missing_exp": "images without _exp.npy (skipped)",
              "corrupt_npy": "unreadable or corrupt .npy files (image skipped if _exp, else value left empty)",
              "bad_label": "labels outside 0-7 (kept in metadata_all only)",
              "unreadable_image": "images that cannot be decoded (skipped)"}
    for kind, items in problems.items():
        if items:
            shown = "; ".join(f"{name}: {why}" for name, why in items[:SHOW])
            more = f" ... and {len(items) - SHOW} more" if len(items) > SHOW else ""
            print(f"  {len(items)} {labels[kind]}: {shown}{more}", file=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=".", help="dataset folder holding images/ and annotations/ (default: .)")
    p.add_argument("--images_dir", help="images folder, if not <root>/images")
    p.add_argument("--annotations_dir", help="annotations folder, if not <root>/annotations")
    p.add_argument("--out_dir", default=".", help="where the three parquet files go (default: .)")
    p.add_argument("--val_fraction", type=float, default=0.2, help="validation share of the random split")
    p.add_argument("--seed", type=int, default=42, help="random_state of the stratified split")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per CPU core)")
    p.add_argument("--ext", default="jpg", help="image file extension (default: jpg)")
    p.add_argument("--val_root", help="use this separately annotated folder (e.g. AffectNet's val_set, with "
                                      "images/ and annotations/) as the validation split instead of a random split")
    p.add_argument("--verify_images", action="store_true", help="decode every image and skip unreadable ones (slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        p.error("--val_fraction must be between 0 and 1")

    t0 = time.time()
    root = Path(args.root)
    if not root.is_dir():
        sys.exit(f"error: dataset root not found: {root.resolve()}")
    try:
        df, problems = build_index(args.images_dir or root / "images", args.annotations_dir or root / "annotations",
                                   args.ext, args.workers, args.verify_images, not args.quiet)
        if args.val_root:
            train = labelled(df)
            val_root = Path(args.val_root)
            val_all, val_problems = build_index(val_root / "images", val_root / "annotations", args.ext,
                                                args.workers, args.verify_images, not args.quiet)
            val = labelled(val_all)
            for kind, items in val_problems.items():
                problems[kind] += [(f"{val_root.name}/{name}", why) for name, why in items]
            if val.empty or train.empty:
                raise IndexError_(f"no rows with labels 0-7 in {'--val_root' if val.empty else '--root'}")
        else:
            train, val = stratified_split(df, args.val_fraction, args.seed)
    except IndexError_ as e:
        sys.exit(f"error: {e}")

    out = Path(args.out_dir)
    for name, part in (("all", df), ("train", train), ("val", val)):
        write_parquet(part, out / f"metadata_{name}.parquet")
    elapsed = time.time() - t0
    print(f"indexed {len(df)} images in {elapsed:.1f}s ({len(df) / max(elapsed, 1e-9):.0f} img/s): "
          f"train {len(train)}, val {len(val)}, written to {out.resolve()}")
    summarize(problems)


if __name__ == "__main__":
    main()
