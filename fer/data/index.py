"""Building an index (metadata_parallel.py): a format's table (fer.data.formats) through the checks every
format gets (impossible values, undecodable images, rows listed twice, duplicate names), optionally five
landmarks per image from the face detector, split (the dataset's official split, --val_root, or a
stratified random one), and written as metadata_{all,train,val[,test]}.parquet together, with the
summary of what was skipped and the rows per class.

make_index(args) is the whole run on the checked flags of fer.cli.index; build_index, stratified_split
and write_parquet are the steps for code that indexes an AffectNet-layout folder itself (the tests, bench).
"""
import copy
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import StratifiedShuffleSplit

from fer.cli.index import random_split_flags
from fer.constants import CLASS_NAMES, NUM_CLASSES
from fer.data import leakage
from fer.data.faces import best_face, crop_rect, make_detector
from fer.data.formats import CHUNK, FACE_BOX, FORMATS, PROBLEMS, IndexError_, read_affectnet, run_chunks
from fer.trust import exact_duplicates, inside, resolve_rows, staged_outputs

SHOW = 5  # problem files named per kind in the summary
OPENCV_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM"}  # what training's cv2.imread can read

def build_index(images_dir, annotations_dir, ext="jpg", workers=None, verify_images=False, progress=True):
    """Index one AffectNet-layout folder. Returns (DataFrame sorted by filename, {kind: [(file, why)]})."""
    df, problems = read_affectnet(images_dir, annotations_dir, ext, workers, progress)
    return finish(df, problems, verify_images, workers, progress), problems


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


# --- splits and outputs -------------------------------------------------------------------------
def stratified_split(df, val_fraction=0.2, seed=42):
    """Split the rows with labels 0-7 into (train, val), stratified on expression.

    Rows are sorted by filename first, then StratifiedShuffleSplit(n_splits=1, test_size=val_fraction,
    random_state=seed): the exact recipe behind the published baseline split. Names that differ only
    in case or extension count as one image (split as the first of them), so a face never lands on
    both sides; without such names the split is the recipe's exactly.
    """
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
    # the attrs (images_dir) travel in the parquet metadata
    df.drop(columns=["split", "listed_as"], errors="ignore").to_parquet(stage(path), index=False)


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


# --- five landmarks by the face detector (--detect_landmarks) ------------------------------------
def _detect_chunk(task):
    """Worker: five landmarks of the largest face (the one on the face box, where the index has one)
    of each image, in pixels of the image file; (name, why) for images without one."""
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


# --- the run ------------------------------------------------------------------------------------
def index_dataset(fmt, root, args, stage, is_val_root=False):
    """(table, problems) for a format, with the common checks applied. --images_dir and --annotations_dir
    are --root's folders: --val_root has its own (else validation would read training files)."""
    args.stage, args.progress = stage, not args.quiet
    opts = args
    if is_val_root:
        opts = copy.copy(args)
        opts.images_dir = opts.annotations_dir = None
    df, problems = FORMATS[fmt](root, opts)
    verify = args.verify_images and fmt not in ("fer2013", "ferplus")  # our own PNGs, from checked pixels
    df = finish(df, problems, verify, args.workers, args.progress)
    rows_inside_root(df, root, getattr(args, "allow_outside_root", False), stage)
    if args.detect_landmarks:
        df, problems["no_face"] = detect_landmarks(df, args)
    return df, problems


def rows_inside_root(df, root, allow_outside, stage=None):
    """Trust rule 1 at indexing: every row's image, links followed, lies inside the dataset root (--root,
    or the images folder when that lies elsewhere), recorded as df.attrs["dataset_root"] for the loaders;
    else an error naming the row. Images the run writes itself (PNGs of CSV pixels) are still staged."""
    images_dir = df.attrs["images_dir"]
    base = Path(root).resolve() if inside(images_dir, root) else Path(images_dir)
    df.attrs["dataset_root"] = str(base)
    staged = {str(t) for t in stage.files} if stage is not None else set()
    names = [f for f in df["filename"] if os.path.join(images_dir, f) not in staged]
    resolve_rows(images_dir, names, base, f"--root {root}", allow_outside)


def same_images(parts, problems, stage, digests):
    """Trust rule 1: the same image reachable twice across the index (a link, byte-identical files in two
    class folders or in training and validation) is named in the summary. The images are read where this
    run has them (a PNG it converted is still staged); digests: the contents the leakage guard hashed."""
    paths, names = [], []
    for part in parts:
        paths += [leakage.image_path(part.attrs["images_dir"], f, stage) for f in part["filename"]]
        names += list(part["filename"])
    problems["same_image"] += [(", ".join(g[:4]) + (" ..." if len(g) > 4 else ""), f"{len(g)} names of one image")
                               for g in exact_duplicates(paths, names, digests)]


def make_index(args):
    """Index --root (and --val_root) in args, the checked flags of fer.cli.index.get_args, and write the
    parquet files into --out_dir together; prints what was indexed, the rows per class and the summary
    of what was skipped."""
    t0 = time.time()
    root, out, fmt = Path(args.root), Path(args.out_dir), args.format
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
        parts, card, digests = leakage.protocol(fmt, root, parts, args, stage, out)
        same_images([df] + ([val_all] if args.val_root else []), problems, stage, digests)
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
    print(leakage.summary_line(card, out))
