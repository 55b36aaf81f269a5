"""Compute reference face boxes with MediaPipe's own BlazeFace detector.

This is a standalone tool, not part of the ``deepfake_mlops`` package. Its output,
``tests/fixtures/mediapipe_boxes.json``, is what the project's PyTorch re-implementation
of BlazeFace is tested against.

It must run in its own virtual environment: mediapipe 0.10.21 needs numpy<2 and
protobuf<5, which clash with the project. mediapipe's declared dependencies jax, jaxlib,
sentencepiece and sounddevice are not needed by ``mp.solutions.face_detection``, so
mediapipe is installed with ``--no-deps`` plus the minimal set it imports. From the
project root::

    python3 -m venv /tmp/mpref
    /tmp/mpref/bin/pip install "numpy<2" "protobuf>=4.25.3,<5" absl-py "attrs>=19.1.0" \\
        "flatbuffers>=2.0" "opencv-contrib-python<4.12" "matplotlib<3.10" "av==13.1.0"
    /tmp/mpref/bin/pip install --no-deps mediapipe==0.10.21
    /tmp/mpref/bin/python tools/mediapipe_reference.py \\
        --data ../shared/datasets --out tests/fixtures/mediapipe_boxes.json

(``pip check`` will then complain about the missing jax/jaxlib/sentencepiece/sounddevice;
that is expected.) The PyAV version does not matter: h264 decoding is bit-exact.

For every video in ``VIDEOS`` three frames are taken, at indices ``round(i * (n - 1) / 2)``
for i = 0, 1, 2, where n is the number of frames a full PyAV decode yields. Each RGB frame
(no rotation applied) goes through both models, each a fresh ``FaceDetection`` so that
frames are processed independently:

* ``short``: ``model_selection=0`` (short range, 128x128 input),
* ``full``:  ``model_selection=1`` (full range, 192x192 input),

both with ``min_detection_confidence=0.5``. Every detection is recorded as MediaPipe
reports it, relative to the full frame: ``box`` = [xmin, ymin, width, height], ``score``,
and the six ``keypoints`` [x, y]. Floats are rounded to 5 decimals.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import av
import mediapipe as mp
import numpy as np

MEDIAPIPE_VERSION = "0.10.21"
MIN_CONFIDENCE = 0.5
FRAMES_PER_VIDEO = 3
DECIMALS = 5

# name -> (model_selection, tflite file inside the mediapipe package, expected sha256)
MODELS = {
    "short": (
        0,
        "modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    "full": (
        1,
        "modules/face_detection/face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    ),
}

# Paths relative to the datasets folder. Chosen to cover every FF++ source (youtube, actors,
# all six manipulation methods), every resolution from 640x480 to 1920x1080, and DFDC
# 1080p in both landscape and portrait (1080x1920) orientation.
VIDEOS = [
    "ffpp/original_sequences/youtube/c23/videos/519.mp4",  # 640x480
    "ffpp/original_sequences/youtube/c23/videos/183.mp4",  # 1280x720
    "ffpp/original_sequences/actors/c23/videos/09__walking_down_street_outside_angry.mp4",  # 1920x1080
    "ffpp/manipulated_sequences/Deepfakes/c23/videos/469_481.mp4",  # 854x480
    "ffpp/manipulated_sequences/Face2Face/c23/videos/750_743.mp4",  # 1920x1080
    "ffpp/manipulated_sequences/FaceShifter/c23/videos/878_866.mp4",  # 1280x720
    "ffpp/manipulated_sequences/FaceSwap/c23/videos/720_672.mp4",  # 656x480
    "ffpp/manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4",  # 1280x720
    "ffpp/manipulated_sequences/DeepFakeDetection/c23/videos/01_11__talking_against_wall__9229VVZ3.mp4",  # 1920x1080
    "dfdc/dfdc_sample_real/lynaeydofd.mp4",  # 1920x1080
    "dfdc/dfdc_train_part_10/widuwuoiur.mp4",  # 1920x1080
    "dfdc/dfdc_train_part_0/brtujopkby.mp4",  # 1080x1920 (portrait)
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_environment() -> None:
    """Fail loudly unless the installed mediapipe is the expected version with the expected models."""
    if mp.__version__ != MEDIAPIPE_VERSION:
        raise SystemExit(f"mediapipe {MEDIAPIPE_VERSION} required, found {mp.__version__}")
    package_dir = Path(mp.__file__).parent
    for name, (_, relative_path, expected) in MODELS.items():
        actual = sha256_of(package_dir / relative_path)
        if actual != expected:
            raise SystemExit(
                f"{name} model {relative_path}: sha256 {actual} != expected {expected}"
            )


def count_frames(path: Path) -> int:
    """Number of frames a full decode yields (stream.frames is only checked against it)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = stream.frames
        decoded = sum(1 for _ in container.decode(stream))
    if declared != decoded:
        log(f"  note: {path.name}: stream.frames={declared} but {decoded} frames decoded")
    return decoded


def wanted_indices(n_frames: int) -> list[int]:
    return [round(i * (n_frames - 1) / (FRAMES_PER_VIDEO - 1)) for i in range(FRAMES_PER_VIDEO)]


def read_frames(path: Path, wanted: list[int]) -> dict[int, np.ndarray]:
    """Decode every frame in presentation order and keep the wanted ones as HxWx3 uint8 RGB."""
    frames = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames[index] = frame.to_ndarray(format="rgb24")
    missing = set(wanted) - set(frames)
    if missing:
        raise SystemExit(f"{path}: frames {sorted(missing)} not decoded")
    return frames


def rounded(value: float) -> float:
    return round(float(value), DECIMALS)


def detect(model_selection: int, rgb: np.ndarray) -> list[dict]:
    """Run one MediaPipe face detector on one frame; a fresh graph keeps frames independent."""
    with mp.solutions.face_detection.FaceDetection(
        model_selection=model_selection, min_detection_confidence=MIN_CONFIDENCE
    ) as detector:
        result = detector.process(rgb)
    detections = []
    for detection in result.detections or []:
        data = detection.location_data
        box = data.relative_bounding_box
        detections.append(
            {
                "box": [rounded(v) for v in (box.xmin, box.ymin, box.width, box.height)],
                "score": rounded(detection.score[0]),
                "keypoints": [[rounded(k.x), rounded(k.y)] for k in data.relative_keypoints],
            }
        )
    return detections


def process_video(data_dir: Path, relative: str) -> list[dict]:
    path = data_dir / relative
    if not path.is_file():
        raise SystemExit(f"missing video: {path}")
    n_frames = count_frames(path)
    wanted = wanted_indices(n_frames)
    records = []
    for index, rgb in sorted(read_frames(path, wanted).items()):
        height, width = rgb.shape[:2]
        record = {
            "video": relative,
            "frame_index": index,
            "n_frames": n_frames,
            "width": width,
            "height": height,
        }
        for name, (model_selection, _, _) in MODELS.items():
            record[name] = detect(model_selection, rgb)
        log(
            f"  frame {index:4d}/{n_frames} {width}x{height}: "
            + ", ".join(f"{name} {len(record[name])}" for name in MODELS)
        )
        records.append(record)
    return records


def to_json(result: dict) -> str:
    """Pretty but compact: one line per frame header and one line per detection."""

    def flat(obj) -> str:
        return json.dumps(obj, separators=(", ", ": "))

    header = {k: v for k, v in result.items() if k != "frames"}
    lines = ["{"] + [f"  {flat(k)}: {flat(v)}," for k, v in header.items()]
    lines.append('  "frames": [')
    for f_index, frame in enumerate(result["frames"]):
        meta = {k: v for k, v in frame.items() if k not in MODELS}
        lines.append("    " + flat(meta)[:-1] + ",")
        for m_index, name in enumerate(MODELS):
            detections = frame[name]
            closing = "}" if m_index == len(MODELS) - 1 else ","
            if not detections:
                lines.append(f"     {flat(name)}: []{closing}")
                continue
            lines.append(f"     {flat(name)}: [")
            lines += [
                f"      {flat(d)}{',' if d_index < len(detections) - 1 else ''}"
                for d_index, d in enumerate(detections)
            ]
            lines.append(f"     ]{closing}")
        if f_index < len(result["frames"]) - 1:
            lines[-1] += ","
    lines += ["  ]", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == result, "JSON formatting bug"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"),
                        help="datasets folder (default: ../shared/datasets)")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/mediapipe_boxes.json"),
                        help="output JSON (default: tests/fixtures/mediapipe_boxes.json)")
    args = parser.parse_args()

    check_environment()
    frames = []
    for relative in VIDEOS:
        log(relative)
        frames += process_video(args.data, relative)

    result = {
        "mediapipe_version": MEDIAPIPE_VERSION,
        "models": {name: {"tflite_sha256": sha} for name, (_, _, sha) in MODELS.items()},
        "min_confidence": MIN_CONFIDENCE,
        "frames": frames,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(result))
    log(f"wrote {len(frames)} frames to {args.out}")


if __name__ == "__main__":
    main()
