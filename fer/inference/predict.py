"""Prediction on photos, folders and videos (predict.py): the inputs in command-line order, the plan of
every output file, decoding and face detection in a thread that feeds the model batches through a
bounded queue, the rows of every face (tracked and smoothed in videos), and the outputs: the CSV, per-video
track summaries and timelines, annotated copies. Written only when the whole run succeeded, replacing
earlier files all at once."""
import errno
import os
import queue
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import pandas as pd
import torch

from fer.constants import FACE_MARGIN, POINT_COLUMNS
from fer.data.dataset import FERDataError, load_image
from fer.data.faces import Cropper, check_template, make_detector
from fer.data.transforms import build_transforms
from fer.evaluation.metrics import clip_va, softmax
from fer.inference.track import assign_tracks, plot_timeline, smooth, track_summary
from fer.model.checkpoint import model_from_checkpoint, temperature_mismatch, temperature_of
from fer.model.forward import infer
from fer.trust import (
    FERError,
    check_device,
    check_input,
    check_not_inputs,
    check_replaceable,
    progress,
    staged_outputs,
)

# Read by OpenCV when it first logs and by FFmpeg when it first opens a file, so in time here.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # our messages name the file; not OpenCV's warnings
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # nor FFmpeg's ("moov atom not found")

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
BOX = ["face_x", "face_y", "face_w", "face_h"]
DECIMALS = 4  # of probabilities and valence/arousal in the CSVs: finer digits are noise (float32, TTA, devices)
ONE_LINE_EACH = 20  # up to this many images get a line each on the terminal; more get a summary table
FIRST_COLUMNS = ["filename", "frame", "time_s", "face_index", "track_id", *BOX, "face_score", "rotation",
                 *POINT_COLUMNS, "expression", "confidence", "probabilities"]


# --- inputs -------------------------------------------------------------------------------------
@dataclass
class Input:
    kind: str  # "image" or "video"
    path: Path
    name: str  # the filename column
    rel: Path  # where its annotated copy goes under --annotate


def shown(path):
    """A printable path, also for names that are not valid UTF-8."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def why_not_readable(path):
    """None for a regular file we may open; else why it is skipped. Opening anything else can block
    forever (a FIFO, a device) or fail in ways that say nothing."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename it)"
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        if e.errno == errno.ENOENT:
            return "broken symbolic link" if os.path.islink(path) else "file not found"
        return e.strerror
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special")
    return f"not a regular file ({kind})"


def kind_of(path):
    suffix = path.suffix.lower()
    return "video" if suffix in VIDEO_EXTS else "image" if suffix in IMAGE_EXTS else None


def own_outputs(out, annotate):
    """is_output(path, is_dir): whether a file or folder met in a folder search is where this run writes
    (the --annotate folder, the timelines beside --out), so that a rerun does not read the last run's
    outputs as inputs (and then refuse to overwrite them)."""
    annotate = annotate.resolve() if annotate else None
    out_dir = out.resolve().parent if out else None
    timeline = re.compile(re.escape(out.stem) + r"_.+_timeline\.png", re.IGNORECASE) if out else None

    def is_output(path, is_dir):
        if is_dir:
            return annotate is not None and path.resolve() == annotate
        return timeline is not None and bool(timeline.fullmatch(path.name)) and path.parent.resolve() == out_dir
    return is_output


def collect_inputs(paths, is_output=lambda path, is_dir: False):
    """The inputs in command-line order (folders: their images and videos, sorted, without following
    links to folders, nor this run's outputs), and the skipped ones with the reason. The same file
    twice is read once."""
    inputs, skipped, seen = [], [], set()

    def add(path, rel, kind):
        why = why_not_readable(path)
        if why:
            skipped.append(f"{shown(path)}: {why}")
        elif path.resolve() in seen:
            skipped.append(f"{shown(path)}: given twice (read once)")
        else:
            seen.add(path.resolve())
            inputs.append(Input(kind, path, str(path), rel))

    for p in map(Path, paths):
        if p.is_dir():
            top = p.resolve().name or "root"
            for folder, dirs, files in os.walk(p, onerror=lambda e: skipped.append(f"{shown(e.filename)}: "
                                                                                   f"{e.strerror}")):
                dirs[:] = sorted(d for d in dirs if not is_output(Path(folder) / d, True))
                for f in sorted(files):
                    f = Path(folder) / f
                    if kind_of(f) and not is_output(f, False):
                        add(f, Path(top) / f.relative_to(p), kind_of(f))
        else:
            add(p, Path(p.name), kind_of(p) or "image")
    return inputs, skipped


def plan_outputs(inputs, out, annotate):
    """Every file the run will write: {input name: {"annotated", "tracks", "timeline"}}.

    Names that would collide (a/face.jpg and b/face.jpg, two clip.mp4, names differing in case only)
    get _2, _3, ...; an output that is one of the inputs is refused.
    """
    taken = {str(out.resolve()).lower()}
    sources = {inp.path.resolve() for inp in inputs}

    def free(*targets):
        return not any(str(t.resolve()).lower() in taken for t in targets)

    plan = {}
    for inp in inputs:
        stem = inp.rel.stem if inp.kind == "image" else inp.path.stem
        for k in range(1, 10**6):
            label = stem if k == 1 else f"{stem}_{k}"
            files = {}
            if annotate:
                files["annotated"] = annotate / (inp.rel.with_name(label + inp.rel.suffix) if inp.kind == "image"
                                                 else inp.rel.with_name(f"{label}_annotated.mp4"))
            if inp.kind == "video":
                files["tracks"] = out.with_name(f"{out.stem}_{label}_tracks.csv")
                files["timeline"] = out.with_name(f"{out.stem}_{label}_timeline.png")
            if free(*files.values()):
                break
        for kind, t in files.items():
            flag, where = ("--annotate", annotate) if kind == "annotated" else ("--out", out)
            check_replaceable(t, flag)
            taken.add(str(t.resolve()).lower())
            if t.resolve() in sources:
                raise FERError(f"{flag} {where}: would overwrite the input {shown(t)}")
        plan[inp.name] = files
    if out.resolve() in sources:
        raise FERError(f"--out {out}: is one of the inputs")
    check_replaceable(out, "--out")
    return plan


# --- decoding and detection (the producer thread) -----------------------------------------------
def open_video(path):
    # FFmpeg explicitly: the image-sequence backend would read "%d" in a file name as a pattern.
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        raise FERDataError(f"{path}: cannot be opened as a video (damaged, truncated or not a video)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    return cap, fps if fps and 0 < fps < 1000 else 25.0


def video_frames(path, step, notes=None):
    """(frame index, time in s, RGB frame) of every step-th decodable frame; a video that stops
    early is noted with the frames it read."""
    cap, fps = open_video(path)
    expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i % step == 0:
                yield i, i / fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise FERDataError(f"{path}: no frame could be decoded")
    if notes is not None and i < expected - 1:
        notes.append(f"{shown(path)}: decoding stopped after {i} of {expected} frames (truncated or damaged); "
                     f"the rows of those {i} frames are kept")


def expected_units(inputs, step):
    """How many images and analysed frames the inputs hold (the progress bar's total), from each video's
    own frame count; None when a video does not state one (the bar then counts without an ETA)."""
    total = 0
    for inp in inputs:
        if inp.kind == "image":
            total += 1
            continue
        try:
            cap, _ = open_video(inp.path)
        except FERDataError:
            continue  # skipped later, with its reason
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        cap.release()
        if n <= 0:
            return None
        total += -(-n // step)
    return total


def units(inp, args, cropper, transform, notes):
    """(rows, crops) for each image or analysed frame: one row per face, or one row without a
    prediction when no face was found."""
    frames = [(None, None, load_image(inp.path))] if inp.kind == "image" else \
        video_frames(inp.path, args.frame_step, notes)
    for frame, t, rgb in frames:
        where = {"filename": inp.name} if frame is None else {"filename": inp.name, "frame": frame,
                                                              "time_s": round(t, 3)}
        if cropper is None:
            yield [dict(where)], [transform(image=rgb)["image"]]
            continue
        faces = cropper(rgb, args.largest_face)
        if not faces:
            yield [dict(where)], []
            continue
        yield ([dict(where, face_index=k, **row) for k, (row, _) in enumerate(faces)],
               [transform(image=crop)["image"] for _, crop in faces])


class WorkerFailed:
    def __init__(self, inp, error):
        self.inp, self.error = inp, error


DONE = object()


def produce(inputs, args, cropper, transform, out_q, stop, skipped, notes):
    """Decode and detect in order, feeding out_q; bad inputs are skipped, anything unexpected is
    handed to the consumer, which ends the run with one line."""

    def put(item):
        while not stop.is_set():
            try:
                out_q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    inp = None
    try:
        for inp in inputs:
            try:
                for unit in units(inp, args, cropper, transform, notes):
                    if not put(unit):
                        return
            except FERDataError as e:
                skipped.append(str(e))
            except cv2.error as e:  # a damaged file the decoder gave up on
                skipped.append(f"{shown(inp.path)}: cannot be decoded ({str(e).strip().splitlines()[-1]})")
        put(DONE)
    except BaseException as e:  # noqa: BLE001 -- reported by the consumer, in one line
        put(WorkerFailed(inp, e))


def probability_kind(meta, args):
    """(temperature the logits are divided by, the `probabilities` column): the checkpoint's temperature
    unless --raw or it was fitted on the other kind of output (with / without --tta), else 1 and "raw"."""
    t = temperature_of(meta, args.checkpoint)
    if t is None or args.raw:
        return 1.0, "raw"
    mismatch = temperature_mismatch(meta, args.tta)
    if mismatch:
        return 1.0, f"raw ({mismatch})"
    return t, f"calibrated (T={t:.4f})"


def predict(inputs, args, model, meta, device, cropper=None):
    """Rows (dicts, in input order) for every face, and (skipped, notes). Decoding and detection run
    in a thread; the model runs here on full batches."""
    class_names = meta["class_names"]
    va_trained = meta.get("heads_trained", {}).get("valence_arousal", True)  # untrained: columns left empty
    temperature, which = probability_kind(meta, args)
    nan = float("nan")
    transform = build_transforms(False, meta["img_size"])
    out_q, stop, skipped, notes = queue.Queue(maxsize=args.prefetch), threading.Event(), [], []
    worker = threading.Thread(target=produce, args=(inputs, args, cropper, transform, out_q, stop, skipped, notes),
                              name="decode-detect", daemon=True)
    rows, pending = [], []

    def run_batch(batch):
        try:
            logits, va = infer(model, torch.stack([c for _, c in batch]), device, tta=args.tta)
        except (RuntimeError, MemoryError) as e:  # e.g. out of GPU memory
            raise FERError(f"the model failed on a batch of {len(batch)} faces ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); try a smaller "
                           f"--batch_size") from None
        probs, va = softmax(logits.cpu().numpy() / temperature), clip_va(va.cpu().numpy())
        for (row, _), p, (v, a) in zip(batch, probs, va):
            k = int(p.argmax())
            row.update(expression=class_names[k], confidence=float(p[k]), probabilities=which,
                       **{f"prob_{n}": float(x) for n, x in zip(class_names, p)},
                       valence=float(v) if va_trained else nan, arousal=float(a) if va_trained else nan,
                       **({"tta": args.tta} if args.tta else {}))  # test-time augmentation: recorded per row

    total = expected_units(inputs, args.frame_step)
    bar = progress(total=total, desc="predict", disable=total == 0,  # 0: nothing readable, said below
                   unit="frame" if any(inp.kind == "video" for inp in inputs) else "image")  # an image: one frame
    worker.start()
    try:
        while True:
            try:
                item = out_q.get(timeout=1)
            except queue.Empty:
                if worker.is_alive():
                    continue
                raise FERError("the decode/detect thread ended without a word") from None
            if item is DONE:
                break
            if isinstance(item, WorkerFailed):
                where = f" reading {shown(item.inp.path)}" if item.inp else ""
                raise FERError(f"the decode/detect thread failed{where}: {type(item.error).__name__}: "
                               f"{str(item.error).strip().splitlines()[-1] if str(item.error).strip() else ''}")
            unit_rows, crops = item
            bar.update()
            rows.extend(unit_rows)
            pending.extend(zip(unit_rows, crops))
            while len(pending) >= args.batch_size:
                run_batch(pending[:args.batch_size])
                del pending[:args.batch_size]
        if pending:
            run_batch(pending)
        if bar.total is not None and bar.n != bar.total:  # a video's header miscounted its frames: end on what was read
            bar.total = bar.n  # said by close()
    finally:
        bar.close()
        stop.set()
        worker.join(timeout=10)
    return rows, skipped, notes


# --- outputs ------------------------------------------------------------------------------------
def to_frame(rows, class_names, detect=False):
    df = pd.DataFrame(rows)
    for c in (*BOX, "face_score", "rotation", *POINT_COLUMNS) if detect else ():  # same columns for every detector
        if c not in df.columns:
            df[c] = float("nan")
    for c in ("expression", "confidence", *[f"prob_{n}" for n in class_names], "valence", "arousal"):
        if c not in df.columns:
            df[c] = None if c == "expression" else float("nan")
    for c in ("frame", "face_index", *BOX):
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    return df


def ordered(df):
    return df[[c for c in FIRST_COLUMNS if c in df.columns] + [c for c in df.columns if c not in FIRST_COLUMNS]]


def track_color(track):
    palette = [(0, 200, 0), (0, 140, 255), (255, 80, 80), (200, 0, 200), (0, 220, 220), (255, 200, 0),
               (120, 120, 255), (80, 255, 160)]
    return palette[int(track) % len(palette)]


def draw(bgr, faces):
    """Draw each face's box, id (track id in videos, face index in images), expression and
    valence/arousal (the smoothed values when present) on bgr, in place."""
    scale = max(0.35, min(bgr.shape[:2]) / 600)
    thick = max(1, int(round(2 * scale)))
    for _, r in faces.iterrows():
        if pd.isna(r.get("expression")):
            continue
        pre = "smooth_" if pd.notna(r.get("smooth_expression")) else ""
        box = tuple(int(r[c]) for c in BOX) if "face_x" in r and pd.notna(r["face_x"]) else None
        x, y, w, h = box or (0, 0, bgr.shape[1], bgr.shape[0])
        ident = r.get("track_id") if pd.notna(r.get("track_id")) else r.get("face_index")
        color = track_color(ident if pd.notna(ident) else 0)
        if box:
            cv2.rectangle(bgr, (x, y), (x + w, y + h), color, thick)
        label = f"#{int(ident)} " if box and pd.notna(ident) else ""
        lines = [f"{label}{r[pre + 'expression']} {r[pre + 'confidence']:.2f}"]
        if pd.notna(r[pre + "valence"]):  # empty when the checkpoint's valence/arousal head never trained
            lines.append(f"V {r[pre + 'valence']:+.2f} A {r[pre + 'arousal']:+.2f}")
        ty = y + 4 if box is None else max(0, y - int(34 * scale * len(lines)))
        for k, text in enumerate(lines):
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            top = ty + k * (th + base + 4)
            cv2.rectangle(bgr, (x, top), (x + tw + 4, top + th + base + 4), (0, 0, 0), -1)
            cv2.putText(bgr, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    return bgr


def write_failed(target, what):
    """An OSError for a writer that reports failure without raising (cv2): staged_outputs turns it
    into 'no space left on device writing <target>' when the disk is full."""
    return OSError(errno.EIO, f"{what} could not be written", str(target))


def annotate_image(inp, faces, target, stage):
    bgr = cv2.imread(str(inp.path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FERError(f"{shown(inp.path)}: could not be read again for --annotate")
    # Encoded in memory, written by Python: a full disk is then one OSError, not libpng's own line on stderr.
    ok, data = cv2.imencode(target.suffix, draw(bgr, faces))
    if not ok:
        raise write_failed(target, "the annotated image")
    Path(stage(target)).write_bytes(data.tobytes())


def video_size(width, height, largest=7680):
    """The annotated video's frame size: the mp4v encoder cannot open 8192-px-wide (8K 360-degree) or
    1-px frames, so larger frames are scaled down to fit and 1-px ones up."""
    s = min(1.0, largest / max(width, height))
    return max(2, round(width * s)), max(2, round(height * s))


def annotate_video(inp, rows, frame_step, target, stage):
    """Decode the video again and write the analysed frames with their faces drawn."""
    cap, fps = open_video(inp.path)
    cap.release()
    by_frame = dict(tuple(rows.groupby("frame", sort=False)))
    writer, written = None, 0
    tmp = stage(target)
    try:
        for frame, _, rgb in video_frames(inp.path, frame_step):
            if frame not in by_frame:
                break
            if writer is None:
                size = video_size(rgb.shape[1], rgb.shape[0])
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps / frame_step, size)
                if not writer.isOpened():
                    raise write_failed(target, "the annotated video")
            bgr = draw(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), by_frame[frame])
            writer.write(bgr if bgr.shape[1::-1] == size else cv2.resize(bgr, size, interpolation=cv2.INTER_AREA))
            written += 1
    finally:
        if writer is not None:
            writer.release()
    # cv2 does not report failed writes: read the frame count back.
    check = cv2.VideoCapture(str(tmp), cv2.CAP_FFMPEG)
    ok = check.isOpened() and int(check.get(cv2.CAP_PROP_FRAME_COUNT)) == written
    check.release()
    if not ok:
        raise write_failed(target, "the annotated video")


def write_outputs(df, inputs, plan, args, class_names, stage):
    """Per-video summaries and timelines, annotated copies, and the CSV, all staged. Returns the
    lines of the report."""
    report = []
    by_name = dict(tuple(df.groupby("filename", sort=False)))
    for inp in inputs:
        rows, files = by_name.get(inp.name), plan[inp.name]
        if rows is None:  # skipped
            continue
        if inp.kind == "video":
            summary = track_summary(rows, class_names)
            summary.round(DECIMALS).to_csv(stage(files["tracks"]), index=False)
            plot_timeline(rows, summary, class_names, stage(files["timeline"]), inp.path.name)
            n_frames = rows["frame"].nunique()
            found = rows.loc[rows["expression"].notna(), "frame"].nunique()
            report.append(f"{shown(inp.path)}: {len(summary)} track(s), faces in {found} of {n_frames} analysed "
                          f"frames -> {shown(files['tracks'])}, {shown(files['timeline'])}"
                          + ("" if found else " (no face: rows kept, predictions empty)"))
        if "annotated" in files:
            if inp.kind == "image":
                annotate_image(inp, rows, files["annotated"], stage)
            else:
                annotate_video(inp, rows, args.frame_step, files["annotated"], stage)
    ordered(df).round(DECIMALS).to_csv(stage(Path(args.out)), index=False)
    return report


def label_of(row):
    """"Happy 0.93 (V +0.41 A +0.12)" for one predicted face; without V/A when that head never trained."""
    va = f" (V {row['valence']:+.2f} A {row['arousal']:+.2f})" if pd.notna(row["valence"]) else ""
    return f"{row['expression']} {row['confidence']:.2f}{va}"


def image_lines(df):
    """The terminal's view of the images' predictions: a line per image (each face's label), or, for
    many images, a table of the predicted expressions (every row is in the CSV)."""
    images = df[df["frame"].isna()] if "frame" in df.columns else df
    if images.empty:
        return []
    groups = list(images.groupby("filename", sort=False))
    if len(groups) <= ONE_LINE_EACH:
        lines = []
        for name, rows in groups:
            faces = rows[rows["expression"].notna()]
            if faces.empty:
                lines.append(f"{shown(name)}: no face found")
            elif "face_index" in rows.columns:
                labels = "; ".join(label_of(r) for _, r in faces.iterrows())
                lines.append(f"{shown(name)}: {len(faces)} face(s): {labels}")
            else:
                lines.append(f"{shown(name)}: {label_of(faces.iloc[0])}")
        return lines
    faces = images["expression"].dropna()
    counts = faces.value_counts()
    table = [f"{len(groups)} images, {len(faces)} faces predicted:", f"  {'expression':<12}{'faces':>7}{'share':>8}"]
    table += [f"  {name:<12}{n:>7}{n / max(len(faces), 1):>8.0%}" for name, n in counts.items()]
    if pd.notna(images["valence"]).any():
        table.append(f"  mean valence {images['valence'].mean():+.2f}, arousal {images['arousal'].mean():+.2f}")
    return table


# --- the command --------------------------------------------------------------------------------
def run_prediction(args):
    """predict.py, once fer.cli.predict.get_args has checked the flags, --out and --annotate: the inputs
    and the plan of the outputs, checked before the model is loaded; then the prediction, the tracks and
    every output, written together."""
    out = Path(args.out)
    annotate = Path(args.annotate) if args.annotate else None
    inputs, skipped = collect_inputs(args.paths, own_outputs(out, annotate))
    plan = plan_outputs(inputs, out, annotate)
    check_not_inputs([("--out", out)] + [("--annotate" if kind == "annotated" else "--out", path)
                                         for files in plan.values() for kind, path in files.items()],
                     [("--checkpoint", args.checkpoint)])
    check_input(args.checkpoint, "--checkpoint")
    device = check_device(args.device)
    if not inputs:
        if not skipped:  # only folders, holding no image or video
            raise FERError(f"nothing to predict: no image or video ({', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))}) "
                           f"in {', '.join(map(shown, args.paths))}")
        raise FERError(f"nothing to predict: {'; '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}")

    model, meta = model_from_checkpoint(args.checkpoint, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    class_names = list(meta["class_names"])
    n_videos = sum(inp.kind == "video" for inp in inputs)
    print(f"predicting {len(inputs)} file(s) ({len(inputs) - n_videos} image(s), {n_videos} video(s)) on {device}",
          flush=True)
    print(f"probabilities: {probability_kind(meta, args)[1]}"
          + (" (--raw: the checkpoint's temperature is not applied)" if args.raw and temperature_of(meta) else "")
          + (" (the checkpoint records no temperature: eval_resnet50.py --calibrate fits one)"
             if temperature_of(meta) is None else ""), flush=True)
    if not meta["heads_trained"]["valence_arousal"]:
        print("note: this checkpoint's valence/arousal head never trained (its training data had no valence/arousal "
              "labels): the valence and arousal columns are left empty")
    cropper = None
    if args.detect_faces:
        template = check_template(meta.get("crop_template"), f"{args.checkpoint}: field crop_template")
        cropper = Cropper(make_detector(args.detector, args.min_face, args.face_threshold), template,
                          args.align, meta["img_size"])
        if cropper.fallback:
            print(f"note: --align template: {cropper.fallback}; each face is cropped to its box with a "
                  f"{FACE_MARGIN:.0%} margin instead", flush=True)
    rows, unreadable, notes = predict(inputs, args, model, meta, device, cropper)
    skipped += unreadable
    if skipped:
        print(f"skipped {len(skipped)} unreadable input(s):", *skipped, sep="\n  ")
    if not rows:
        raise FERError("nothing could be predicted: every input was skipped (listed above)")

    df = assign_tracks(to_frame(rows, class_names, args.detect_faces), args.track_iou, args.track_gap)
    if args.smooth is not None and "track_id" in df.columns:  # tracks exist in videos only
        df = smooth(df, args.smooth, class_names)
    with staged_outputs() as stage:
        report = write_outputs(df, inputs, plan, args, class_names, stage)

    n_faces = int(df["expression"].notna().sum())
    for line in image_lines(df):
        print(line)
    print(f"wrote {len(df)} rows ({n_faces} predicted) to {shown(args.out)}", *report, sep="\n")
    if annotate:
        print(f"annotated copies in {shown(annotate)}")
    images = df["frame"].isna() if "frame" in df.columns else True
    no_face = [shown(p) for p in df.loc[df["expression"].isna() & images, "filename"]]
    if no_face:
        print(f"no face found in {len(no_face)} image(s): {', '.join(no_face[:10])}"
              f"{' ...' if len(no_face) > 10 else ''} (rows kept, predictions empty)")
    for note in notes:
        print("note:", note)
    return 0
