"""The large families (ViT-B, Swin-T, ConvNeXt-S, EfficientNetV2-S) through every script: the same
end-to-end check as tests/test_families.py, in a file of its own so that pytest-xdist runs it beside
the other (they cost seconds per step even at 32 px)."""
import pytest
from test_families import LARGE, check_end_to_end


@pytest.mark.parametrize("arch", LARGE)
def test_large_family_end_to_end(demo, arch, tmp_path):
    check_end_to_end(arch, demo, tmp_path)
