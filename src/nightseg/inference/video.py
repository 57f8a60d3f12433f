"""Reading and writing videos frame by frame with OpenCV, in constant memory.

`read_frames` yields RGB uint8 frames one at a time; `open_video` reports the size, frame rate and
(approximate) frame count; `VideoWriter` writes RGB frames to an ``.mp4`` (``mp4v``) through a
temporary file that is renamed onto the destination only when the video is complete, so an interrupted
run never leaves a truncated video under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cv2
import numpy as np

from nightseg.core.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path: str | os.PathLike) -> bool:
    """Return whether `path` has a video file extension."""
    return str(path).lower().endswith(VIDEO_SUFFIXES)


@dataclass(frozen=True)
class VideoInfo:
    """Size (width, height), frames per second and the container's frame count (may be approximate)."""

    width: int
    height: int
    fps: float
    frames: int


def open_video(path: str | os.PathLike) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Return an opened capture and its `VideoInfo`; raise a UserError naming the file if it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise UserError(f"{path}: cannot open as a video (corrupt, or a codec OpenCV lacks); re-encode it as H.264 MP4")
    info = VideoInfo(
        int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0, max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))),
    )
    if info.width <= 0 or info.height <= 0:
        cap.release()
        raise UserError(f"{path}: video reports no frame size; is it corrupt?")
    return cap, info


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of the video at `path` as HxWx3 uint8 RGB arrays, one at a time.

    Raises a UserError naming the file if it cannot be opened or holds no decodable frame.
    """
    cap, _ = open_video(path)
    count = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    if count == 0:
        raise UserError(f"{path}: no decodable frames")


class VideoWriter:
    """Write RGB frames to `path` (``.mp4``, codec ``mp4v``); the file appears atomically on `close`.

    Use as a context manager: on an exception the partial temporary file is deleted.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.size = size  # (width, height)
        self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self._writer.isOpened():
            raise UserError(f"{self.path}: OpenCV cannot write an mp4v video here")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Append one HxWx3 uint8 RGB frame of the writer's size."""
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, the video is {self.size[0]}x{self.size[1]}")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and move it onto its final name; return that path."""
        self._writer.release()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        self._writer.release()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
