"""fer/data/formats.py: every dataset layout's label map on rows written from the dataset's
documentation, damaged rows and special files, and the whole path make_demo_data --format X ->
metadata_parallel --format X -> parquet files (and, per format, one tiny epoch and an evaluation).

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import math
import os
import shutil
import types

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from builders import (
    evaluate,
    index_here,
    index_script,
    one_error_line,
    one_line_error,
    run_here,
    run_script,
    tiny_args,
    write_fer2013,
)

from fer.cli.index import parse_class_map
from fer.constants import CLASS_NAMES
from fer.data import demo as make_demo_data
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_end_to_end_affectnet_default_unchanged(tmp_path):
    data, out, t, _ = make_and_index(tmp_path, "affectnet", 48, size=32)
    check_common(t, ["train", "val"])
    assert (data / "annotations" / "0_exp.npy").is_file()
    assert len(t["val"]) == math.ceil(0.2 * 48)  # scikit-learn rounds the test share up


# --- every dataset format: index -> one tiny epoch -> evaluation ---------------------------------
FORMATS = {"affectnet": 48, "affectnet_csv": 48, "rafdb": 42, "fer2013": 42, "ferplus": 60, "folders": 48}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_trains_and_evaluates(fmt, trained, tmp_path):
    from fer.data import demo as make_demo_data
    make_demo_data.make_dataset(tmp_path / "data", FORMATS[fmt], size=None if fmt.startswith("fer") else 32,
                                seed=3, progress=False, fmt=fmt)
    r = run_here("metadata_parallel.py", "--format", fmt, "--root", tmp_path / "data", "--out_dir", tmp_path / "idx",
                 "--quiet")
    assert r.returncode == 0, r.stderr
    idx = tmp_path / "idx"
    r = run_here("train_vggface2_resnet50.py", *tiny_args({"train": idx / "metadata_train.parquet",
                                                           "val": idx / "metadata_val.parquet"},
                                                          tmp_path, "--epochs", 1, "--steps_per_epoch", 2))
    assert r.returncode == 0, r.stderr
    classes = sorted(set(pd.read_parquet(idx / "metadata_train.parquet")["expression"]))
    ckpt = torch.load(tmp_path / "m.pth", weights_only=True)
    assert ckpt["class_names"] == [CLASS_NAMES[c] for c in classes]
    split = "test" if (idx / "metadata_test.parquet").exists() else "val"
    m, pred, _ = evaluate(tmp_path / "m.pth", idx / f"metadata_{split}.parquet", tmp_path / "own")
    assert m["n"] == len(pred) > 0 and m["classes_scored"] == [c for c in ckpt["class_names"]
                                                                if c in set(pred["expression_true"])]
    # The AffectNet-8 demo model on this dataset: classes matched by name.
    m8, pred8, _ = evaluate(trained, idx / f"metadata_{split}.parquet", tmp_path / "cross")
    present = set(pd.read_parquet(idx / f"metadata_{split}.parquet")["expression"].map(CLASS_NAMES.__getitem__))
    assert m8["classes_scored"] == [c for c in CLASS_NAMES if c in present]
    assert set(pred8["expression_pred"]) <= present


# --- data loss ----------------------------------------------------------------------------------
def test_fer2013_and_ferplus_in_one_folder_keep_each_others_pixels(tmp_path):
    """FERPlus names stop following the row number at the first row without a name; indexing it into
    the folder of a FER2013 index must not change the pixels behind the FER2013 names."""
    data = make_demo_data.make_dataset(tmp_path / "fer", n=20, fmt="ferplus", progress=False)
    votes = pd.read_csv(data / "fer2013new.csv", keep_default_na=False, dtype=str)
    votes.loc[1, "Image name"] = ""  # as in the real file: a removed image, later names shift by one
    named = [i for i in range(len(votes)) if votes.loc[i, "Image name"]]
    votes.loc[named, "Image name"] = [f"fer{k:07d}.png" for k in range(len(named))]
    votes.to_csv(data / "fer2013new.csv", index=False)
    pixels = pd.read_csv(data / "fer2013.csv")["pixels"]
    out = tmp_path / "out"
    for fmt in ("fer2013", "ferplus"):
        r = run_here("metadata_parallel.py", "--format", fmt, "--root", data, "--out_dir", out, "--quiet")
        assert r.returncode == 0, r.stderr
        if fmt == "fer2013":
            fer = pd.read_parquet(out / "metadata_all.parquet")
    plus = pd.read_parquet(out / "metadata_all.parquet")
    for df, row_of in ((fer, lambda f: int(f[3:10])),  # FER2013: fer<row>_<hash>.png
                       (plus, lambda f: named[int(f[3:10])])):  # FERPlus: its Image name, which is not the row
        for f in df["filename"]:
            img = cv2.imread(str(out / "images" / f), cv2.IMREAD_GRAYSCALE)
            assert (img.reshape(-1) == np.array(pixels[row_of(f)].split(), np.uint8)).all(), f


# --- silent wrong results -----------------------------------------------------------------------
def test_images_listed_twice_are_resolved_by_the_rule_and_named(tmp_path):
    data = make_demo_data.make_dataset(tmp_path / "raf", n=10, size=16, fmt="rafdb", progress=False)
    labels = data / "EmoLabel" / "list_patition_label.txt"
    lines = labels.read_text().splitlines()
    name0, code0 = lines[0].split()
    other = str(int(code0) % 7 + 1)
    labels.write_text("\n".join(lines + [f"{name0} {other}", lines[1], lines[2]]) + "\n")
    r = run_here("metadata_parallel.py", "--root", data, "--out_dir", tmp_path / "o", "--quiet")
    assert r.returncode == 0, r.stderr
    every = pd.read_parquet(tmp_path / "o" / "metadata_all.parquet")["filename"]
    assert not every.duplicated().any() and name0.replace(".jpg", "_aligned.jpg") not in set(every)
    assert f"_aligned.jpg: listed 2 times with different labels ({code0}, {other}): dropped" in r.stdout
    assert "2 images listed more than once with the same label" in r.stdout
    # FERPlus: the same Image name on two rows with different votes
    fp = make_demo_data.make_dataset(tmp_path / "fp", n=10, fmt="ferplus", progress=False)
    votes = pd.read_csv(fp / "fer2013new.csv", keep_default_na=False, dtype=str)
    top = int(np.argmax(votes.loc[2, mp.FERPLUS_VOTES].astype(int)))
    votes.loc[3, "Image name"] = votes.loc[2, "Image name"]
    votes.loc[3, mp.FERPLUS_VOTES] = ["10" if k == (top + 1) % 8 else "0" for k in range(10)]  # another emotion
    votes.to_csv(fp / "fer2013new.csv", index=False)
    r = run_here("metadata_parallel.py", "--root", fp, "--out_dir", tmp_path / "p", "--quiet")
    assert r.returncode == 0 and f"{votes.loc[2, 'Image name']}: listed 2 times with different labels" in r.stdout


def test_a_mapping_flag_never_means_two_things(tmp_path):
    data = make_demo_data.make_dataset(tmp_path / "f", n=16, size=16, fmt="folders", progress=False)
    r = run_here("metadata_parallel.py", "--root", data, "--out_dir", tmp_path / "o", "--class_map", "0=happy,0=sad")
    assert r.returncode == 2 and "folder '0' is given twice" in r.stderr
    shutil.copytree(data / "train" / "happy", data / "train" / "happiness")
    one_error_line(run_here("metadata_parallel.py", "--root", data, "--out_dir", tmp_path / "o"),
                   "folders happiness, happy are all class Happy", "--class_map")


# --- tracebacks and unclear errors --------------------------------------------------------------
def test_rafdb_line_with_three_fields_is_one_line(tmp_path):
    data = make_demo_data.make_dataset(tmp_path / "raf", n=5, size=16, fmt="rafdb", progress=False)
    labels = data / "EmoLabel" / "list_patition_label.txt"
    labels.write_text(labels.read_text().replace("\n", " extra\n", 1))
    one_error_line(run_here("metadata_parallel.py", "--root", data, "--out_dir", tmp_path / "o"),
                   "list_patition_label.txt: line 1", "3 fields")


# --- 4. nothing hangs: regular files only ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fmt,special", [("fer2013", "fer2013.csv"), ("affectnet_csv", "training.csv"),
                                         ("rafdb", "EmoLabel/list_patition_label.txt")])
def test_label_file_that_is_a_fifo(tmp_path, fmt, special):
    (tmp_path / "Manually_Annotated_Images").mkdir()
    (tmp_path / special).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(tmp_path / special)
    r = index_script("--format", fmt, "--root", tmp_path, "--out_dir", tmp_path / "out")
    one_line_error(r, 1, special, "not a regular file")


@pytest.mark.slow
def test_folders_skip_special_files(tmp_path):
    for i in range(4):
        make_demo_data.write(tmp_path / "ds" / "happy" / f"{i}.jpg", make_demo_data.jpeg(np.zeros((8, 8, 3), np.uint8)))
        make_demo_data.write(tmp_path / "ds" / "sad" / f"{i}.jpg", make_demo_data.jpeg(np.zeros((8, 8, 3), np.uint8)))
    os.mkfifo(tmp_path / "ds" / "sad" / "pipe.jpg")
    os.symlink("/dev/zero", tmp_path / "ds" / "happy" / "zero.png")
    r = index_script("--root", tmp_path / "ds", "--out_dir", tmp_path / "out", "--val_fraction", "0.5")
    assert r.returncode == 0, r.stderr
    assert "2 not regular files" in r.stdout and "sad/pipe.jpg: a FIFO" in r.stdout and "happy/zero.png: a device" in r.stdout


# --- 5. bad paths and flags fail at once, in one line ------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("content,needle", [(b"emotion,Usage\n0,Training\n", "no column pixels"),
                                            (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 50, "not a text file"),
                                            (b"", "No columns to parse")])
def test_wrong_file_is_one_line(tmp_path, content, needle):
    (tmp_path / "fer2013.csv").write_bytes(content)
    r = index_script("--root", tmp_path, "--out_dir", tmp_path / "out")
    one_line_error(r, 1, "fer2013.csv", needle)


@pytest.mark.slow
def test_ferplus_names_cannot_leave_the_images_folder(tmp_path):
    write_fer2013(tmp_path / "fer2013.csv", 4, seed=0)  # Training, PublicTest, PrivateTest, Training
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    (tmp_path / "fer2013new.csv").write_text(header + "Training,../../evil.png,10,0,0,0,0,0,0,0,0,0\n"
                                             "PublicTest,fer0000001.png,10,0,0,0,0,0,0,0,0,0\n"
                                             "PrivateTest,,0,0,0,0,0,0,0,0,0,10\n"
                                             "Training,fer0000003.png,0,10,0,0,0,0,0,0,0,0\n")
    r = index_script("--root", tmp_path, "--out_dir", tmp_path / "out" / "x")
    assert r.returncode == 0, r.stderr
    assert "'../../evil.png' is not a plain .png name" in r.stdout
    assert sorted(p.name[:10] for p in tmp_path.rglob("*.png")) == ["fer0000001", "fer0000003"]  # + _<hash>.png


# --- found by the hostile pass over indexing and datasets -----------------------------------------
def test_affectnet_nan_values_and_landmarks_are_named(tmp_path):
    """AffectNet marks "none" with -2; a 'nan' valence or landmarks with NaN/inf points in a .npy file
    are damage, and were kept silently (landmarks that every later step then ignored) instead of being
    named like every other damaged annotation."""
    data = make_demo_data.make_dataset(tmp_path / "an", n=40, size=32, progress=False)
    ann = data / "annotations"
    np.save(ann / "0_val.npy", np.array("nan"))
    np.save(ann / "1_lnd.npy", np.full(136, np.nan))
    lnd = np.load(ann / "2_lnd.npy").astype(str)
    lnd[5] = "inf"
    np.save(ann / "2_lnd.npy", lnd)
    np.save(ann / "3_aro.npy", np.array("-2"))  # AffectNet's "none": kept as it is, not named
    r = index_here(data, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "corrupt .npy" in ln)
    assert line.lstrip().startswith("3 ") and "0_val.npy" in line and "1_lnd.npy" in line and "2_lnd.npy" in line
    assert "3_aro" not in r.stdout
    df = pd.read_parquet(tmp_path / "out" / "metadata_all.parquet").set_index("filename")
    assert np.isnan(df.loc["0.jpg", "valence"]) and df.loc["3.jpg", "arousal"] == -2
    assert df.loc["1.jpg", "landmarks"] is None and df.loc["2.jpg", "landmarks"] is None
    assert np.isfinite(df.loc["4.jpg", "landmarks"]).all()


def test_folders_with_one_split_folder_or_two_names_for_one_split(tmp_path):
    """A lone train/ was reported as an unknown class folder 'train', and val/ beside validation/ as
    'split folders beside other folders (validation)': both now say what is wrong with the splits."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=40, size=32, fmt="folders", progress=False)
    (data / "val").rename(tmp_path / "val")
    one_error_line(index_here(data, tmp_path / "out"), "split folder train without a validation folder")
    (tmp_path / "val").rename(data / "validation")
    (data / "Val").mkdir()
    one_error_line(index_here(data, tmp_path / "out"), "folders Val and validation are both the val split")
    (data / "Val").rmdir()
    assert index_here(data, tmp_path / "out").returncode == 0


def test_fer2013_whose_rows_all_lack_a_usage_is_one_line(tmp_path):
    """A fer2013.csv cut short after its first row (no Usage) ended in a TypeError traceback: the
    stripped labels assigned to the empty table of kept rows brought the dropped rows back, pixels NaN."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=10, fmt="fer2013", progress=False)
    text = (data / "fer2013.csv").read_text()
    (data / "fer2013.csv").write_text(text[:5000])  # the header and most of the first row's pixels
    one_error_line(index_here(data, tmp_path / "out"), "0 training")


def test_macos_resource_forks_are_not_images(tmp_path):
    """A folders dataset copied from a Mac holds ._x.jpg files (resource forks, not images): they were
    indexed with their folder's label, and training then stopped at the first one."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=40, size=32, fmt="folders", progress=False)
    (data / "train" / "happy" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    assert index_here(data, tmp_path / "out").returncode == 0
    names = pd.read_parquet(tmp_path / "out" / "metadata_all.parquet")["filename"]
    assert not names.str.contains("/._").any() and len(names) == 40


def test_a_folder_name_with_a_line_break_stays_on_the_error_line(tmp_path):
    """An unknown class folder named 'sa\\nd' made the error two lines, of which only the last ('d;
    expected expression names') was printed: the root and the folder were lost."""
    data = make_demo_data.make_dataset(tmp_path / "f", n=40, size=32, fmt="folders", progress=False)
    (data / "train" / "sa\nd").mkdir()
    one_error_line(index_here(data, tmp_path / "out"), "--root", "class folders not recognised", "'sa\\nd'")


def test_a_csv_header_with_a_line_break_stays_on_the_error_line(tmp_path):
    """The same for a CSV whose header holds a quoted line break: only 'tion, pixels, Usage)' was left."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "fer2013.csv").write_text('"emo\ntion",pixels,Usage\n1,2 3,Training\n')
    one_error_line(index_here(tmp_path / "d", tmp_path / "out", "--format", "fer2013"), "fer2013.csv", "no column emotion")
