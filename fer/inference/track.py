"""Face tracks in videos: link face boxes across frames, smooth predictions along each track,
summarise and plot each track.

Works beside prediction, on predict.py's rows (one per face and frame): prediction never depends on it.

Tracking rule (IouTracker): in each analysed frame, the detected boxes are matched to the live
tracks by the overlap (IoU) with each track's last box, with the assignment that maximises the total
overlap (Hungarian method, scipy's linear_sum_assignment). A pair continues a track when its IoU is at
least min_iou; a track not matched for more than max_gap analysed frames in a row ends; every box
left over starts a new track. Ids count up from 0 per video, in order of appearance.
"""
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from fer.data.faces import iou

BOX = ["face_x", "face_y", "face_w", "face_h"]

VIDEO_KEYS = ["filename", "track_id"]


class IouTracker:
    """Online IoU tracker (see the module docstring); update() once per analysed frame."""

    def __init__(self, min_iou=0.3, max_gap=10):
        self.min_iou, self.max_gap = min_iou, max_gap
        self.boxes, self.missed = {}, {}  # live track id -> last box, analysed frames since it was seen
        self.next_id = 0

    def update(self, boxes):
        """Track ids for this frame's boxes (same order)."""
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        live = list(self.boxes)
        ids = [None] * len(boxes)
        if live and len(boxes):
            overlap = iou(boxes, [self.boxes[t] for t in live])
            for i, j in zip(*linear_sum_assignment(overlap, maximize=True)):
                if overlap[i, j] >= self.min_iou:
                    ids[i] = live[j]
        for t in live:
            self.missed[t] += 1
        for i, box in enumerate(boxes):
            if ids[i] is None:
                ids[i], self.next_id = self.next_id, self.next_id + 1
            self.boxes[ids[i]], self.missed[ids[i]] = box, 0
        for t in [t for t, m in self.missed.items() if m > self.max_gap]:
            del self.boxes[t], self.missed[t]
        return ids


def assign_tracks(df, min_iou=0.3, max_gap=10):
    """Add track_id to the predicted face rows of every video (rows with a frame number).

    Without face boxes (no --detect_faces) each frame is one face: track 0.
    """
    if "frame" not in df.columns:  # images only
        return df
    df["track_id"] = pd.array([pd.NA] * len(df), dtype="Int64")
    faces = df[df["frame"].notna() & df["expression"].notna()]
    if not all(c in df.columns for c in BOX):
        df.loc[faces.index, "track_id"] = 0
        return df
    # Every analysed frame goes through the tracker, those without a face too: they count towards the gap.
    for _, video in df[df["frame"].notna()].groupby("filename", sort=False):
        tracker = IouTracker(min_iou, max_gap)
        for _, frame in video.groupby("frame", sort=True):
            found = frame.loc[frame.index.intersection(faces.index)]
            ids = tracker.update(found[BOX].to_numpy(float))
            if len(found):
                df.loc[found.index, "track_id"] = ids
    return df


def prob_columns(class_names):
    return [f"prob_{n}" for n in class_names]


def smooth(df, alpha, class_names):
    """Add smooth_* columns: an exponential moving average along each track, in frame order,
    s_t = alpha * x_t + (1 - alpha) * s_(t-1), of the class probabilities and of valence/arousal;
    smooth_expression and smooth_confidence are the top class of the smoothed probabilities."""
    cols = prob_columns(class_names) + ["valence", "arousal"]
    tracked = df[df["track_id"].notna()].sort_values(["frame"], kind="stable")
    if tracked.empty:  # no face in any video: nothing to smooth, the columns stay empty
        return df.assign(smooth_expression=None, smooth_confidence=np.nan, **{f"smooth_{c}": np.nan for c in cols})
    smoothed = tracked.groupby(VIDEO_KEYS, sort=False)[cols].transform(
        lambda s: s.ewm(alpha=alpha, adjust=False).mean())
    probs = smoothed[prob_columns(class_names)].to_numpy()
    smoothed["smooth_expression"] = np.asarray(class_names, dtype=object)[probs.argmax(axis=1)] if len(probs) else []
    smoothed["smooth_confidence"] = probs.max(axis=1) if len(probs) else []
    smoothed = smoothed.rename(columns={c: f"smooth_{c}" for c in cols})
    order = ["smooth_expression", "smooth_confidence"] + [f"smooth_{c}" for c in cols]
    return df.join(smoothed[order])


def track_summary(video, class_names):
    """One row per track of one video's rows: when it was seen, its dominant expression and the
    mean/std (population) of valence and arousal, and the mean probability of each class. Computed
    from the raw per-frame predictions."""
    faces = video[video["track_id"].notna()]
    columns = ["track_id", "first_s", "last_s", "first_frame", "last_frame", "frames", "dominant_expression",
               "dominant_share", "valence_mean", "valence_std", "arousal_mean", "arousal_std",
               *[f"mean_{c}" for c in prob_columns(class_names)]]
    rows = []
    for track, t in faces.groupby("track_id", sort=True):
        counts = t["expression"].value_counts()
        rows.append([int(track), t["time_s"].min(), t["time_s"].max(), int(t["frame"].min()), int(t["frame"].max()),
                     len(t), counts.index[0], counts.iloc[0] / len(t), t["valence"].mean(), t["valence"].std(ddof=0),
                     t["arousal"].mean(), t["arousal"].std(ddof=0), *t[prob_columns(class_names)].mean()])
    return pd.DataFrame(rows, columns=columns)


def palette(n):
    """n distinct colours, the same for a class in every plot."""
    from matplotlib import colormaps

    return [colormaps["tab10" if n <= 10 else "tab20"](i % 20) for i in range(n)]


def plot_timeline(video, summary, class_names, path, title, max_tracks=8):
    """Per track: class probabilities stacked over time, and valence/arousal; smoothed values when the
    rows have them. The max_tracks longest tracks are drawn (all of them are in the summary CSV)."""
    from matplotlib.figure import Figure

    smoothed = "smooth_valence" in video.columns
    pre = "smooth_" if smoothed else ""
    shown = summary.nlargest(max_tracks, "frames").sort_values("track_id") if len(summary) else summary
    times = video.drop_duplicates("frame").set_index("frame")["time_s"].sort_index()
    n = max(len(shown), 1)
    fig = Figure(figsize=(10, 1.2 + 2.4 * n))
    axes = fig.subplots(2 * n, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1] * n, "hspace": 0.35})
    colors = palette(len(class_names))
    if shown.empty:
        axes[0].text(0.5, 0.5, "no face found", ha="center", va="center", transform=axes[0].transAxes)
    for k, (_, s) in enumerate(shown.iterrows()):
        # On the video's time axis: frames where the track was not seen stay empty (NaN).
        t = video[video["track_id"] == s["track_id"]].set_index("frame").reindex(times.index)
        ax, ax_va = axes[2 * k], axes[2 * k + 1]
        ax.stackplot(times.to_numpy(), t[[pre + c for c in prob_columns(class_names)]].to_numpy(float).T,
                     colors=colors, labels=class_names)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.set_title(f"track {s['track_id']}: {s['dominant_expression']} in {s['dominant_share']:.0%} of "
                     f"{s['frames']} frames ({s['first_s']:.1f}-{s['last_s']:.1f} s)", loc="left", fontsize=9)
        ax_va.plot(times.to_numpy(), t[pre + "valence"].to_numpy(float), color="tab:blue", label="valence")
        ax_va.plot(times.to_numpy(), t[pre + "arousal"].to_numpy(float), color="tab:red", label="arousal")
        ax_va.axhline(0, color="grey", lw=0.5)
        ax_va.set_ylim(-1.05, 1.05)
        ax_va.set_ylabel("V / A")
        if t[pre + "valence"].isna().all():
            ax_va.text(0.5, 0.5, "no valence/arousal (the checkpoint's head never trained)", ha="center",
                       va="center", transform=ax_va.transAxes, fontsize=8, color="grey")
    axes[-1].set_xlabel("time (s)")
    handles = axes[0].get_legend_handles_labels()[0] + (axes[1].get_legend_handles_labels()[0] if len(shown) else [])
    labels = (list(class_names) + ["valence", "arousal"]) if len(shown) else []
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 10), fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 1 - 0.25 / fig.get_figheight()))
    more = len(summary) - len(shown)
    title = title.replace("$", r"\$")  # a file name, not matplotlib mathtext ("a$^$b.mp4" would not parse)
    fig.suptitle(title + (" (smoothed)" if smoothed else "") + (f"; {more} shorter tracks only in the CSV" if more > 0
                                                                  else ""), y=1 - 0.02 / n)
    fig.savefig(path, dpi=80, bbox_inches="tight")
