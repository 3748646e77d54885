"""The house rules of the code, checked from the source: scripts on top are thin and import no other
script, the library's imports point down the pipeline, the flag modules import nothing heavy, and a
constant lives in one place."""
import ast
import json
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = sorted(p for p in ROOT.glob("*.py"))
# The pipeline, bottom up: a module may import its own layer and the ones below it, never one above.
# fer.model.backbones is the table of backbone families, torch-free: the flag modules read it.
LAYERS = ["fer.constants", "fer.model.backbones", "fer.trust", "fer.cli", "fer.data", "fer.model", "fer.evaluation", "fer.training",
          "fer.inference", "fer.bench"]
# What a flag module (fer.cli.*) may import: scripts parse and check flags with them before torch loads.
LIGHT = ("fer.constants", "fer.trust", "fer.cli", "fer.model.backbones")
HEAVY = ("torch", "torchvision", "cv2", "albumentations", "pandas", "matplotlib", "sklearn", "scipy", "PIL", "numpy")


def imports(path):
    """Every module a file imports, at any depth (absolute names)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # from fer.data import faces
    return out


def module_name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def layer(name):
    """The layer of a module: that of the longest prefix in LAYERS (fer.model.backbones before fer.model)."""
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    return LAYERS.index(max(matches, key=len)) if matches else None


LIBRARY = sorted((ROOT / "fer").rglob("*.py"))


def test_the_top_level_holds_scripts_only():
    """Each top-level file is a command (a main() run by `python FILE`), and no script imports another."""
    stems = {p.stem for p in SCRIPTS}
    for path in SCRIPTS:
        tree = ast.parse(path.read_text())
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "main" in names and "__main__" in path.read_text(), f"{path.name} is not a script"
        assert not {m.split(".")[0] for m in imports(path)} & stems, f"{path.name} imports a script"


def test_scripts_are_thin():
    """A script parses its flags with fer.cli and calls the library: nothing else is defined in it."""
    for path in SCRIPTS:
        tree = ast.parse(path.read_text())
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defined == ["main"], f"{path.name} defines {defined}: move it into the fer package"


@pytest.mark.parametrize("path", LIBRARY, ids=module_name)
def test_library_imports_point_down(path):
    own = module_name(path)
    if own == "fer":
        return
    mine = layer(own)
    assert mine is not None, f"{own} is in no layer of LAYERS"
    for name in imports(path):
        theirs = layer(name)
        if name.startswith("fer") and theirs is None:
            raise AssertionError(f"{own} imports {name}, which is in no layer")
        assert theirs is None or theirs <= mine, f"{own} imports {name}, a later stage of the pipeline"
        assert not name.split(".")[0] in {p.stem for p in SCRIPTS}, f"{own} imports the script {name}"


@pytest.mark.parametrize("path", sorted((ROOT / "fer" / "cli").glob("*.py")), ids=module_name)
def test_flag_modules_import_nothing_heavy(path):
    for name in imports(path):
        assert name.split(".")[0] not in HEAVY, f"{module_name(path)} imports {name}"
        if name.startswith("fer"):
            assert name.startswith(LIGHT), f"{module_name(path)} imports {name}, which imports heavy modules"


CHECK = """
import importlib.util, io, json, sys
from contextlib import redirect_stderr, redirect_stdout
out = {}
for path in sys.argv[1:]:
    spec = importlib.util.spec_from_file_location("script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    codes = []
    for argv in (["--help"], ["--no_such_flag"]):
        with redirect_stdout(io.StringIO()) as o, redirect_stderr(io.StringIO()) as e:
            try:
                module.main(argv)
                codes.append(None)
            except SystemExit as x:
                codes.append(x.code)
        codes.append(o.getvalue() + e.getvalue())
    out[path] = codes
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(%r))
print(json.dumps({"scripts": out, "heavy": heavy}))
""" % (HEAVY,)


def test_every_script_answers_help_and_a_bad_flag_before_the_heavy_imports():
    """--help and a mistyped flag: answered by every script in one fresh interpreter, which has imported
    none of the heavy libraries afterwards."""
    r = subprocess.run([sys.executable, "-c", CHECK, *map(str, SCRIPTS)], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["heavy"] == []
    for path, (help_code, help_text, bad_code, bad_text) in result["scripts"].items():
        assert help_code == 0 and "usage:" in help_text, path
        # one line (argparse may name a missing required flag first), exit 2, no traceback
        assert bad_code == 2 and bad_text.count("\n") == 1 and "error:" in bad_text and "Traceback" not in bad_text, path


def test_each_constant_is_defined_once():
    """The class names, the ImageNet normalisation and the face margin are spelled out in fer/constants.py
    and nowhere else in the code."""
    spelled = {'"Neutral", "Happy", "Sad"': "CLASS_NAMES", "0.485, 0.456, 0.406": "IMAGENET_MEAN",
               "0.229, 0.224, 0.225": "IMAGENET_STD"}
    for path in SCRIPTS + LIBRARY:
        text = path.read_text()
        for literal, name in spelled.items():
            if path != ROOT / "fer" / "constants.py":
                assert literal not in text, f"{path.relative_to(ROOT)} spells out {name}: import it from fer.constants"
