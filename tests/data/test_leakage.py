"""fer/data/leakage.py: the leakage guard of the index (exact and near duplicates across splits and within a
split under different labels), its pair search against all pairs, its threshold on real re-encodings, resizes
and crops, and the protocol card metadata_parallel.py writes beside the parquet files."""
import io
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from builders import run_here
from PIL import Image

from fer.data import leakage as L

PICTURES = ["astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "horse", "hubble_deep_field",
            "immunohistochemistry", "retina", "page"]  # scikit-image's (its `cat` is chelsea: left out)


def pictures():
    from skimage import data

    out = {}
    for name in PICTURES:
        a = getattr(data, name)()
        a = (a * 255).astype(np.uint8) if a.dtype != np.uint8 else a
        out[name] = Image.fromarray(a).convert("RGB")
    return out


def jpeg(im, quality):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def variants(im):
    w, h = im.size
    out = {f"jpeg{q}": jpeg(im, q) for q in (95, 75, 50, 30)}
    out.update({f"resize{s}": im.resize((int(w * s), int(h * s)), Image.BILINEAR) for s in (0.5, 2.0)})
    out.update({f"crop{c}": im.crop((int(w * c), int(h * c), w - int(w * c), h - int(h * c))) for c in (0.01,)})
    return out


def hashed(im, folder):
    """(sha1, 64-bit pHash, 256-bit pHash) of the picture saved as a PNG in folder, as the index's workers hash it."""
    path = folder / f"{len(list(folder.iterdir()))}.png"
    im.save(path)
    return L._hash_chunk([str(path)])[0]


def test_multi_index_hashing_finds_exactly_the_pairs_all_pairs_comparison_finds():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 1500, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 1500).astype(np.uint64)
    flips = np.bitwise_or.reduce(np.uint64(1) << rng.integers(0, 64, (300, 8)).astype(np.uint64), axis=1)
    values = np.unique(np.concatenate([base, base[:300] ^ flips, base[300:400] ^ np.uint64(0b111)]))
    i, j, d = L.near_pairs(values, 8)
    x = np.bitwise_count(values[:, None] ^ values[None, :])
    ref = {(a, b) for a, b in zip(*np.triu_indices(len(values), 1)) if x[a, b] <= 8}
    assert {(int(a), int(b)) for a, b in zip(i, j)} == ref and len(ref) >= 400
    assert (d == x[i, j]).all()


@pytest.mark.slow
def test_threshold_finds_reencodings_resizes_and_small_crops_and_keeps_different_pictures_apart(tmp_path):
    pics = pictures()
    hashes = {name: hashed(im, tmp_path) for name, im in pics.items()}
    for name, im in pics.items():
        for kind, v in variants(im).items():
            _, ph, fine = hashed(v, tmp_path)
            coarse, fine_bits = (ph ^ hashes[name][1]).bit_count(), (fine ^ hashes[name][2]).bit_count()
            assert coarse <= L.NEAR_DUPLICATE_BITS and fine_bits <= L.NEAR_DUPLICATE_CONFIRM_BITS, (name, kind, coarse, fine_bits)
    for a, b in itertools.combinations(hashes, 2):  # different pictures: far beyond both thresholds
        assert (hashes[a][1] ^ hashes[b][1]).bit_count() > 2 * L.NEAR_DUPLICATE_BITS, (a, b)
        assert (hashes[a][2] ^ hashes[b][2]).bit_count() > 2 * L.NEAR_DUPLICATE_CONFIRM_BITS, (a, b)


def test_jpegs_are_hashed_from_a_reduced_decode_within_a_few_bits_of_the_full_one(tmp_path, monkeypatch):
    """The workers decode a JPEG in grey at 1/2-1/8 scale (PIL's draft: 2-4x faster on 224-512 px faces): its
    hashes stay within 2 and 6 bits of the full decode's, and the JPEG of a half-size re-encoding still lies
    within both thresholds."""
    import imagehash
    from PIL import JpegImagePlugin

    drafted = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda im, mode, size: drafted.append(draft(im, mode, size)) or drafted[-1])
    for name, im in list(pictures().items())[:6]:
        path, half = tmp_path / f"{name}.jpg", tmp_path / f"{name}_half.jpg"
        im.save(path, quality=90)
        im.resize((im.width // 2, im.height // 2), Image.BILINEAR).save(half, quality=75)
        (_, ph, fine), (_, ph_half, fine_half) = L._hash_chunk([str(path), str(half)])
        with Image.open(path) as full:
            full = full.convert("L")
            full_ph, full_fine = (int(str(imagehash.phash(full, hash_size=k)), 16) for k in (8, 16))
        assert (ph ^ full_ph).bit_count() <= 2 and (fine ^ full_fine).bit_count() <= 6, name
        assert (ph ^ ph_half).bit_count() <= L.NEAR_DUPLICATE_BITS, name
        assert (fine ^ fine_half).bit_count() <= L.NEAR_DUPLICATE_CONFIRM_BITS, name
    assert any(scale is not None for scale in drafted)  # the 512 px pictures were decoded at a reduced scale


def folders_dataset(root):
    """train/ and val/ with a class folder each: val holds a JPEG re-encoding of a training picture (same
    label), a resized one under another label, and an exact copy; the others are different pictures."""
    pics = pictures()
    layout = {"train/happy": ["astronaut", "camera", "coffee"], "train/sad": ["chelsea", "rocket", "coins"],
              "val/happy": ["moon", "horse"], "val/sad": ["hubble_deep_field", "immunohistochemistry"]}
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True)
        for n in names:
            pics[n].resize((96, 96)).save(root / folder / f"{n}.png")
    jpeg(pics["astronaut"].resize((96, 96)), 50).save(root / "val/happy/astronaut_q50.jpg")
    pics["chelsea"].resize((64, 64)).save(root / "val/happy/chelsea_small.png")  # another label than in train
    (root / "val/sad/coins_copy.png").write_bytes((root / "train/sad/coins.png").read_bytes())
    pics["retina"].resize((96, 96)).save(root / "train/sad/retina.png")  # within train: same picture, two labels
    jpeg(pics["retina"].resize((96, 96)), 80).save(root / "train/happy/retina_q80.jpg")


@pytest.mark.slow
def test_index_writes_a_protocol_card_and_dedupe_drops_the_later_copy(tmp_path):
    folders_dataset(tmp_path / "ds")
    r = run_here("metadata_parallel.py", "--root", tmp_path / "ds", "--out_dir", tmp_path / "idx", "--quiet",
                 "--workers", 1)
    assert r.returncode == 0, r.stderr
    assert "3 image(s) of val with a (near) duplicate in train" in r.stdout
    card = json.loads((tmp_path / "idx" / "protocol_card.json").read_text())
    d = card["duplicates"]
    across = {(p["a"]["filename"], p["b"]["filename"]): p for p in d["pairs"] if p["where"] == "across"}
    assert set(across) == {("train/happy/astronaut.png", "val/happy/astronaut_q50.jpg"),
                           ("train/sad/chelsea.png", "val/happy/chelsea_small.png"), ("train/sad/coins.png", "val/sad/coins_copy.png")}
    assert across[("train/sad/coins.png", "val/sad/coins_copy.png")]["kind"] == "exact"
    assert across[("train/sad/chelsea.png", "val/happy/chelsea_small.png")]["b"]["label"] == "Happy"
    within = [p for p in d["pairs"] if p["where"] == "within"]
    assert [(p["a"]["filename"], p["b"]["filename"]) for p in within] == [("train/happy/retina_q80.jpg", "train/sad/retina.png")]
    assert card["rows"] == {"train": 8, "val": 7} and card["rows_per_class"]["val"] == {"Happy": 4, "Sad": 3}
    assert card["fingerprint"] == L.card_fingerprint(card) and not d["dropped"]
    md = (tmp_path / "idx" / "protocol_card.md").read_text()
    assert "astronaut_q50.jpg" in md and "reported and kept" in md and card["fingerprint"] in md
    assert len(pd.read_parquet(tmp_path / "idx" / "metadata_val.parquet")) == 7
    rec = L.card_record(tmp_path / "idx" / "metadata_val.parquet")
    assert rec["split"] == "val" and rec["matches"] and rec["across_splits"] == {"train-val": 3}
    assert len(rec["pairs_with_train"]) == 3
    from fer.evaluation.report import leakage_section  # what the evaluation page shows of it
    html = leakage_section({"protocol_card": [rec]})
    assert "3 near-duplicates between train and val" in html and html.count("<img") == 6
    from fer.training.record import protocol_cards  # what training copies into its run record
    copied = protocol_cards({"train": [{"path": str(tmp_path / "idx" / "metadata_train.parquet")}], "val": []})
    assert copied["train"][0]["fingerprint"] == card["fingerprint"] and copied["train"][0]["split"] == "train"
    # --dedupe: the copies in val go, training keeps its images; the card says so (and so its fingerprint changes).
    r = run_here("metadata_parallel.py", "--root", tmp_path / "ds", "--out_dir", tmp_path / "dd", "--quiet",
                 "--workers", 1, "--dedupe")
    assert r.returncode == 0, r.stderr
    dd = json.loads((tmp_path / "dd" / "protocol_card.json").read_text())
    assert sorted(x["filename"] for x in dd["duplicates"]["dropped"]) == ["val/happy/astronaut_q50.jpg",
                                                                          "val/happy/chelsea_small.png", "val/sad/coins_copy.png"]
    assert dd["rows"] == {"train": 8, "val": 4} and len(pd.read_parquet(tmp_path / "dd" / "metadata_val.parquet")) == 4
    assert dd["fingerprint"] != card["fingerprint"] and "--dedupe" in (tmp_path / "dd" / "protocol_card.md").read_text()


@pytest.mark.slow
def test_exclude_takes_a_reviewed_list_and_the_card_records_it(tmp_path):
    folders_dataset(tmp_path / "ds")
    pd.DataFrame({"rank": [1, 2, 3], "filename": ["val/happy/moon.png", "train/sad/rocket.png", "val/sad/gone.png"],
                  "exclude": ["yes", "", "x"]}).to_csv(tmp_path / "review.csv", index=False)
    r = run_here("metadata_parallel.py", "--root", tmp_path / "ds", "--out_dir", tmp_path / "idx", "--quiet",
                 "--workers", 1, "--exclude", tmp_path / "review.csv")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "idx" / "protocol_card.json").read_text())
    ex = card["excluded"]
    assert ex["rows"] == [{"split": "val", "filename": "val/happy/moon.png"}] and ex["not_in_index"] == ["val/sad/gone.png"]
    assert card["rows"] == {"train": 8, "val": 6} and "1 rows excluded" in r.stdout
    assert "val/happy/moon.png" in (tmp_path / "idx" / "protocol_card.md").read_text()
    (tmp_path / "bad.csv").write_text("name\nx.jpg\n")
    r = run_here("metadata_parallel.py", "--root", tmp_path / "ds", "--out_dir", tmp_path / "idx2", "--quiet",
                 "--exclude", tmp_path / "bad.csv")
    assert r.returncode != 0 and "no filename column" in r.stderr and "Traceback" not in r.stderr


def test_exclude_never_drops_a_row_of_another_split_that_shares_its_name(tmp_path):
    """With --val_root, training's 0.jpg and validation's 0.jpg are two images: a reviewed list of validation
    rows dropped both (the counts and the card off, exit 0). Such a name needs a split column."""
    def parts():
        return {"train": pd.DataFrame({"filename": ["0.jpg", "1.jpg"], "expression": [0, 1]}),
                "val": pd.DataFrame({"filename": ["0.jpg", "2.jpg"], "expression": [0, 2]})}
    listed = tmp_path / "review.csv"
    listed.write_text("filename,exclude\n0.jpg,yes\n2.jpg,no\n")
    with pytest.raises(L.IndexError_, match=r"0\.jpg names a row of train and val.*split column"):
        L.exclude(parts(), listed)
    listed.write_text("filename,split,exclude\n0.jpg,val,yes\n2.jpg,val,no\n")
    kept, record = L.exclude(parts(), listed)
    assert list(kept["train"]["filename"]) == ["0.jpg", "1.jpg"] and list(kept["val"]["filename"]) == ["2.jpg"]
    assert record["rows"] == [{"split": "val", "filename": "0.jpg"}]
    listed.write_text("filename\n1.jpg\n")  # a name of one split: as before, no split column needed
    kept, _ = L.exclude(parts(), listed)
    assert list(kept["train"]["filename"]) == ["0.jpg"]


def test_a_card_edited_out_of_shape_is_no_card_not_a_traceback(tmp_path):
    """card_record runs in training and evaluation (run record, page): a protocol_card.json edited into
    another shape raised AttributeError/KeyError there, a traceback instead of the run."""
    meta = tmp_path / "metadata_val.parquet"
    pd.DataFrame({"filename": ["a.jpg"]}).to_parquet(meta)
    for card in ({"fingerprint": "f", "files": ["metadata_val.parquet"]},
                 {"fingerprint": "f", "files": {"val": "metadata_val.parquet"}, "duplicates": {"pairs": [{"where": "across"}]}},
                 {"fingerprint": "f", "excluded": ["x"]}):
        (tmp_path / L.CARD_JSON).write_text(json.dumps(card))
        assert L.card_record(meta) is None, card
    (tmp_path / L.CARD_JSON).write_text(json.dumps({"fingerprint": "f", "files": {"val": "metadata_val.parquet"}}))
    assert L.card_record(meta)["split"] == "val"  # a card in shape is still read
