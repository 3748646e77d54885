"""Every dataset format: its label map on rows written from the dataset's documentation, and the
whole path make_demo_data --format X -> metadata_parallel --format X -> parquet files."""
import math
import types

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import run_script

import make_demo_data
from fer.cli import run_main
from fer.cli.index import parse_class_map
from fer.data import demo
from fer.data import formats as mp
from fer.trust import staged_outputs

CANONICAL = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
COLUMNS = ["filename", "expression", "valence", "arousal", "landmarks", "source_label"]


def opts(tmp_path, **kw):
    """The options a reader gets from the command line."""
    base = dict(out_dir=tmp_path / "out", stage=None, progress=False, ferplus_label="majority", class_map=None,
                workers=1, verify_images=False)
    return types.SimpleNamespace(**{**base, **kw})


def tiny_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 120, np.uint8))


# --- label maps, from the datasets' documentation -------------------------------------------------
# RAF-DB readme: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral.
RAFDB_DOC = {1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happy", 5: "Sad", 6: "Anger", 7: "Neutral"}


def test_rafdb_label_map(tmp_path):
    lines = [f"train_{i:05d}.jpg {code}" for i, code in enumerate(RAFDB_DOC, 1)] + ["test_0001.jpg 7"]
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        tiny_image(tmp_path / "Image" / "aligned" / line.split()[0].replace(".jpg", "_aligned.jpg"))
    df, problems = mp.read_rafdb(tmp_path, opts(tmp_path))
    got = dict(zip(df["filename"], df["expression"]))
    for i, code in enumerate(RAFDB_DOC, 1):
        assert CANONICAL[got[f"train_{i:05d}_aligned.jpg"]] == RAFDB_DOC[code]
    assert CANONICAL[got["test_0001_aligned.jpg"]] == "Neutral"
    assert dict(zip(df["filename"], df["split"]))["test_0001_aligned.jpg"] == "val"
    assert dict(zip(df["filename"], df["source_label"]))["test_0001_aligned.jpg"] == "7"


def test_rafdb_original_images_and_bad_lines(tmp_path):
    (tmp_path / "EmoLabel").mkdir()
    label_file = tmp_path / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text("train_00001.jpg 4\ntrain_00002.jpg 8\nval_00003.jpg 1\ntest_0001.jpg 2\n")
    for name in ("train_00001.jpg", "train_00002.jpg", "val_00003.jpg"):  # test_0001.jpg missing
        tiny_image(tmp_path / "Image" / "original" / name)
    df, problems = mp.read_rafdb(tmp_path, opts(tmp_path))
    assert df["filename"].tolist() == ["train_00001.jpg"] and CANONICAL[df["expression"][0]] == "Happy"
    assert [why for _, why in problems["invalid_label"]] == ["label '8' is not 1-7"]
    assert "val_00003.jpg" in problems["bad_row"][0][1] and "test_0001.jpg" in problems["missing_image"][0][1]
    label_file.write_text("train_00001.jpg 4\ntrain_00002.jpg 4 extra\n")  # a broken file: one clear line
    with pytest.raises(mp.FERError, match="list_patition_label.txt.*line 2"):
        mp.read_rafdb(tmp_path, opts(tmp_path))


# FER2013 (Kaggle): 0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral.
FER2013_DOC = {0: "Anger", 1: "Disgust", 2: "Fear", 3: "Happy", 4: "Sad", 5: "Surprise", 6: "Neutral"}


def fer_pixels(value):
    return " ".join([str(value)] * 2304)


def test_fer2013_label_map_and_damaged_rows(tmp_path):
    rows = [(code, fer_pixels(10 * code), "Training") for code in FER2013_DOC]
    rows += [(0, fer_pixels(1), "PublicTest"), (6, fer_pixels(2), "PrivateTest"),
             (3, "1 2 3", "Training"),                      # bad pixel count
             (3, fer_pixels(300), "Training"),              # pixel out of range
             (3, fer_pixels(5).replace("5", "x", 1), "Training"),  # non-numeric pixel
             (7, fer_pixels(5), "Training"),                # no such emotion
             (2, fer_pixels(5), "Holdout")]                 # no such Usage
    pd.DataFrame(rows, columns=["emotion", "pixels", "Usage"]).to_csv(tmp_path / "fer2013.csv", index=False)
    o = opts(tmp_path)
    with staged_outputs() as o.stage:
        df, problems = mp.read_fer2013(tmp_path, o)
    assert len(df) == 9
    for code, expected in FER2013_DOC.items():
        row = df.iloc[code]
        assert row["filename"].startswith(f"fer{code:07d}_") and CANONICAL[row["expression"]] == expected
        assert row["source_label"] == str(code) and row["split"] == "train"
    assert df["split"].tolist()[7:] == ["val", "test"]
    img = cv2.imread(str(tmp_path / "out" / "images" / df["filename"].iloc[3]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (48, 48) and (img == 30).all()
    assert [w.split()[-1] for w, _ in problems["bad_row"]] == ["15", "11", "12", "13"]  # file lines, header = 1
    assert [w for w, _ in problems["invalid_label"]] == ["fer2013.csv line 14"]


FERPLUS_ROWS = [  # ten votes: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
    ("4,0,0,1,3,2,0,0,0,0", None, "no majority"),  # 4 of 10 (the 1 is an outlier): not more than half
    ("0,10,0,0,0,0,0,0,0,0", "Happy", ""),
    ("5,1,1,1,1,1,0,0,0,0", "Neutral", ""),  # the five single votes are outliers: 5 of 5
    ("0,0,2,0,0,0,0,8,0,0", "Contempt", ""),
    ("0,0,0,0,0,0,7,0,3,0", "Fear", ""),
    ("0,0,0,6,0,0,0,0,4,0", "Sad", ""),
    ("0,0,0,0,0,0,0,0,6,4", None, "unknown"),
    ("0,0,0,0,0,0,0,0,0,10", None, "not a face (NF)"),
    ("1,1,1,1,1,1,1,1,1,1", None, "no majority"),
]


@pytest.mark.parametrize("votes,expected,why", FERPLUS_ROWS)
def test_ferplus_majority_rule(votes, expected, why):
    labels, reasons = mp.ferplus_labels([list(map(int, votes.split(",")))])
    assert (CANONICAL[labels[0]] if labels[0] >= 0 else None) == expected
    assert reasons[0] == why


def test_ferplus_plurality_rule():
    votes = [[4, 3, 3, 0, 0, 0, 0, 0, 0, 0], [4, 4, 2, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 3, 0, 0, 0, 2, 2],
             [0, 0, 0, 0, 0, 0, 0, 0, 5, 1]]
    labels, reasons = mp.ferplus_labels(votes, "plurality")
    assert [CANONICAL[c] if c >= 0 else r for c, r in zip(labels, reasons)] == ["Neutral", "tie", "Anger", "unknown"]


def test_ferplus_reader_rows_and_names(tmp_path):
    n = len(FERPLUS_ROWS) + 1
    pd.DataFrame([(0, fer_pixels(i), "Training") for i in range(n)],
                 columns=["emotion", "pixels", "Usage"]).to_csv(tmp_path / "fer2013.csv", index=False)
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    lines = [f"Training,fer{i:07d}.png,{votes}" for i, (votes, _, _) in enumerate(FERPLUS_ROWS)]
    lines.append("Training,,0,0,0,0,0,0,0,0,0,10")  # as in the real file: removed images have no name
    (tmp_path / "fer2013new.csv").write_text(header + "\n".join(lines) + "\n")
    o = opts(tmp_path)
    with staged_outputs() as o.stage:
        df, problems = mp.read_ferplus(tmp_path, o)
    kept = [(f"fer{i:07d}", CANONICAL.index(e), v) for i, (v, e, _) in enumerate(FERPLUS_ROWS) if e]
    assert list(zip(df["filename"].str[:10], df["expression"], df["source_label"])) == kept  # + _<pixel hash>.png
    reasons = sorted(why for _, why in problems["dropped"])
    assert reasons == sorted([w for _, e, w in FERPLUS_ROWS if not e] + ["no image name (not a face in FERPlus)"])
    (tmp_path / "fer2013new.csv").write_text(header + "\n".join(lines[:3]) + "\n")
    with pytest.raises(mp.FERError, match="same images in the same order"):
        mp.read_ferplus(tmp_path, o)


def test_affectnet_csv_rows(tmp_path):
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,"
              "valence,arousal\n")
    lnd = ";".join(["12.5"] * 136)
    rows = [f"1/a.jpg,10,20,30,40,{lnd},6,-0.5,0.25",
            "1/b.jpg,0,0,30,30,,3,0.1,0.2",               # no landmarks: kept, landmarks empty
            "2/c.jpg,0,0,30,30,1;2;3,7,0.1,0.2",           # 3 landmark numbers: kept, landmarks empty
            f"2/d.jpg,0,0,30,30,{lnd},8,0.1,0.2",          # None
            f"2/e.jpg,0,0,30,30,{lnd},9,-2,-2",            # Uncertain
            f"2/f.jpg,0,0,30,30,{lnd},10,-2,-2",           # Non-Face
            f"2/g.jpg,0,0,30,30,{lnd},2,-2,-2",            # no valence/arousal: NaN
            f"2/h.jpg,x,0,30,30,{lnd},2,0,0",              # damaged box
            f"2/i.jpg,0,0,30,30,{lnd},2.5,0,0",            # not a class code
            f"9/missing.jpg,0,0,30,30,{lnd},1,0,0"]
    (tmp_path / "training.csv").write_text(header + "\n".join(rows) + "\n")
    for name in "abcdefghi":
        tiny_image(tmp_path / "Manually_Annotated_Images" / ("1" if name < "c" else "2") / f"{name}.jpg")
    df, problems = mp.read_affectnet_csv(tmp_path, opts(tmp_path))
    assert df["filename"].tolist() == ["1/a.jpg", "1/b.jpg", "2/c.jpg", "2/g.jpg"]
    a = df.iloc[0]
    assert CANONICAL[a["expression"]] == "Anger" and (a["valence"], a["arousal"]) == (-0.5, 0.25)
    assert [a[c] for c in mp.FACE_BOX] == [10, 20, 30, 40] and len(a["landmarks"]) == 136
    assert df["landmarks"][1] is None and df["landmarks"][2] is None
    assert np.isnan(df["valence"][3]) and np.isnan(df["arousal"][3])
    assert sorted(why for _, why in problems["dropped"]) == ["Non-Face", "None", "Uncertain"]
    assert len(problems["bad_row"]) == 1 and len(problems["invalid_label"]) == 1
    assert "9/missing.jpg" in problems["missing_image"][0][1]


@pytest.mark.parametrize("names,expected", [
    (["Happiness", "ANGRY", "surprised", "fearful", "disgusted", "Sadness", "neutral", "Contempt"],
     ["Happy", "Anger", "Surprise", "Fear", "Disgust", "Sad", "Neutral", "Contempt"]),
    (["happy", "sad"], ["Happy", "Sad"])])
def test_folder_synonyms(tmp_path, names, expected):
    for name in names:
        tiny_image(tmp_path / name / "x.png")
    df, _ = mp.read_folders(tmp_path, opts(tmp_path))
    got = {f.split("/")[0]: CANONICAL[e] for f, e in zip(df["filename"], df["expression"])}
    assert got == dict(zip(names, expected))
    assert "split" not in df.columns  # no split folders: a stratified split follows


def test_folder_names_that_do_not_match(tmp_path):
    for name in ("happy", "Joyful", "misc"):
        tiny_image(tmp_path / name / "x.png")
    with pytest.raises(mp.FERError, match="not recognised: Joyful, misc"):
        mp.read_folders(tmp_path, opts(tmp_path))


def test_numeric_folders_need_class_map(tmp_path):
    for name in "0123":
        tiny_image(tmp_path / name / "x.png")
    with pytest.raises(mp.FERError, match="class_map"):
        mp.read_folders(tmp_path, opts(tmp_path))
    class_map = parse_class_map("0=anger, 1=contempt,2=disgust,3=fear")
    df, _ = mp.read_folders(tmp_path, opts(tmp_path, class_map=class_map))
    assert [CANONICAL[e] for e in df["expression"]] == ["Anger", "Contempt", "Disgust", "Fear"]
    r = run_script("metadata_parallel.py", "--format", "folders", "--root", tmp_path, "--class_map", "0=angery",
                   "--out_dir", tmp_path / "o")
    assert r.returncode == 2 and "--class_map" in r.stderr and "Traceback" not in r.stderr


# --- every format end to end through the command lines ------------------------------------------
def make_and_index(tmp_path, fmt, n, *extra, size=None):
    data, out = tmp_path / "data", tmp_path / "out"
    r = run_script("make_demo_data.py", "--format", fmt, "--out", data, "--n", n,
                   *(["--size", size] if size else []))
    assert r.returncode == 0, r.stderr
    r = run_script("metadata_parallel.py", "--format", fmt, "--root", data, "--out_dir", out, "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    tables = {p.stem.split("_", 1)[1]: pd.read_parquet(p) for p in out.glob("metadata_*.parquet")}
    return data, out, tables, r.stdout


def check_common(tables, splits):
    assert set(tables) == {"all", *splits}
    for name, df in tables.items():
        assert list(df.columns[:6]) == COLUMNS, name
        assert df["expression"].dtype == np.int64 and df["valence"].dtype == np.float64
        assert df["source_label"].map(type).eq(str).all()
    parts = [set(tables[s]["filename"]) for s in splits]
    assert sum(map(len, parts)) == len(set().union(*parts))  # disjoint
    assert set().union(*parts) == set(tables["all"]["filename"][tables["all"]["expression"].between(0, 7)])


def test_end_to_end_affectnet_csv(tmp_path):
    data, out, t, stdout = make_and_index(tmp_path, "affectnet_csv", 40, size=32)
    check_common(t, ["train", "val"])
    raw = pd.concat([pd.read_csv(data / f).assign(split=s) for f, s in (("training.csv", "train"),
                                                                        ("validation.csv", "val"))])
    dropped = raw[raw["expression"] >= 8]
    assert f"{len(dropped)} rows the dataset's label rules drop" in stdout
    kept = raw[raw["expression"] < 8].set_index("subDirectory_filePath")
    for split in ("train", "val"):
        assert set(t[split]["filename"]) == set(kept.index[kept["split"] == split])
    df = t["all"].set_index("filename")
    assert (df["expression"] == kept.loc[df.index, "expression"]).all()  # AffectNet's codes are canonical
    assert (df["source_label"] == kept.loc[df.index, "expression"].astype(str)).all()
    assert (df["face_x"] == kept.loc[df.index, "face_x"]).all()
    assert (df["face_h"] == kept.loc[df.index, "face_height"]).all()
    # The face lies inside the photo at the recorded box.
    row = t["all"].iloc[0]
    photo = cv2.imread(str(data / "Manually_Annotated_Images" / row["filename"]))
    assert photo.shape[0] >= row["face_y"] + row["face_h"] and photo.shape[1] >= row["face_x"] + row["face_w"]


def test_end_to_end_rafdb(tmp_path):
    data, out, t, _ = make_and_index(tmp_path, "rafdb", 35, size=40)
    check_common(t, ["train", "val"])
    lines = (data / "EmoLabel" / "list_patition_label.txt").read_text().split("\n")
    raw = dict(line.split() for line in lines if line)
    assert all(name.startswith("test_") for name in t["val"]["filename"]) and len(t["all"]) == 35
    df = t["all"]
    assert [raw[f.replace("_aligned", "")] for f in df["filename"]] == df["source_label"].tolist()
    assert [RAFDB_DOC[int(s)] for s in df["source_label"]] == [CANONICAL[e] for e in df["expression"]]
    assert cv2.imread(str(data / "Image" / "aligned" / df["filename"][0])).shape == (40, 40, 3)


def test_end_to_end_fer2013(tmp_path):
    data, out, t, _ = make_and_index(tmp_path, "fer2013", 40)
    check_common(t, ["train", "val", "test"])
    raw = pd.read_csv(data / "fer2013.csv")
    assert list(raw.columns) == ["emotion", "pixels", "Usage"]
    for split, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        assert len(t[split]) == (raw["Usage"] == usage).sum()
    df = t["all"]
    assert [FER2013_DOC[int(s)] for s in df["source_label"]] == [CANONICAL[e] for e in df["expression"]]
    assert df.attrs["images_dir"] == str((out / "images").resolve())
    first = cv2.imread(str(out / "images" / df["filename"][0]), cv2.IMREAD_UNCHANGED)
    assert first.tolist() == np.array(raw["pixels"][0].split(), int).reshape(48, 48).tolist()
    # A second run leaves the identical PNG files alone.
    stamp = (out / "images" / df["filename"][0]).stat().st_mtime_ns
    r = run_script("metadata_parallel.py", "--root", data, "--out_dir", out, "--quiet", "--verify_images")
    assert r.returncode == 0 and "format: fer2013" in r.stdout  # recognised
    assert pd.read_parquet(out / "metadata_all.parquet")["filename"].tolist() == df["filename"].tolist()
    assert (out / "images" / df["filename"][0]).stat().st_mtime_ns == stamp


@pytest.mark.parametrize("rule", ["majority", "plurality"])
def test_end_to_end_ferplus(tmp_path, rule):
    data, out, t, stdout = make_and_index(tmp_path, "ferplus", 40, "--ferplus_label", rule)
    check_common(t, ["train", "val", "test"])
    votes = pd.read_csv(data / "fer2013new.csv", keep_default_na=False)
    counts = votes.iloc[:, 2:].to_numpy()
    if rule == "majority":  # the rule as the FERPlus paper states it, written out here on its own
        counted = np.where(counts <= 1, 0, counts)
        ok = counted.max(1) > counted.sum(1) / 2
    else:
        ok = (counts == counts.max(1, keepdims=True)).sum(1) == 1
    ok &= counts.argmax(1) < 8
    ok &= votes["Image name"] != ""
    assert sorted(t["all"]["filename"].str[:10] + ".png") == sorted(votes["Image name"][ok])  # name_<hash>.png
    assert f"{len(votes) - ok.sum()} rows the dataset's label rules drop" in stdout
    columns = list(votes.columns[2:10])
    df = t["all"]
    winners = [columns[int(np.argmax(list(map(int, s.split(",")))))] for s in df["source_label"]]
    expected = {"neutral": "Neutral", "happiness": "Happy", "surprise": "Surprise", "sadness": "Sad",
                "anger": "Anger", "disgust": "Disgust", "fear": "Fear", "contempt": "Contempt"}
    assert [expected[w] for w in winners] == [CANONICAL[e] for e in df["expression"]]


def test_end_to_end_folders_and_stratified_fallback(tmp_path):
    data, out, t, _ = make_and_index(tmp_path, "folders", 40, size=32)
    check_common(t, ["train", "val"])
    assert all(f.startswith("val/") for f in t["val"]["filename"])
    assert (t["all"]["filename"].str.split("/").str[1] == t["all"]["source_label"]).all()
    # Without split folders the rows are split at random, stratified.
    flat = tmp_path / "flat"
    for f in t["all"]["filename"]:
        dest = flat / f.split("/", 1)[1]
        dest.parent.mkdir(parents=True, exist_ok=True)
        (data / f).rename(dest)
    for _ in range(2):  # the second run finds its own --out_dir inside --root, and leaves it out
        r = run_script("metadata_parallel.py", "--root", flat, "--out_dir", flat / "index", "--val_fraction", "0.25",
                       "--quiet")
        assert r.returncode == 0, r.stderr
        assert "format: folders" in r.stdout and "train 30, val 10" in r.stdout


def test_end_to_end_affectnet_default_unchanged(tmp_path):
    data, out, t, _ = make_and_index(tmp_path, "affectnet", 48, size=32)
    check_common(t, ["train", "val"])
    assert (data / "annotations" / "0_exp.npy").is_file()
    assert len(t["val"]) == math.ceil(0.2 * 48)  # scikit-learn rounds the test share up


def test_demo_rerun_replaces_only_its_own_folders(tmp_path, capsys):
    out = tmp_path / "data"
    r = run_script("make_demo_data.py", "--format", "fer2013", "--out", out, "--n", 8)
    assert r.returncode == 0, r.stderr
    r = run_script("make_demo_data.py", "--format", "rafdb", "--out", out, "--n", 8, "--size", 32)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [".make_demo_data", "EmoLabel", "Image"]  # no mix
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = run_script("make_demo_data.py", "--out", mine, "--n", 8)
    assert r.returncode == 1 and "not written by make_demo_data.py" in r.stderr
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    for args, code, needle in ((["--n", "0"], 2, "--n"), (["--size", "8"], 2, "--size"),
                               (["--size", "abc"], 2, "--size"), (["--format", "fer2013", "--size", "64"], 1, "48x48"),
                               (["--format", "voc"], 2, "--format")):
        with pytest.raises(SystemExit) as e:
            run_main(make_demo_data.main, ["--out", str(tmp_path / "x"), *args])
        err = capsys.readouterr().err
        assert e.value.code == code and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:
        run_main(make_demo_data.main, ["--out", str(mine / "notes.txt")])
    assert e.value.code == 1 and "--out" in capsys.readouterr().err
    # Through a link the linked folder is replaced, and the link stays.
    (tmp_path / "link").symlink_to(out)
    demo.make_dataset(tmp_path / "link", n=8, size=32, fmt="folders", progress=False)
    assert (tmp_path / "link").is_symlink() and (out / "train").is_dir() and not (out / "Image").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_demo_interrupted_or_disk_full_keeps_the_old_folder(tmp_path, monkeypatch):
    import subprocess

    out = demo.make_dataset(tmp_path / "d", n=8, size=32, progress=False)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    def interrupted(folder, *args):
        demo.write_affectnet(folder, *args)
        raise KeyboardInterrupt
    monkeypatch.setitem(demo.WRITERS, "affectnet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo.make_dataset(out, n=16, size=32, seed=3, progress=False)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        r = run_script("make_demo_data.py", "--out", small / "d", "--n", 8, "--size", 32)
        assert r.returncode == 0, r.stderr
        before = {p: p.read_bytes() for p in sorted(small.rglob("*")) if p.is_file()}
        r = run_script("make_demo_data.py", "--out", small / "d", "--n", 400, "--size", 32)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"error: no space left on device writing {small / 'd'}"
        assert {p: p.read_bytes() for p in sorted(small.rglob("*")) if p.is_file()} == before
    finally:
        subprocess.run(["umount", str(small)])
