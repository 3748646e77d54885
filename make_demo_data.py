"""Write a synthetic dataset in the layout of a real FER dataset, so the whole pipeline can run anywhere.

--format affectnet (default; what `make demo` uses):
    images/<n>.jpg
    annotations/<n>_exp.npy   class 0-7 as a numpy string array, like the real files ('3', dtype <U1)
    annotations/<n>_val.npy   valence in [-1, 1], string array ('-0.176846', dtype <U9)
    annotations/<n>_aro.npy   arousal in [-1, 1], string array
    annotations/<n>_lnd.npy   68 (x, y) landmarks as 136 floats, in pixels
--format affectnet_csv: training.csv, validation.csv (AffectNet's header, ';'-separated landmarks) and
    Manually_Annotated_Images/<sub>/<hash>.jpg: full photos with the face at the recorded box; extra
    rows coded 8 None, 9 Uncertain, 10 Non-Face (valence/arousal -2 for 9 and 10).
--format rafdb: EmoLabel/list_patition_label.txt ('train_00001.jpg 5', 'test_0001.jpg 7') and
    Image/aligned/train_00001_aligned.jpg (100x100 by default); RAF-DB's 7 classes.
--format fer2013: fer2013.csv (emotion,pixels,Usage: 48x48 grey pixels as text; Training / PublicTest /
    PrivateTest); FER2013's 7 classes.
--format ferplus: fer2013.csv and fer2013new.csv (Usage,Image name + ten vote counts per image), with
    some rows that have no majority, an 'unknown' majority, or no image name (not a face).
--format folders: train/<class>/<n>.jpg and val/<class>/<n>.jpg (angry, disgust, fear, happy, ...).

Faces are drawn procedurally. Each class has its own facial configuration (mouth curvature, mouth
opening and width, eye opening, brow height and slant, asymmetry), and valence/arousal are drawn
around per-class centres and then *drive* the features within the class (mouth curvature follows
valence, eye and mouth opening follow arousal), so a small network can learn both tasks.
An existing output folder is replaced only when the new dataset is complete, and only if this script
wrote it (or it is empty).
"""
from fer.cli import run_main
from fer.cli.demo import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.data.demo import make_demo  # the heavy imports, once the flags are checked

    make_demo(args)


if __name__ == "__main__":
    run_main(main)
