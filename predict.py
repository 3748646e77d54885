"""Predict expression and valence/arousal for images, folders and videos: every face, tracked over time.

    python predict.py --checkpoint FER_resnet50.pth photo.jpg faces/ clip.mp4 --out predictions.csv
    python predict.py --checkpoint FER_resnet50.pth group.jpg class.mp4 --detect_faces --smooth 0.3 --annotate ann/

Preprocessing is exactly eval_resnet50.py's, so the probabilities match its --save_predictions.
The model expects face crops (as in AffectNet); for wider pictures use --detect_faces, which finds
every face with MTCNN (its weights ship with facenet-pytorch; nothing is downloaded) and warps each
onto the checkpoint's crop_template by its five landmarks, so the crop is framed like the training
images (FER_face.py; --align box, --detector haar for the older crop and detector). In videos,
faces are linked into tracks (see FER_track.py for the rule) and each video
gets a per-track summary CSV and a timeline plot beside --out.

Decoding and detection run in a thread that feeds the model batches through a bounded queue.
Outputs are written only when the whole run succeeded, and replace earlier files all at once.
"""
from fer.cli import run_main
from fer.cli.predict import get_args


def main(argv=None):
    args = get_args(argv, __doc__)
    from fer.inference.predict import run_prediction  # the heavy imports, once the flags and paths are checked

    return run_prediction(args)


if __name__ == "__main__":
    run_main(main)
