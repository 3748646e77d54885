"""Index a facial-expression dataset, in any of the common formats, into the same parquet files.

    --format affectnet      <root>/images/<name>.jpg + <root>/annotations/<name>_{exp,val,aro,lnd}.npy
    --format affectnet_csv  <root>/training.csv, validation.csv + <root>/Manually_Annotated_Images/...
    --format rafdb          <root>/EmoLabel/list_patition_label.txt + <root>/Image/aligned (or original)
    --format fer2013        <root>/fer2013.csv (pixels as text: written once as PNGs under --out_dir)
    --format ferplus        <root>/fer2013new.csv (ten votes per image) beside <root>/fer2013.csv
    --format folders        <root>/<class>/*.jpg, optionally under <root>/train/, val/ or test/
Without --format the layout of --root is recognised (AffectNet's .npy layout when nothing matches).

Writes metadata_all.parquet (every indexed row) and metadata_train.parquet / metadata_val.parquet
(+ metadata_test.parquet where the dataset has a third official split) with the same columns for every
format: filename (relative to the images folder recorded in the file), expression (int64: 0 Neutral,
1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt), valence, arousal (float64, NaN when
absent), landmarks (136 floats or null), source_label (the label as the dataset's files give it), and for
affectnet_csv the face box face_x, face_y, face_w, face_h. The split is the dataset's official one;
without one, scikit-learn's StratifiedShuffleSplit on the rows sorted by filename (same data, fraction and
seed: same split), with names that differ only in case or extension kept on one side.
Damaged input never stops the run: bad rows and files are skipped, counted and named in the summary.
"""
from fer.cli import run_main
from fer.cli.index import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.data.index import make_index  # the heavy imports, once the flags and paths are checked

    make_index(args)


if __name__ == "__main__":
    run_main(main)
