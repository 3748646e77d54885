"""predict.py as a hostile user would run it: bad flags and paths, special files, damaged videos, a
full disk, Ctrl-C, failing threads. Each case: the exit code, one line naming the file or flag, no
traceback, and earlier outputs byte-identical."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, interruptible, run_script
from test_video import face_video

import fer.inference.predict
import predict
from fer.cli import run_main
from fer.data.faces import MTCNNDetector

OLD = b"earlier results, not to be lost\n"


def assert_one_line_error(r, *words, code=1):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in lines[0] for w in words), (words, lines[0])


def stray_temporaries(folder):
    return [p for p in Path(folder).rglob(".*") if ".tmp" in p.name]


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(name, options) -> a fresh tmpfs folder (skips the test where mount is not allowed)."""
    mounted = []

    def mount(name, options):
        path = tmp_path / name
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return face_video(tmp_path_factory.mktemp("clip") / "clip.mp4", n=12)


@pytest.fixture
def old_out(tmp_path):
    out = tmp_path / "old.csv"
    out.write_bytes(OLD)
    return out


# --- 5. bad paths and flags: one line, before anything is loaded ----------------------------------
BAD_FLAGS = [("--batch_size", "0"), ("--batch_size", "many"), ("--batch_size", "100000"), ("--frame_step", "0"),
             ("--smooth", "0"), ("--smooth", "1.5"), ("--smooth", "nan"), ("--track_iou", "0"), ("--track_iou", "2"),
             ("--track_gap", "-1"), ("--track_gap", "1.5"), ("--prefetch", "0")]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_bad_numbers_one_line(flag, value, tmp_path, old_out):
    r = run_script("predict.py", tmp_path, "--checkpoint", tmp_path / "missing.pth", "--out", old_out, flag, value)
    assert_one_line_error(r, flag, code=2)
    assert old_out.read_bytes() == OLD


def test_bad_output_locations_fail_before_the_checkpoint_is_read(tmp_path, old_out, mount_tmpfs):
    """The checkpoint does not even exist: each message names the output flag, so it came first."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    read_only = mount_tmpfs("ro", "ro,size=64k")
    image = tmp_path / "x.jpg"
    image.write_bytes(OLD)
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "link.csv").symlink_to(old_out)  # renaming onto it would replace the link (as with /dev/stdout)
    (tmp_path / "ann" / "x.jpg").mkdir(parents=True)  # where the annotated copy would go
    cases = [(["--out", tmp_path / "a_folder"], ["--out", "is a folder"]),
             (["--out", tmp_path / "a_file" / "p.csv"], ["--out", "is a file, not a folder"]),
             (["--out", read_only / "p.csv"], ["--out", "not writable"]),
             (["--annotate", tmp_path / "a_file"], ["--annotate", "is a file"]),
             (["--annotate", read_only / "ann"], ["--annotate", "not writable"]),
             (["--out", image], ["--out", "is one of the inputs"]),
             (["--annotate", tmp_path], ["--annotate", "would overwrite the input", "x.jpg"]),
             (["--checkpoint", tmp_path / "a_folder"], ["--checkpoint", "not a regular file"]),
             (["--out", tmp_path / "fifo.csv"], ["--out", "fifo.csv", "exists and is a FIFO"]),
             (["--out", tmp_path / "link.csv"], ["--out", "link.csv", "is a symbolic link"]),
             (["--annotate", tmp_path / "ann"], ["--annotate", "x.jpg", "exists and is a folder"]),
             (["--device", "tpu"], ["--device tpu", "unknown device"])]
    for extra, words in cases:
        r = run_script("predict.py", image, "--checkpoint", tmp_path / "missing.pth", "--out", old_out, *extra,
                       timeout=60)
        assert_one_line_error(r, *words)
        assert old_out.read_bytes() == OLD and image.read_bytes() == OLD
    assert not stray_temporaries(tmp_path)


def test_cuda_where_there_is_none(trained, tmp_path, old_out):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_script("predict.py", tmp_path, "--checkpoint", trained, "--out", old_out, "--device", "cuda")
    assert_one_line_error(r, "--device cuda", "CUDA is not available")
    assert old_out.read_bytes() == OLD


# --- 4. only regular files: nothing hangs, each special file is named, the rest goes on ----------
def test_special_files_are_skipped_and_named(trained, demo, tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    good = inputs / "sub" / "good.jpg"
    good.write_bytes((demo["root"] / "images" / "0.jpg").read_bytes())
    os.mkfifo(inputs / "fifo.jpg")  # cv2.imread would block on it forever
    os.mkfifo(inputs / "sub" / "pipe.mp4")
    (inputs / "to_fifo.jpg").symlink_to(inputs / "fifo.jpg")
    (inputs / "loop_a.jpg").symlink_to(inputs / "loop_b.jpg")
    (inputs / "loop_b.jpg").symlink_to(inputs / "loop_a.jpg")
    (inputs / "dangling.png").symlink_to(inputs / "gone.png")
    (inputs / "device.jpg").symlink_to("/dev/zero")
    (inputs / "empty.jpg").write_bytes(b"")
    bad_name = os.fsencode(str(inputs)) + b"/caf\xe9.jpg"  # Latin-1, not UTF-8
    with open(bad_name, "wb") as fh:
        fh.write(good.read_bytes())
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--checkpoint", trained, inputs, "/dev/null", "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "skipped 10 unreadable input(s)" in r.stdout, r.stdout
    for name, why in [("fifo.jpg", "a FIFO"), ("pipe.mp4", "a FIFO"), ("to_fifo.jpg", "a FIFO"),
                      ("loop_a.jpg", "symbolic link loop"), ("loop_b.jpg", "symbolic link loop"),
                      ("dangling.png", "broken symbolic link"), ("device.jpg", "a device file"),
                      ("/dev/null", "a device file"), ("empty.jpg", "empty file"),
                      ("caf\\xe9.jpg", "not valid UTF-8")]:
        assert any(name in line and why in line for line in r.stdout.splitlines()), (name, r.stdout)
    assert pd.read_csv(out)["filename"].tolist() == [str(good)]


# --- 6 (and bad input). damaged videos: the frames that were read are kept -----------------------
def test_truncated_and_damaged_videos(trained, tmp_path, clip):
    full = face_video(tmp_path / "full.avi", n=20, fourcc="MJPG")  # frames stored one after another
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    no_index = tmp_path / "no_index.mp4"  # an mp4 cut short loses its index: nothing is readable
    no_index.write_bytes(clip.read_bytes()[:5000])
    garbage = tmp_path / "garbage.mkv"
    garbage.write_bytes(bytes(range(256)) * 12)
    out = tmp_path / "p.csv"
    r = run_script("predict.py", "--checkpoint", trained, cut, no_index, garbage, "--out", out, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr and not r.stderr.strip(), r.stderr
    df = pd.read_csv(out)
    read = df.loc[df["filename"] == str(cut), "frame"].tolist()
    assert 3 <= len(read) < 20 and read == list(range(len(read)))
    assert f"cut.avi: decoding stopped after {len(read)} of 20 frames" in r.stdout
    assert "no_index.mp4: cannot be opened as a video" in r.stdout and "garbage.mkv: cannot be opened" in r.stdout


def test_a_video_without_faces_keeps_its_rows(trained, tmp_path):
    empty = face_video(tmp_path / "wall.mp4", n=5, faces=0)
    r = run_script("predict.py", "--checkpoint", trained, empty, "--detect_faces", "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    assert "wall.mp4: 0 track(s), faces in 0 of 5 analysed frames" in r.stdout and "no face" in r.stdout
    assert pd.read_csv(tmp_path / "p.csv")["frame"].tolist() == list(range(5))


# --- 1. nothing that exists is destroyed by a failed run ------------------------------------------
def test_nothing_readable_leaves_outputs_alone(trained, tmp_path, old_out):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    r = run_script("predict.py", "--checkpoint", trained, bad, "--out", old_out)
    assert_one_line_error(r, "nothing could be predicted")
    assert "bad.jpg: cannot be decoded" in r.stdout and old_out.read_bytes() == OLD
    r = run_script("predict.py", "--checkpoint", trained, tmp_path / "nope.jpg", "--out", old_out)
    assert_one_line_error(r, "nothing to predict", "nope.jpg: file not found")  # before the model is loaded
    assert old_out.read_bytes() == OLD


def test_full_disk_one_line_and_old_outputs_intact(trained, clip, mount_tmpfs):
    disk = mount_tmpfs("small", "size=300k")
    out, tracks = disk / "p.csv", disk / "p_clip_tracks.csv"
    out.write_bytes(OLD)
    tracks.write_bytes(OLD)
    (disk / "ballast").write_bytes(b"\0" * 250_000)  # what is left is too small for the annotated video
    r = run_script("predict.py", "--checkpoint", trained, clip, "--detect_faces", "--out", out,
                   "--annotate", disk / "ann")
    assert_one_line_error(r, "no space left on device writing", str(disk))
    assert out.read_bytes() == OLD and tracks.read_bytes() == OLD
    assert not stray_temporaries(disk) and sorted(p.name for p in disk.iterdir() if p.is_file()) == \
        ["ballast", "p.csv", "p_clip_tracks.csv"]


def test_ctrl_c_mid_video(trained, tmp_path, old_out):
    long_clip = face_video(tmp_path / "long.mp4", n=300)
    proc = subprocess.Popen([sys.executable, str(ROOT / "predict.py"), "--checkpoint", str(trained), str(long_clip),
                             "--detect_faces", "--out", str(old_out), "--annotate", str(tmp_path / "ann")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    assert proc.stdout.readline().startswith("predicting")  # the model is loaded, the video is being read
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert old_out.read_bytes() == OLD and not stray_temporaries(tmp_path) and not (tmp_path / "ann").exists()


# --- 2. --annotate: no name collisions ----------------------------------------------------------
def test_same_names_give_separate_outputs(trained, demo, tmp_path):
    image = (demo["root"] / "images" / "0.jpg").read_bytes()
    for name in ("a/face.jpg", "b/face.jpg", "x.jpg", "b/FACE.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(image)
    import cv2
    cv2.imwrite(str(tmp_path / "x.png"), cv2.imread(str(tmp_path / "x.jpg")))
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    videos = [face_video(tmp_path / d / "clip.mp4", n=3, size=(32, 32), faces=0) for d in ("v1", "v2")]
    names = ["a/face.jpg", "b/face.jpg", "b/FACE.jpg", "x.jpg", "x.png"]
    r = run_script("predict.py", "--checkpoint", trained, *[tmp_path / n for n in names], *videos,
                   "--out", tmp_path / "p.csv", "--annotate", tmp_path / "ann")
    assert r.returncode == 0, r.stderr
    ann = tmp_path / "ann"
    assert sorted(p.name for p in ann.iterdir()) == ["FACE_3.jpg", "clip_2_annotated.mp4", "clip_annotated.mp4",
                                                     "face.jpg", "face_2.jpg", "x.jpg", "x.png"]
    assert (tmp_path / "p_clip_tracks.csv").exists() and (tmp_path / "p_clip_2_tracks.csv").exists()
    assert (tmp_path / "p_clip_timeline.png").exists() and (tmp_path / "p_clip_2_timeline.png").exists()


# --- 6. a failing thread or model: one line -----------------------------------------------------
def run_in_process(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(predict.main, [str(a) for a in argv])
    err = capsys.readouterr().err
    return e.value.code, err


def test_failing_detection_thread_one_line(trained, clip, old_out, monkeypatch, capsys):
    def boom(self, rgb):
        raise RuntimeError("detector exploded")
    monkeypatch.setattr(MTCNNDetector, "__call__", boom)
    code, err = run_in_process(["--checkpoint", trained, clip, "--detect_faces", "--out", old_out], capsys)
    assert code == 1 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "error: the decode/detect thread failed reading" in err and "clip.mp4: RuntimeError: detector exploded" in err
    assert old_out.read_bytes() == OLD


def test_failing_model_one_line(trained, clip, old_out, monkeypatch, capsys):
    pass

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")
    monkeypatch.setattr(fer.inference.predict, "infer", oom)
    code, err = run_in_process(["--checkpoint", trained, clip, "--out", old_out], capsys)
    assert code == 1 and err.strip().count("\n") == 0
    assert "the model failed on a batch" in err and "out of memory" in err and "--batch_size" in err
    assert old_out.read_bytes() == OLD
