"""The leakage guard of the index (metadata_parallel.py): exact duplicates (same bytes: SHA-1 of the file)
and near duplicates (perceptual hash within NEAR_DUPLICATE_BITS bits) across the splits, and within a split
under different labels; and the protocol card that records them next to the parquet files.

How pairs are found without comparing all pairs: images with the same 64-bit pHash are one group (an exact
bucket); between the distinct hash values, multi-index hashing: the 64 bits are cut into BANDS bands, and
two hashes at most t bits apart agree within t // BANDS bits on at least one band (pigeonhole: otherwise
each band differs by at least t // BANDS + 1 bits, BANDS * (t // BANDS + 1) > t in all). So for each band
and each flip mask of at most t // BANDS bits, the hashes whose band equals (band XOR mask) are looked up
in the sorted band values; only those candidates are compared on all 64 bits.

Default: report and keep. With --dedupe the later copy across splits is dropped (train before val before
test: a validation or test image with a (near) duplicate in an earlier split goes); images of one split
with different labels are reported only.
"""
import hashlib
import io
import itertools
import json
from datetime import datetime
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from fer.constants import CLASS_NAMES, NEAR_DUPLICATE_BITS, NEAR_DUPLICATE_CONFIRM_BITS
from fer.data.formats import CHUNK, IndexError_, run_chunks
from fer.trust import inside, read_json, read_regular_text, recorded_root_fits, write_text

CARD_JSON, CARD_MD = "protocol_card.json", "protocol_card.md"
CARD_VERSION = 1
BANDS = 4  # bands of 16 bits (direct-address tables of 65,536): with t = 8 a pair agrees within 2 bits on one
SPLIT_ORDER = ("train", "val", "test")
HASH_READS = 64  # imagehash.phash resizes to 4 x hash_size: 64 x 64 for the 256-bit hash
SHOW_PAIRS = 50  # pairs listed in the markdown card (all of them are in the JSON)
PAIRS_ON_PAGE = 24  # pairs with train a run records for the evaluation page's thumbnails


# --- hashing, in the index's worker pool ------------------------------------------------------------
def _hash_chunk(paths):
    """Worker: (SHA-1 hex of the bytes, 64-bit pHash as int, 256-bit pHash as int) per image; None when
    unreadable. A JPEG is decoded in grey at the smallest of its 1/2, 1/4, 1/8 scales that still holds the
    64 x 64 the hashes read (PIL's draft): 2-4x faster on 224-512 px faces, and within 2 (64-bit) and 6
    (256-bit) bits of the full decode's hashes, far inside the thresholds (BENCHMARKS.md)."""
    out = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as im:  # the bytes just read: each file is read once
                im.draft("L", (HASH_READS, HASH_READS))
                im = im.convert("L")
                ph, fine = imagehash.phash(im), imagehash.phash(im, hash_size=16)
            out.append((hashlib.sha1(data).hexdigest(), int(str(ph), 16), int(str(fine), 16)))
        except Exception:  # noqa: BLE001  an unreadable image is the decoding check's business, not ours
            out.append(None)
    return out


def hash_images(paths, workers=None, progress=False):
    """[(sha1, phash, fine phash) or None] for the image files, in worker processes."""
    chunks = [paths[i:i + CHUNK // 4] for i in range(0, len(paths), CHUNK // 4)]
    return [h for result in run_chunks(_hash_chunk, chunks, workers, [len(c) for c in chunks], "hashing", progress)
            for h in result]


# --- pairs without comparing all pairs ----------------------------------------------------------------
def popcount(x):
    return np.bitwise_count(np.asarray(x, np.uint64)).astype(np.int64)


def near_pairs(hashes, bits=NEAR_DUPLICATE_BITS, bands=BANDS):
    """(i, j, distance) with i < j of every pair of the DISTINCT uint64 hashes at most `bits` apart, by
    multi-index hashing (module docstring). Returns three int arrays."""
    h = np.asarray(hashes, np.uint64)
    n = len(h)
    edges = np.linspace(0, 64, bands + 1).astype(int)
    radius = bits // bands
    found = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        width = hi - lo
        band = ((h >> np.uint64(lo)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(band, kind="stable")
        counts = np.bincount(band, minlength=1 << width)  # a direct-address table: no search per query
        starts = np.cumsum(counts) - counts
        for r in range(radius + 1):
            for flip in itertools.combinations(range(width), r):
                query = band ^ sum(1 << b for b in flip)
                start, count = starts[query], counts[query]
                if not count.any():
                    continue
                i = np.repeat(np.arange(n), count)
                offset = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
                j = order[np.repeat(start, count) + offset]
                keep = i < j
                i, j = i[keep], j[keep]
                keep = popcount(h[i] ^ h[j]) <= bits  # filtered per look-up: the candidates never pile up
                found.append(np.stack([i[keep], j[keep]], 1))
    if not found:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    pairs = np.unique(np.concatenate(found), axis=0)
    return pairs[:, 0], pairs[:, 1], popcount(h[pairs[:, 0]] ^ h[pairs[:, 1]])


def find_duplicates(table, bits=NEAR_DUPLICATE_BITS, confirm=NEAR_DUPLICATE_CONFIRM_BITS):
    """table: one row per indexed image with split, filename, path, expression, sha1, phash. Returns the
    pairs worth reporting, each directly within `bits` and confirmed within `confirm` bits of the 256-bit
    hash, or with the same bytes (no chains): a list of dicts (a, b: the two images'
    split, filename, path, label, a in the earlier split; kind: "exact" (same bytes), "same hash" or "near";
    bits: the Hamming distance; where: "across" splits or "within" a split under different labels)."""
    table = table[table["phash"].notna()].reset_index(drop=True)
    if table.empty:
        return []
    values, inverse = np.unique(table["phash"].to_numpy(np.uint64), return_inverse=True)
    i, j, d = near_pairs(values, bits)
    members = pd.Series(np.arange(len(table))).groupby(inverse).apply(list).to_dict()
    edges = [(v, v, 0) for v, rows in members.items() if len(rows) > 1] + list(zip(i.tolist(), j.tolist(), d.tolist()))
    rank = {s: k for k, s in enumerate(SPLIT_ORDER)}
    rows = table.to_dict("records")
    pairs, seen = [], set()
    for a, b, dist in edges:
        for r, q in itertools.product(members[a], members[b]):
            x, y = rows[r], rows[q]
            if (x["split"], x["filename"]) == (y["split"], y["filename"]):
                continue
            if (rank[x["split"]], x["filename"]) > (rank[y["split"]], y["filename"]):
                x, y = y, x
            if x["split"] != y["split"]:
                where = "across"
            elif x["expression"] != y["expression"]:
                where = "within"
            else:
                continue
            key = (x["split"], x["filename"], y["split"], y["filename"])
            if key in seen:
                continue
            seen.add(key)
            kind = "exact" if x["sha1"] == y["sha1"] else "same hash" if a == b else "near"
            fine = int(x["fine"] ^ y["fine"]).bit_count()
            if kind != "exact" and fine > confirm:
                continue
            pairs.append({"where": where, "kind": kind, "bits": int(dist), "bits_256": fine, "a": _side(x), "b": _side(y)})
    return sorted(pairs, key=lambda p: (p["where"], p["bits"], p["a"]["split"], p["a"]["filename"], p["b"]["filename"]))


def _side(r):
    label = int(r["expression"])
    return {"split": r["split"], "filename": r["filename"], "path": r["path"],
            "label": CLASS_NAMES[label] if 0 <= label < len(CLASS_NAMES) else str(label)}


# --- the guard in the index ---------------------------------------------------------------------------
def image_path(images_dir, name, stage=None):
    """The file to read for an image: PNGs written from CSV pixels are still under their staged names."""
    target = Path(images_dir) / name
    return str(stage.files.get(target, target)) if stage is not None else str(target)


def guard(parts, args, stage=None):
    """Hash every image of the splits, find exact and near duplicates, drop later copies when args.dedupe.
    Returns (parts, leakage: the card's "duplicates" section, {path read: SHA-1 of its bytes})."""
    frames = []
    for split, part in parts.items():
        images_dir = part.attrs.get("images_dir", "")
        frames.append(pd.DataFrame({"split": split, "filename": part["filename"].astype(str),
                                    "path": [str(Path(images_dir) / n) for n in part["filename"]],
                                    "expression": part["expression"].to_numpy(),
                                    "read": [image_path(images_dir, n, stage) for n in part["filename"]]}))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    unique = table.drop_duplicates("read")
    hashed = dict(zip(unique["read"], hash_images(unique["read"].tolist(), args.workers, args.progress)))
    table["sha1"] = [hashed[p][0] if hashed[p] else None for p in table["read"]]
    table["phash"] = [np.uint64(hashed[p][1]) if hashed[p] else None for p in table["read"]]
    table["fine"] = [hashed[p][2] if hashed[p] else None for p in table["read"]]
    bits = args.near_duplicate_bits
    pairs = find_duplicates(table, bits)
    dropped = []
    if args.dedupe:
        later = {(p["b"]["split"], p["b"]["filename"]) for p in pairs if p["where"] == "across"}
        for split, part in parts.items():
            gone = part["filename"].astype(str).map(lambda f: (split, f) in later).to_numpy(bool)
            dropped += [{"split": split, "filename": f} for f in part["filename"][gone]]
            parts[split] = part[~gone].reset_index(drop=True)
    across = [p for p in pairs if p["where"] == "across"]
    leaks = {}
    for p in across:
        key = f"{p['a']['split']}-{p['b']['split']}"
        leaks.setdefault(key, set()).add(p["b"]["filename"])
    return parts, {
        "method": f"exact: SHA-1 of the file; near: 64-bit pHash (imagehash.phash) at most {bits} bits apart (pairs "
                  f"found by multi-index hashing, {BANDS} bands) and 256-bit pHash at most "
                  f"{NEAR_DUPLICATE_CONFIRM_BITS} bits apart",
        "bits": bits,
        "images_hashed": int(len(unique)), "unreadable": int(sum(h is None for h in hashed.values())),
        "across_splits": {k: len(v) for k, v in sorted(leaks.items())},
        "within_split_conflicting_labels": sum(p["where"] == "within" for p in pairs),
        "action": ("--dedupe: the later copy across splits dropped (train before val before test)"
                   if args.dedupe else "reported and kept (--dedupe drops the later copy across splits)"),
        "dropped": dropped, "pairs": pairs}, {p: h[0] for p, h in hashed.items() if h}


# --- the protocol card ---------------------------------------------------------------------------------
def card_fingerprint(card):
    """SHA-256 of the card's content (without the fingerprint and the date): the same data and choices,
    the same fingerprint."""
    body = {k: v for k, v in card.items() if k not in ("fingerprint", "written")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def make_card(fmt, root, parts, duplicates, excluded=None, written=None):
    counts = {split: {CLASS_NAMES[int(c)]: int(n) for c, n in sorted(part["expression"].value_counts().items())}
              for split, part in parts.items()}
    card = {"version": CARD_VERSION, "format": fmt, "root": str(root),
            "files": {split: f"metadata_{split}.parquet" for split in parts},
            "rows": {split: int(len(part)) for split, part in parts.items()}, "rows_per_class": counts,
            "duplicates": duplicates, "excluded": excluded or {"file": None, "rows": []}, "written": written}
    card["fingerprint"] = card_fingerprint(card)
    return card


def card_markdown(card):
    d = card["duplicates"]
    classes = [c for c in CLASS_NAMES if any(c in v for v in card["rows_per_class"].values())]
    lines = [f"# Protocol card: {card['format']} at `{card['root']}`", "",
             f"fingerprint `{card['fingerprint']}`" + (f", written {card['written']}" if card.get("written") else ""), "",
             "## Rows per split and class", "", "| class | " + " | ".join(card["rows"]) + " |",
             "|---|" + "---:|" * len(card["rows"])]
    lines += [f"| {c} | " + " | ".join(str(card["rows_per_class"][s].get(c, 0)) for s in card["rows"]) + " |" for c in classes]
    lines += ["| total | " + " | ".join(str(n) for n in card["rows"].values()) + " |", "",
              "## Duplicates and near duplicates", "", f"Method: {d['method']}. {d['images_hashed']} images hashed"
              + (f", {d['unreadable']} unreadable" if d["unreadable"] else "") + ".", ""]
    lines += [f"- images of {k.split('-')[1]} with a (near) duplicate in {k.split('-')[0]}: {n}"
              for k, n in d["across_splits"].items()] or ["- no (near) duplicate across splits"]
    lines += [f"- pairs within a split under different labels: {d['within_split_conflicting_labels']}",
              f"- action: {d['action']}" + (f"; {len(d['dropped'])} rows dropped" if d["dropped"] else ""), ""]
    if d["pairs"]:
        lines += ["| where | kind | bits (64 / 256) | image | label | duplicate | label |", "|---|---|---:|---|---|---|---|"]
        lines += [f"| {p['where']} | {p['kind']} | {p['bits']} / {p['bits_256']} | {p['a']['split']}: `{p['a']['path']}` | {p['a']['label']} | "
                  f"{p['b']['split']}: `{p['b']['path']}` | {p['b']['label']} |" for p in d["pairs"][:SHOW_PAIRS]]
        if len(d["pairs"]) > SHOW_PAIRS:
            lines.append(f"\n... and {len(d['pairs']) - SHOW_PAIRS} more pairs in {CARD_JSON}")
    ex = card.get("excluded") or {}
    lines += ["", "## Excluded by review", ""]
    lines += [f"{len(ex['rows'])} rows excluded (`--exclude {ex['file']}`): " + ", ".join(
        f"`{r['filename']}`" for r in ex["rows"][:SHOW_PAIRS])] if ex.get("file") else ["none (`--exclude FILE` takes a reviewed list)"]
    return "\n".join(lines) + "\n"


def write_card(card, out_dir, stage):
    write_text(json.dumps(card, indent=2, default=str), Path(out_dir) / CARD_JSON, stage)
    write_text(card_markdown(card), Path(out_dir) / CARD_MD, stage)


# --- the card in training's and evaluation's records ---------------------------------------------------
def card_record(meta_path):
    """What a run records of the protocol card beside an index file: its fingerprint, the split this file is,
    the rows per split, the (near) duplicates across splits; None when there is no card. A card whose row
    count for this file differs from the file is recorded as not matching."""
    path = Path(meta_path).parent / CARD_JSON
    card = read_json(path, "protocol card", default=[])  # a FIFO or JSON bomb beside an index: no card
    if not isinstance(card, dict) or "fingerprint" not in card:
        return None
    try:
        return _card_record(path, card, meta_path)
    except (KeyError, TypeError, AttributeError, ValueError):  # a card edited out of shape: no card, not a traceback
        return None


def _card_record(path, card, meta_path):
    split = next((s for s, name in (card.get("files") or {}).items() if name == Path(meta_path).name), None)
    try:
        df = pd.read_parquet(meta_path, columns=["filename"])
        rows, images_dir, recorded = int(len(df)), df.attrs.get("images_dir"), df.attrs.get("dataset_root")
    except Exception:  # noqa: BLE001
        rows, images_dir, recorded = None, None, None
    # Trust rule 1 for the page's thumbnails of the pairs: only images inside this index's dataset root (the
    # card is a JSON file anyone can edit; a path elsewhere on the disk is never read for the page).
    root = recorded if images_dir and recorded and recorded_root_fits(images_dir, recorded) else images_dir
    d = card.get("duplicates") or {}
    pairs = [p for p in d.get("pairs", []) if p.get("where") == "across" and p["a"]["split"] == "train"
             and p["b"]["split"] == split]
    shown = [p for p in pairs if root and all(inside(p[side]["path"], root) for side in ("a", "b"))]
    return {"card": str(path), "fingerprint": card["fingerprint"], "split": split, "rows": card.get("rows"),
            "matches": split is not None and rows == (card.get("rows") or {}).get(split),
            "across_splits": d.get("across_splits", {}), "bits": d.get("bits"), "action": d.get("action"),
            "excluded": len((card.get("excluded") or {}).get("rows") or []),
            "pairs_with_train": shown[:PAIRS_ON_PAGE], "pairs_with_train_total": len(pairs),
            "pairs_outside_root": len(pairs) - len(shown)}


def card_records(meta_paths):
    return [r for r in (card_record(p) for p in meta_paths) if r]


# --- the index's call --------------------------------------------------------------------------------
def protocol(fmt, root, parts, args, stage, out_dir):
    """The leakage guard on the splits and the protocol card staged beside the parquet files (make_index's
    one call). Returns (parts, possibly with later copies dropped, card, {path read: SHA-1 of its bytes})."""
    parts, excluded = exclude(parts, args.exclude)
    parts, duplicates, digests = guard(parts, args, stage)
    card = make_card(fmt, root, parts, duplicates, excluded,
                     written=datetime.now().astimezone().isoformat(timespec="seconds"))
    write_card(card, out_dir, stage)
    return parts, card, digests


YES = {"yes", "y", "1", "true", "x"}


def exclude(parts, path):
    """parts without the rows a reviewed list names (--exclude FILE.csv: a filename column, and a split column
    where one name is a row of several splits, e.g. 0.jpg of --root and of --val_root; with an exclude column,
    only the rows marked yes). Returns (parts, the card's "excluded" record)."""
    if not path:
        return parts, {"file": None, "rows": []}
    data = read_regular_text(path, "--exclude").encode()  # one read: parsed and fingerprinted
    try:
        listed = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001  any unreadable CSV is one line
        raise IndexError_(f"--exclude {path}: not a readable CSV ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if "filename" not in listed.columns:
        raise IndexError_(f"--exclude {path}: has no filename column (columns: {', '.join(listed.columns)})")
    if "exclude" in listed.columns:
        listed = listed[listed["exclude"].str.strip().str.casefold().isin(YES)]
    names = set(listed["filename"].str.strip())
    wanted = (set(zip(listed["split"].str.strip(), listed["filename"].str.strip())) if "split" in listed.columns
              else None)
    in_splits = {}
    for split, part in parts.items():
        for f in set(part["filename"].astype(str)) & names:
            in_splits.setdefault(f, []).append(split)
    twice = sorted(f for f, splits in in_splits.items() if len(splits) > 1)
    if twice and wanted is None:  # a wrong number with exit 0 otherwise: rows of the other split dropped too
        raise IndexError_(f"--exclude {path}: {twice[0]} names a row of {' and '.join(in_splits[twice[0]])} "
                          f"({len(twice)} such names); add a split column saying which")
    rows = []
    for split, part in parts.items():
        files = part["filename"].astype(str)
        gone = (files.map(lambda f: (split, f) in wanted) if wanted is not None else files.isin(names)).to_numpy(bool)
        rows += [{"split": split, "filename": f} for f in part["filename"][gone]]
        parts[split] = part[~gone].reset_index(drop=True)
    found = {r["filename"] for r in rows}
    return parts, {"file": str(path), "sha256": hashlib.sha256(data).hexdigest(),
                   "listed": len(names), "rows": rows, "not_in_index": sorted(names - found)[:50]}


def summary_line(card, out_dir):
    d = card["duplicates"]
    across = "; ".join(f"{n} image(s) of {k.split('-')[1]} with a (near) duplicate in {k.split('-')[0]}"
                       for k, n in d["across_splits"].items()) or "no (near) duplicate across splits"
    within = d["within_split_conflicting_labels"]
    return (f"leakage guard: {across}; {within} pair(s) within a split under different labels; {d['action']}"
            + (f" ({len(d['dropped'])} rows dropped)" if d["dropped"] else "")
            + (f"; {len(card['excluded']['rows'])} rows excluded by --exclude {card['excluded']['file']}"
               if card["excluded"].get("file") else "")
            + f"; protocol card: {Path(out_dir) / CARD_MD} (fingerprint {card['fingerprint'][:12]})")
