"""fer/data/preview.py (FER_transform.py, the augmentation grid) and its flags (fer/cli/preview.py).

The hostile cases (from the trust passes) each failed on the code before their fix: they check the exit
code, the one line that names the file or flag (no traceback), and that earlier outputs are unchanged.
"""
import pytest
from builders import index_here, one_error_line, run_here, run_script

from fer.data import demo as make_demo_data


# --- the grid -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_transform_cli_grid(demo, tmp_path):
    r = run_script("FER_transform.py", "--meta", demo["train"], "--size", 32, "--n", 4, "--out", tmp_path / "g.png")
    assert r.returncode == 0, r.stderr
    assert "image (4, 3, 32, 32)" in r.stdout and (tmp_path / "g.png").stat().st_size > 1000


# --- found by trying the scripts as a hostile user ----------------------------------------------
def test_grid_needs_a_picture_format(demo, tmp_path):
    one_error_line(run_here("FER_transform.py", "--meta", demo["train"], "--out", tmp_path / "grid"), "--out", ".png")


# --- found by the hostile pass over indexing and datasets -----------------------------------------
def test_grid_size_has_training_bound(demo, tmp_path):
    """FER_transform.py --size 1000000 tried to allocate terabytes and ended in an OpenCV traceback;
    the side is bounded as training's --img_size is (32-4096)."""
    r = run_here("FER_transform.py", "--meta", demo["train"], "--out", tmp_path / "g.png", "--size", 10**6)
    assert r.returncode == 2
    one_error_line(r, "--size", "4096")


def test_a_root_without_the_indexs_images_is_named(demo, tmp_path):
    """--root at a folder that is not the dataset (a typo, the parent folder) was taken as is: training
    and the grid then stopped at the first image with 'file not found', naming no flag, after the model
    was built. Now the start says --root does not hold the index's images; a right --root still works."""
    (tmp_path / "elsewhere" / "images").mkdir(parents=True)
    r = run_here("FER_transform.py", "--meta", demo["val"], "--out", tmp_path / "g.png", "--size", 32, "--n", 2,
                 "--root", tmp_path / "elsewhere")
    one_error_line(r, "--root", "elsewhere", "not the images of")
    assert not (tmp_path / "g.png").exists()
    r = run_here("FER_transform.py", "--meta", demo["val"], "--out", tmp_path / "g.png", "--size", 32, "--n", 2,
                 "--root", demo["root"])
    assert r.returncode == 0 and (tmp_path / "g.png").is_file(), r.stderr


def test_the_grid_does_not_replace_a_dataset_image(tmp_path):
    """FER_transform.py --out images/0.jpg replaced that image of the dataset with the grid, exit 0."""
    data = make_demo_data.make_dataset(tmp_path / "d", n=40, size=32, progress=False)
    assert index_here(data, tmp_path / "idx").returncode == 0
    image = data / "images" / "0.jpg"
    before = image.read_bytes()
    r = run_here("FER_transform.py", "--meta", tmp_path / "idx" / "metadata_all.parquet", "--out", image,
                 "--size", 32, "--n", 2)
    line = one_error_line(r, "--out", "0.jpg")
    assert "images of --meta" in line or "is a dataset image" in line  # trust rule 2 (fer.trust.check_outputs)
    assert image.read_bytes() == before
