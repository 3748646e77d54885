"""bench.py's sections: where the time goes in indexing, augmentation, data loading, training steps,
end to end, evaluation, video, the report page and the comparison of runs. Each figure is the median of
--reps timed repetitions after a warm-up; CUDA timings synchronise."""
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import resource  # POSIX: peak memory
except ImportError:  # Windows
    resource = None

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from fer.bench import faces
from fer.cli.compare import get_args as compare_args
from fer.cli.predict import parse_args as parse_predict_args
from fer.constants import CLASS_NAMES
from fer.data.dataset import FERDataset, load_image
from fer.data.demo import make_dataset
from fer.data.faces import Cropper, make_detector
from fer.data.index import build_index, stratified_split, write_parquet
from fer.data.leakage import hash_images
from fer.data.transforms import FastISONoise, build_transforms, seed_augmentation
from fer.evaluation.metrics import bootstrap_indices, bootstrap_metrics, evaluate
from fer.evaluation.report import render
from fer.inference.predict import collect_inputs, predict, video_frames
from fer.model.backbones import check_img_size
from fer.model.forward import infer, predict_batches
from fer.model.net import FERNet
from fer.training.compare import compare
from fer.training.distributed import TrainSampler, balanced_weights
from fer.training.loop import class_weights, make_criterion, train_one_epoch, train_step
from fer.training.record import cpu_name
from fer.training.sam import SAM
from fer.trust import FERError, check_device, write_text


def resolve_defaults(args):
    """The defaults that depend on the device (fer.cli.bench leaves them None: it cannot look at CUDA)."""
    args.device = str(check_device(args.device))
    cuda = args.device.startswith("cuda")
    args.img_size = args.img_size or (224 if cuda else 112)
    if check_img_size(args.arch, args.img_size):
        raise FERError(f"--img_size {args.img_size}: {check_img_size(args.arch, args.img_size)}")
    args.batch_size = args.batch_size or (256 if cuda else 16)
    args.workers = args.workers or list(range(0, min(os.cpu_count() or 1, 8) + 1))
    args.steps = args.steps or (2 if args.quick else 10 if cuda else 3)
    return args


def timed(fn, reps, device, warmup=1):
    """Median seconds of fn() over reps runs after warm-up runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_in_turns(fns, reps):
    """Median seconds of each of fns (CPU), run in turns so that a noisy machine slows them alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_rss_mib():
    if resource is None:
        return float("nan")
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / 1024 / (1024 if platform.system() == "Darwin" else 1)


# --- index --------------------------------------------------------------------------------------
def write_index_tree(root, n):
    """A tree in the real AffectNet format: a tiny jpg per image, string-typed scalars, 136 landmarks."""
    import io
    images, ann = root / "images", root / "annotations"
    images.mkdir(parents=True)
    ann.mkdir()
    jpg = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()

    def npy(arr):
        buf = io.BytesIO()
        np.save(buf, arr)
        return buf.getvalue()
    rng = np.random.default_rng(0)
    for i in range(n):
        (images / f"{i}.jpg").write_bytes(jpg)
        (ann / f"{i}_exp.npy").write_bytes(npy(np.array(str(i % 8))))
        (ann / f"{i}_val.npy").write_bytes(npy(np.array(f"{rng.uniform(-1, 1):.6f}")))
        (ann / f"{i}_aro.npy").write_bytes(npy(np.array(f"{rng.uniform(-1, 1):.6f}")))
        (ann / f"{i}_lnd.npy").write_bytes(npy(rng.uniform(0, 224, 136)))


def baseline_index(images_dir, ann_dir, limit=None, workers=8):
    """The straightforward indexer this project replaced: per image, four os.path.exists and np.load(mmap)."""
    def one(fname):
        stem = fname[:-4]
        paths = {k: os.path.join(ann_dir, f"{stem}_{k}.npy") for k in ("exp", "val", "aro", "lnd")}
        if not os.path.exists(paths["exp"]):
            return None
        row = {"filename": fname, "expression": int(np.load(paths["exp"], mmap_mode="r"))}
        for k in ("val", "aro"):
            row[k] = float(np.load(paths[k], mmap_mode="r")) if os.path.exists(paths[k]) else np.nan
        row["lnd"] = np.load(paths["lnd"], mmap_mode="r").tolist() if os.path.exists(paths["lnd"]) else None
        return row
    names = [f for f in os.listdir(images_dir) if f.endswith(".jpg")][:limit]
    with ThreadPoolExecutor(workers) as pool:
        return [r for r in pool.map(one, names) if r is not None]


def bench_index(args, rows, tmp):
    root = tmp / "index_tree"
    t = time.perf_counter()
    write_index_tree(root, args.index_images)
    print(f"(tree of {args.index_images} images + {4 * args.index_images} annotation files written in "
          f"{time.perf_counter() - t:.0f}s)", end=" ", file=sys.stderr, flush=True)
    n = args.index_images
    ours = timed(lambda: build_index(root / "images", root / "annotations", progress=False),
                 args.reps, "cpu")
    n_base = max(1, n // 4)  # its speed does not depend on the count, and it is 20-40x slower
    base = timed(lambda: baseline_index(root / "images", root / "annotations", n_base), args.reps, "cpu")
    rows.append(("index", "metadata_parallel.build_index", n / ours, "img/s", f"{n} images, warm page cache"))
    rows.append(("index", "baseline: threads + exists + np.load(mmap)", n_base / base, "img/s",
                 f"first {n_base} of the same images"))
    rows.append(("index", "speed-up over baseline", (n / ours) / (n_base / base), "x", ""))
    # The leakage guard decodes every image (the index itself reads annotations only): timed on photos at
    # AffectNet's 224 px, not on the tree's 8 x 8 placeholders, in the same worker pool the index uses.
    photos = write_guard_photos(tmp / "guard_photos", min(n, 2000 if not args.quick else 100))
    workers = os.cpu_count() or 1
    guard = timed(lambda: hash_images(photos, workers), args.reps, "cpu")
    per_image = guard / len(photos)
    rows.append(("index", "leakage guard hashing (SHA-1, 64- and 256-bit pHash)", len(photos) / guard, "img/s",
                 f"224px JPEG photos, {workers} worker processes"))
    rows.append(("index", f"leakage guard share of indexing {n} images", 100 * n * per_image / (ours + n * per_image),
                 "%", "hashing time scaled to the tree"))


def write_guard_photos(folder, n):
    """n different 224 px JPEG crops of scikit-image's astronaut photo (quality 90), as the guard meets faces."""
    from skimage import data

    folder.mkdir()
    photo, paths = data.astronaut(), []
    for k in range(n):
        y, x = (7 * k) % 200, (11 * k) % 200
        crop = cv2.resize(photo[y:y + 300, x:x + 300, ::-1], (224, 224), interpolation=cv2.INTER_AREA)
        paths.append(str(folder / f"{k}.jpg"))
        cv2.imwrite(paths[-1], crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


# --- data ---------------------------------------------------------------------------------------
def as_stock_isonoise(t, p=None):
    """albumentations' own ISONoise with the settings of our FastISONoise t."""
    return A.ISONoise(color_shift=t.color_shift, intensity=t.intensity, p=t.p if p is None else p)


def bench_transforms(args, rows, meta):
    ds = FERDataset(meta, train=True, size=args.img_size, verbose=False)
    n = min(len(ds), 128 if not args.quick else 16)
    images = [load_image(ds.path(i)) for i in range(n)]
    decode = timed(lambda: [load_image(ds.path(i)) for i in range(n)], args.reps, "cpu")
    ours = build_transforms(True, args.img_size)
    iso = next(t for t in ours.transforms if isinstance(t, FastISONoise))
    stock = build_transforms(True, args.img_size)
    stock.transforms = [as_stock_isonoise(t) if isinstance(t, FastISONoise) else t for t in stock.transforms]

    def augment(transform):  # the same random draws on every call and for both chains
        for k, img in enumerate(images):
            seed_augmentation(transform, k)
            transform(image=img)
    aug, aug_stock = timed_in_turns([lambda: augment(ours), lambda: augment(stock)], max(5, args.reps))
    src = images[0].shape[0]
    rows.append(("transforms", "decode (cv2.imread)", n / decode, "img/s", f"{src}px jpg, one process"))
    rows.append(("transforms", "train augmentation", n / aug, "img/s", f"to {args.img_size}px, one process"))
    rows.append(("transforms", "train augmentation, albumentations' ISONoise", n / aug_stock, "img/s",
                 f"ours is {aug_stock / aug:.2f}x faster"))
    big = [cv2.resize(img, (args.img_size, args.img_size)) for img in images]
    ref, fast = as_stock_isonoise(iso, p=1.0), FastISONoise(color_shift=iso.color_shift, intensity=iso.intensity, p=1.0)
    t_ref, t_fast = timed_in_turns([lambda: [ref(image=img) for img in big],
                                    lambda: [fast(image=img) for img in big]], max(5, args.reps))
    rows.append(("transforms", "ISONoise (albumentations), p=1", n / t_ref, "img/s", f"{args.img_size}px"))
    rows.append(("transforms", "FastISONoise (ours, same noise), p=1", n / t_fast, "img/s",
                 f"{t_ref / t_fast:.2f}x faster"))
    batches = max(2, (4 if args.quick else 12) * 32 // args.batch_size)
    for w in args.workers:
        loader = DataLoader(ds, args.batch_size, sampler=TrainSampler(len(ds), seed=0), num_workers=w,
                            persistent_workers=w > 0, prefetch_factor=4 if w else None)

        def drain():
            for k, _ in zip(range(batches), loader):
                pass
        t = timed(drain, args.reps, "cpu")
        rows.append(("transforms", f"DataLoader, {w} workers", batches * args.batch_size / t, "img/s",
                     f"decode + augment + collate, batch {args.batch_size}"))


# --- model --------------------------------------------------------------------------------------
def bench_train_step(args, rows):
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    variants = [("float32", False, None, False), ("channels_last", True, None, False)]
    variants += [("bf16 autocast + channels_last", True, torch.bfloat16, False)]
    if cuda:
        variants += [("fp16 autocast + GradScaler + channels_last", True, torch.float16, False)]
    if args.compile:
        variants += [("torch.compile + channels_last" + (" + bf16" if cuda else ""), True,
                      torch.bfloat16 if cuda else None, True)]
    for name, cl, dtype, compiled in variants:
        torch.manual_seed(0)
        model = FERNet(args.arch, img_size=args.img_size).to(device)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        run_model = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cuda", enabled=cuda and dtype == torch.float16)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 8, (args.batch_size,), device=device)
        v = torch.rand(args.batch_size, 2, device=device) * 2 - 1
        criterion = make_criterion(None, device)

        def step():
            for _ in range(args.steps):
                train_step(run_model, x, y, v, opt, scaler, criterion, dtype)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = timed(step, args.reps, device, warmup=2 if compiled else 1)
        mem = f"max allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda \
            else f"peak RSS so far {peak_rss_mib():.0f} MiB"
        rows.append(("train_step", name, args.steps * args.batch_size / t, "img/s",
                     f"{args.arch} {args.img_size}px batch {args.batch_size}; {mem}"))


def bench_recipes(args, rows):
    """The recipe options' cost per training step relative to the plain step (fer.training.loop.train_step,
    label smoothing 0.1), timed in turns on one model; TTA relative to a plain forward pass; the balanced
    sampler's draw of an AffectNet-sized epoch, per step."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else None
    torch.manual_seed(0)
    model = FERNet(args.arch, img_size=args.img_size).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, 8, (args.batch_size,), device=device)
    v = torch.rand(args.batch_size, 2, device=device) * 2 - 1
    plain, no_smoothing = make_criterion(None, device), make_criterion(None, device, 0.0)
    variants = [("plain step (label smoothing 0.1, the default)", plain, None),
                ("--label_smoothing 0", no_smoothing, None),
                ("--sam 0.05", plain, SAM(opt, 0.05)),
                ("--sam 0.5 --asam", plain, SAM(opt, 0.5, adaptive=True))]

    def steps(criterion, sam):
        def run():
            model.train()
            for _ in range(args.steps):
                train_step(model, x, y, v, opt, scaler, criterion, dtype, sam)
            sync(device)
        return run

    def forward(tta):
        def run():
            for _ in range(args.steps):
                infer(model, x, device, dtype, tta=tta)
            sync(device)
        return run

    times = timed_in_turns([steps(c, sam) for _, c, sam in variants] + [forward(None), forward("flip")], args.reps)
    base = times[0]
    note = f"{args.arch} {args.img_size}px batch {args.batch_size}, {args.steps} steps x {args.reps} turns"
    for (name, _, _), t in zip(variants, times):
        rows.append(("recipes", name, args.steps * args.batch_size / t, "img/s", f"x{t / base:.2f} the plain step; {note}"))
    rows.append(("recipes", "--tta flip (evaluation, prediction)", args.steps * args.batch_size / times[-1], "img/s",
                 f"x{times[-1] / times[-2]:.2f} a plain forward pass; {note}"))
    n = 3000 if args.quick else 290_000  # AffectNet's 8-class training set, about
    labels = torch.randint(0, 8, (n,)).numpy()
    sampler = TrainSampler(n, balanced_weights(labels, 8, "inverse"), seed=0)
    shuffled = TrainSampler(n, seed=0)
    t_balanced, t_shuffled = timed_in_turns([lambda: list(sampler), lambda: list(shuffled)], args.reps)
    per_step = (t_balanced - t_shuffled) / (n / args.batch_size)
    rows.append(("recipes", "--balanced_sampling (an epoch's draw)", n / t_balanced, "img/s",
                 f"{1000 * t_balanced:.0f} ms per epoch of {n} against {1000 * t_shuffled:.0f} ms shuffled: "
                 f"x{(base / args.steps + per_step) / (base / args.steps):.4f} the plain step"))


def bench_end_to_end(args, rows, train_meta, val_meta):
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = torch.bfloat16 if cuda else None
    ds = FERDataset(train_meta, train=True, size=args.img_size, verbose=False)
    workers = max(args.workers)
    loader = DataLoader(ds, args.batch_size, sampler=TrainSampler(len(ds), seed=0), num_workers=workers,
                        pin_memory=cuda, persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    model = FERNet(args.arch, img_size=args.img_size).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    criterion = make_criterion(class_weights(ds.labels), device)
    steps = min(args.steps * 2, len(loader))
    model.train()
    train_one_epoch(model, loader, opt, scaler, criterion, device, amp, 2, False)  # warm-up
    results = [train_one_epoch(model, loader, opt, scaler, criterion, device, amp, steps, False)
               for _ in range(args.reps)]
    speed = statistics.median(r["img_per_s"] for r in results)
    wait = statistics.median(r["data_wait"] for r in results)
    rows.append(("end_to_end", f"training with the loader ({workers} workers)", speed, "img/s",
                 f"{100 * wait:.0f}% of the time waiting for data; {args.arch} {args.img_size}px "
                 f"batch {args.batch_size}{', bf16' if amp else ''}"))

    val = FERDataset(val_meta, train=False, size=args.img_size, verbose=False)
    val_loader = DataLoader(val, args.batch_size, num_workers=workers, pin_memory=cuda)
    t = timed(lambda: predict_batches(model, val_loader, device, amp), args.reps, device)
    rows.append(("eval", "predict_batches over the validation loader", len(val) / t, "img/s",
                 f"{len(val)} images, {workers} workers"))


# --- video -------------------------------------------------------------------------------------
def write_face_clip(path, n, size=(640, 480)):
    """Two copies of scikit-image's astronaut face crossing a gradient background (what the Haar
    cascade finds in every frame)."""
    from skimage import data

    width, height = size
    side = width * 90 // 320
    face = cv2.resize(data.astronaut()[20:230, 120:300], (side, side * 210 // 180), interpolation=cv2.INTER_AREA)
    face = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
    background = np.tile(np.linspace(40, 200, width).astype(np.uint8)[None, :, None], (height, 1, 3))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    for i in range(n):
        frame = background.copy()
        x = i * (width - side) // max(n - 1, 1)
        frame[height // 12:height // 12 + face.shape[0], x:x + side] = face
        y = height - face.shape[0] - height // 24
        frame[y:y + face.shape[0], width - side - x:width - x] = face
        writer.write(frame)
    writer.release()


def bench_video(args, rows, tmp):
    """predict.py's pipeline (decode and detection in a thread, the model on batches of faces) on a
    640x480 clip with two faces, with each detector (mtcnn: aligned onto a crop template; haar: box
    crops), beside decode + detection alone: the pipeline is as fast as its slower half when the two
    overlap."""
    pass

    n = 8 if args.quick else 100
    clip = tmp / "two_faces.mp4"
    write_face_clip(clip, n)
    device = torch.device(args.device)
    model = FERNet(args.arch, img_size=args.img_size).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    meta = {"class_names": list(CLASS_NAMES), "img_size": args.img_size}
    inputs, _ = collect_inputs([clip])
    template = [[0.39, 0.46], [0.64, 0.46], [0.52, 0.56], [0.42, 0.72], [0.63, 0.72]]  # the demo model's
    threads = torch.get_num_threads()
    for name, detector_threads in (("mtcnn", 1), ("mtcnn", threads), ("haar", None)):
        if name == "mtcnn" and detector_threads > 1 and (args.quick or threads == 1):
            continue  # the thread comparison: one run is enough, and it needs several cores
        pargs = parse_predict_args([str(clip), "--detect_faces", "--detector", name, "--batch_size", str(args.batch_size)])
        cropper = Cropper(make_detector(name), np.array(template), "template", args.img_size)
        label = name
        if detector_threads:
            cropper.detector.threads = detector_threads
            label = f"{name} on {detector_threads} torch thread{'s' if detector_threads > 1 else ''}"
        faces = []

        def pipeline():
            faces[:] = [r for r in predict(inputs, pargs, model, meta, device, cropper)[0] if "face_x" in r]

        def decode_detect():
            for _, _, rgb in video_frames(clip, 1):
                cropper.detector(rgb)
        t = timed(pipeline, args.reps, device)
        crop = "box crops" if cropper.fallback else "aligned crops"
        rows.append(("video", f"predict.py on a 640x480 video with two faces, {label}", n / t, "frame/s",
                     f"{len(faces) / n:.1f} faces per frame; decode + {name} detection ({crop}) + {args.arch} "
                     f"{args.img_size}px batch {args.batch_size}"))
        t = timed(decode_detect, args.reps, "cpu")
        rows.append(("video", f"decode + face detection alone, {label}", n / t, "frame/s", f"{n} frames"))


# --- experiments ---------------------------------------------------------------------------------
def synthetic_runs(folder, n, epochs=20):
    """n run records with their history CSVs, differing in --lr and --seed, as training writes them."""
    rng = np.random.default_rng(0)
    for i in range(n):
        history = [{"epoch": e + 1, "val_acc": rng.random(), "val_loss": rng.random() + 1} for e in range(epochs)]
        (folder / f"r{i}").mkdir(parents=True)
        with open(folder / f"r{i}" / "m_history.csv", "w") as fh:
            fh.write("epoch,val_acc,val_loss\n" + "".join(f"{h['epoch']},{h['val_acc']},{h['val_loss']}\n" for h in history))
        record = {"args": {"lr": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2][i % 5], "seed": i // 5, "epochs": epochs,
                           "batch_size": 64, "save_path": f"r{i}/m.pth"},
                  "best": {"val_acc": history[-1]["val_acc"], "val_f1_macro": rng.random(),
                           "val_ccc_valence": rng.random(), "val_ccc_arousal": rng.random()},
                  "epochs": epochs, "wall_time_s": 3600 * rng.random(), "img_per_s": 1000 * rng.random(),
                  "started": f"run {i}", "outputs": {"history": "m_history.csv"},
                  "data": {"train": [{"fingerprint": "a" * 64}], "val": [{"fingerprint": "b" * 64}]}}
        (folder / f"r{i}" / "m_run.json").write_text(json.dumps(record))


def bench_experiments(args, rows, tmp):
    """The cost of the bootstrap intervals in evaluation and of compare_runs.py over many runs."""
    resamples, n = (100, 200) if args.quick else (1000, 800)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, n)
    logits = rng.normal(size=(n, 8)) + 2 * np.eye(8)[y]
    va_true = rng.uniform(-1, 1, (n, 2))
    va_pred = va_true + rng.normal(0, 0.3, (n, 2))

    def boot():
        idx = bootstrap_indices(n, resamples, 0)
        bootstrap_metrics(idx, logits, y, va_pred, va_true, list(CLASS_NAMES))
    t = timed(boot, args.reps, "cpu")
    rows.append(("experiments", f"bootstrap: every metric, {resamples} resamples x {n} images", t, "s",
                 "8 classes + valence/arousal; a paired comparison of two models costs twice this"))
    runs = 10 if args.quick else 50
    synthetic_runs(tmp / "runs", runs)

    def compare_runs(*extra):
        with contextlib.redirect_stdout(io.StringIO()):  # the table itself is not the benchmark's output
            compare(compare_args([str(tmp / "runs"), *extra]))
    t = timed(lambda: compare_runs("--out", str(tmp / "table.md")), args.reps, "cpu")
    rows.append(("experiments", f"compare_runs.py on {runs} runs (table)", 1000 * t, "ms",
                 "5 lr x 10 seeds: 5 rows of n=10" if runs == 50 else f"{runs} run records"))
    t = timed(lambda: compare_runs("--plot", str(tmp / "curves.png")), args.reps, "cpu")
    rows.append(("experiments", f"compare_runs.py on {runs} runs with --plot", t, "s", "20-epoch histories read and drawn"))


# --- report -------------------------------------------------------------------------------------
def bench_report(args, rows, tmp):
    """eval's HTML report for 800 images (make demo's validation split) with predictions that fill
    every cell of the confusion matrix: the most thumbnails a page of that size can hold."""
    pass

    n = 96 if args.quick else 800
    make_dataset(tmp / "report", n=n, size=64, seed=0, progress=False)
    df, _ = build_index(tmp / "report" / "images", tmp / "report" / "annotations", workers=1,
                                          progress=False)
    rng = np.random.default_rng(0)
    y = df["expression"].to_numpy()
    logits = rng.normal(size=(n, 8)) + 1.5 * np.eye(8)[y]
    va_true = df[["valence", "arousal"]].to_numpy(np.float64)
    va = va_true + rng.normal(0, 0.2, va_true.shape)
    metrics = evaluate(logits, va, y, va_true, CLASS_NAMES)
    metrics.update(classes_scored=list(CLASS_NAMES), checkpoint="bench.pth")
    predictions = {"logits": logits, "y_cls": y, "va": va, "y_reg": va_true}
    paths = [str(tmp / "report" / "images" / f) for f in df["filename"]]
    page = []
    t = timed(lambda: page.append(render(metrics, predictions, paths, list(df["filename"]))),
              args.reps, "cpu")
    rows.append(("report", "HTML report (FER_report.render)", n / t, "img/s",
                 f"{n} images in {t:.2f} s, page {len(page[-1].encode()) / 2 ** 20:.2f} MiB, "
                 f"{page[-1].count('data:image/jpeg')} thumbnails"))


def bench(args):
    args = resolve_defaults(args)
    rows = []
    only = set(args.only)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if {"transforms", "end_to_end", "eval"} & only:
            n = 96 if args.quick else max(512, 8 * args.batch_size)
            make_dataset(tmp / "demo", n=n, size=max(64, args.img_size), seed=0, progress=False)
            df, _ = build_index(tmp / "demo" / "images", tmp / "demo" / "annotations",
                                                  workers=1, progress=False)
            train, val = stratified_split(df, 0.25, 0)
            for name, part in (("train", train), ("val", val)):
                write_parquet(part, tmp / f"{name}.parquet")
        sections = [("index", lambda: bench_index(args, rows, tmp)),
                    ("transforms", lambda: bench_transforms(args, rows, tmp / "train.parquet")),
                    ("train_step", lambda: bench_train_step(args, rows)),
                    ("recipes", lambda: bench_recipes(args, rows)),
                    ("end_to_end", lambda: bench_end_to_end(args, rows, tmp / "train.parquet", tmp / "val.parquet")),
                    ("video", lambda: bench_video(args, rows, tmp)),
                    ("report", lambda: bench_report(args, rows, tmp)),
                    ("experiments", lambda: bench_experiments(args, rows, tmp)),
                    ("faces", lambda: faces.bench_faces(args, rows))]
        for name, fn in sections:
            if name in only or (name == "end_to_end" and "eval" in only):
                print(f"[{name}] ...", end=" ", file=sys.stderr, flush=True)
                t = time.time()
                fn()
                print(f"{time.time() - t:.0f}s", file=sys.stderr)
    rows = [r for r in rows if r[0] in only]

    env = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name(),
           "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
           "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    width = max(len(r[1]) for r in rows)
    print(f"{'section':<11} {'what':<{width}} {'value':>10} {'unit':<6} notes")
    for section, what, value, unit, notes in rows:
        print(f"{section:<11} {what:<{width}} {value:>10.1f} {unit:<6} {notes}")
    print(f"# {env['device']}, {env['cpus']} CPUs, torch {env['torch']}, {time.time() - t0:.0f}s")
    if args.json:
        table = [dict(zip(("section", "what", "value", "unit", "notes"), r)) for r in rows]
        write_text(json.dumps({"env": env, "rows": table}, indent=2), args.json)

