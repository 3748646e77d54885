"""Predict expression and valence/arousal for images, folders of images and videos.

    python predict.py --checkpoint FER_resnet50.pth photo.jpg faces/ clip.mp4 --out predictions.csv
    python predict.py --checkpoint FER_resnet50.pth group.jpg --detect_faces --annotate annotated/

Preprocessing is exactly eval_resnet50.py's, so the probabilities match its --save_predictions.
The model expects face crops (as in AffectNet); for wider pictures use --detect_faces, which crops
the largest face found by OpenCV's Haar cascade (shipped inside opencv-python-headless; nothing is
downloaded).
"""
import argparse
import sys
from pathlib import Path

import cv2
import pandas as pd
import torch
from tqdm import tqdm

from FER_metrics import clip_va, softmax
from FER_model import CheckpointError, infer, model_from_checkpoint
from FER_transform import FERDataError, build_transforms, load_image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
FACE_MARGIN = 0.2  # detector boxes are tight; AffectNet crops include some forehead and chin


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="images, folders (searched recursively for images) and videos")
    p.add_argument("--checkpoint", default="FER_resnet50.pth", help="checkpoint written by training")
    p.add_argument("--out", default="predictions.csv", help="CSV with one row per image or video frame")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--detect_faces", action="store_true", help="crop the largest face (Haar cascade) first")
    p.add_argument("--annotate", metavar="DIR", help="write copies with face box, expression and valence/arousal")
    p.add_argument("--frame_step", type=int, default=1, help="use every N-th video frame")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.frame_step < 1:
        p.error("--batch_size and --frame_step must be >= 1")
    return args


class FaceDetector:
    """Largest frontal face by OpenCV's Haar cascade, expanded by FACE_MARGIN."""

    def __init__(self):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise RuntimeError(f"cannot load the face detector from {path}")

    def __call__(self, rgb):
        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        side = min(gray.shape)
        faces = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                              minSize=(max(24, side // 10),) * 2)
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        m = int(round(FACE_MARGIN * max(w, h)))
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(rgb.shape[1], x + w + m), min(rgb.shape[0], y + h + m)
        return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def expand(paths):
    """(kind, path, name for the CSV, relative path for --annotate) of each input; folders give their images."""
    for p in map(Path, paths):
        if p.is_dir():
            top = p.resolve().name
            for f in sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTS and q.is_file()):
                yield "image", f, str(f), Path(top) / f.relative_to(p)
        else:
            yield "video" if p.suffix.lower() in VIDEO_EXTS else "image", p, str(p), Path(p.name)


def video_frames(path, step):
    """(frame index, time in s, RGB frame, fps) of every step-th frame."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FERDataError(f"{path}: cannot be opened as a video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if i % step == 0:
                yield i, i / fps, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), fps
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise FERDataError(f"{path}: no frames could be decoded")


def draw(rgb, row, box):
    """A BGR copy of the image with the face box and the prediction written on it."""
    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    x, y, w, h = box or (0, 0, img.shape[1], img.shape[0])
    scale = max(0.35, min(img.shape[:2]) / 600)
    thick = max(1, int(round(2 * scale)))
    if box:
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 200, 0), thick)
    lines = [f"{row['expression']} {row['confidence']:.2f}", f"V {row['valence']:+.2f} A {row['arousal']:+.2f}"]
    ty = y + 4 if box is None else max(0, y - int(34 * scale * len(lines)))
    for k, text in enumerate(lines):
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        top = ty + k * (th + base + 4)
        cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 4), (0, 0, 0), -1)
        cv2.putText(img, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)
    return img


class Predictor:
    """Batches preprocessed crops, runs the model, and fills in the rows (and annotations) in order."""

    def __init__(self, args, model, meta, device):
        self.args, self.model, self.device = args, model, device
        self.class_names = meta["class_names"]
        self.transform = build_transforms(False, meta["img_size"])
        self.detector = FaceDetector() if args.detect_faces else None
        self.pending, self.rows, self.no_face = [], [], []
        self.bar = tqdm(unit="img", desc="predict", disable=not sys.stderr.isatty())

    def add(self, row, rgb, sink=None):
        """Queue one image; sink(annotated BGR image) is called after its prediction."""
        box = None
        if self.detector is not None:
            box = self.detector(rgb)
            row.update(dict(zip(("face_x", "face_y", "face_w", "face_h"), box or (None,) * 4)))
            if box is None:
                self.no_face.append(row["filename"] + (f" frame {row['frame']}" if "frame" in row else ""))
                self.rows.append(row)
                if sink:
                    sink(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                return
        crop = rgb if box is None else rgb[box[1]:box[1] + box[3], box[0]:box[0] + box[2]]
        self.pending.append((row, self.transform(image=crop)["image"], rgb if sink else None, box, sink))
        if len(self.pending) >= self.args.batch_size:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        logits, va = infer(self.model, torch.stack([p[1] for p in self.pending]), self.device, tta=self.args.tta)
        probs, va = softmax(logits.cpu().numpy()), clip_va(va.cpu().numpy())
        for (row, _, rgb, box, sink), p, (v, a) in zip(self.pending, probs, va):
            k = int(p.argmax())
            row.update(expression=self.class_names[k], confidence=float(p[k]),
                       **{f"prob_{n}": float(x) for n, x in zip(self.class_names, p)}, valence=float(v), arousal=float(a))
            self.rows.append(row)
            if sink:
                sink(draw(rgb, row, box))
        self.bar.update(len(self.pending))
        self.pending = []


def run(args):
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = model_from_checkpoint(args.checkpoint, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    pred = Predictor(args, model, meta, device)
    skipped = []
    annotate = Path(args.annotate) if args.annotate else None
    for kind, path, name, rel in expand(args.paths):
        try:
            if not path.exists():
                raise FERDataError(f"{path}: file not found")
            if kind == "image":
                sink = None
                if annotate:
                    target = annotate / rel.with_suffix(".jpg")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    sink = lambda img, t=target: cv2.imwrite(str(t), img)  # noqa: E731
                pred.add({"filename": name}, load_image(path), sink)
                continue
            writer = None
            for frame, t, rgb, fps in video_frames(path, args.frame_step):
                sink = None
                if annotate:
                    if writer is None:
                        annotate.mkdir(parents=True, exist_ok=True)
                        writer = cv2.VideoWriter(str(annotate / f"{path.stem}_annotated.mp4"),
                                                 cv2.VideoWriter_fourcc(*"mp4v"), fps / args.frame_step,
                                                 (rgb.shape[1], rgb.shape[0]))
                    sink = writer.write
                pred.add({"filename": name, "frame": frame, "time_s": round(t, 3)}, rgb, sink)
            pred.flush()  # the video's last frames reach its writer before it closes
            if writer is not None:
                writer.release()
        except FERDataError as e:
            skipped.append(str(e))
    pred.flush()
    pred.bar.close()
    return pred, skipped


def main(argv=None):
    args = get_args(argv)
    try:
        pred, skipped = run(args)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    cols = ["filename", "frame", "time_s", "face_x", "face_y", "face_w", "face_h", "expression", "confidence"]
    df = pd.DataFrame(pred.rows)
    cols = [c for c in cols if c in df.columns] + [c for c in df.columns if c not in cols]
    df = df.reindex(columns=cols)
    if "frame" in df.columns:
        df["frame"] = df["frame"].astype("Int64")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    n_pred = int(df["expression"].notna().sum()) if "expression" in df.columns else 0
    print(f"wrote {len(df)} rows ({n_pred} predicted) to {args.out}"
          + (f"; annotated copies in {args.annotate}" if args.annotate else ""))
    if pred.no_face:
        print(f"no face found in {len(pred.no_face)}: {', '.join(pred.no_face[:10])}"
              f"{' ...' if len(pred.no_face) > 10 else ''} (rows kept, predictions empty)")
    if skipped:
        print(f"skipped {len(skipped)} unreadable input(s):", *skipped, sep="\n  ")
    if not len(df):
        sys.exit("error: nothing could be predicted")


if __name__ == "__main__":
    main()
