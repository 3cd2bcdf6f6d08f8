"""Camera bytes -> RGB uint8 HxWx3, for sensor_msgs/Image encodings and CompressedImage formats; and the way
back for compressed outputs (PNG or JPEG bytes, as compressed_image_transport sends them).

ROS-free: it takes the message fields, so rclpy messages (node) and rosbags messages (bag evaluation) share it.
rgb8 with a tight row stride is returned as a zero-copy view of the message buffer; every other encoding is
converted into a buffer reused across frames of the same size.
"""

from __future__ import annotations

import cv2
import numpy as np

# sensor_msgs/image_encodings names -> (channels, OpenCV conversion to RGB or None)
RAW_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, None),
    # ROS `yuv422` is UYVY byte order; `yuv422_yuy2` (and the common alias `yuyv`) is YUYV.
    "yuv422": (2, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, cv2.COLOR_YUV2RGB_YUYV),
    "yuyv": (2, cv2.COLOR_YUV2RGB_YUYV),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")


class ImageDecodeError(ValueError):
    """The message cannot be turned into an image; the text says which field is wrong."""


class ImageDecoder:
    """Decodes frames into a reused RGB buffer (re-allocated only when the camera size changes)."""

    def __init__(self) -> None:
        self._rgb: np.ndarray | None = None

    def _buffer(self, height: int, width: int) -> np.ndarray:
        if self._rgb is None or self._rgb.shape[:2] != (height, width):
            self._rgb = np.empty((height, width, 3), np.uint8)
        return self._rgb

    def decode_raw(self, data, encoding: str, height: int, width: int, step: int,
                   is_bigendian: int = 0) -> np.ndarray:
        spec = RAW_ENCODINGS.get(encoding)
        if spec is None:
            raise ImageDecodeError(
                f"unsupported encoding '{encoding}'; accepted: {', '.join(sorted(RAW_ENCODINGS))}")
        if height <= 0 or width <= 0:
            raise ImageDecodeError(f"empty image: {width}x{height}")
        channels, conversion = spec
        if step < width * channels:
            raise ImageDecodeError(
                f"step {step} is smaller than width*channels = {width}*{channels} for '{encoding}'")
        buf = np.frombuffer(data, np.uint8)
        if buf.size != step * height:
            raise ImageDecodeError(
                f"data holds {buf.size} bytes, expected step*height = {step}*{height} = {step * height}")
        rows = buf.reshape(height, step)[:, : width * channels]
        img = rows.reshape(height, width, channels) if channels > 1 else rows.reshape(height, width)
        if conversion is None and img.flags.c_contiguous:
            return img  # zero-copy view of the message bytes
        out = self._buffer(height, width)
        if conversion is None:  # rgb8 with row padding
            np.copyto(out, img)
        else:  # packed YUV 4:2:2 arrives as HxWx2, which is what OpenCV expects
            cv2.cvtColor(img, conversion, dst=out)
        return out

    def decode_compressed(self, data, fmt: str) -> np.ndarray:
        kind = fmt.split(";")[0].strip().lower()
        if kind not in COMPRESSED_FORMATS and not any(f in fmt.lower() for f in COMPRESSED_FORMATS):
            raise ImageDecodeError(f"unsupported compressed format '{fmt}'; accepted: jpeg, png")
        buf = np.frombuffer(data, np.uint8)
        if buf.size == 0:
            raise ImageDecodeError("compressed image has no bytes")
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ImageDecodeError(f"corrupt {kind} data ({buf.size} bytes): OpenCV could not decode it")
        out = self._buffer(*bgr.shape[:2])
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out)
        return out


class ImageEncoder:
    """uint8 RGB [h, w, 3] or mono [h, w] -> PNG or JPEG bytes; colour goes out as BGR, as OpenCV and
    compressed_image_transport write it (its CompressedImage format says so)."""

    def __init__(self, fmt: str, jpeg_quality: int = 90) -> None:
        if fmt not in ("png", "jpeg"):
            raise ValueError(f"compressed output format must be png or jpeg, got '{fmt}'")
        self.fmt = fmt
        self._ext = ".png" if fmt == "png" else ".jpg"
        # PNG level 1: a mask compresses well even at the fastest level, and encoding sits on the frame path.
        self._options = [cv2.IMWRITE_PNG_COMPRESSION, 1] if fmt == "png" else [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
        self._bgr: np.ndarray | None = None

    def encode(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 3:
            if self._bgr is None or self._bgr.shape != image.shape:
                self._bgr = np.empty_like(image)
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR, dst=self._bgr)
        ok, data = cv2.imencode(self._ext, image, self._options)
        if not ok:
            raise ValueError(f"OpenCV could not encode a {image.shape} image as {self.fmt}")
        return data
