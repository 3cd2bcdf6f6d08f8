"""Camera bytes -> RGB uint8 HxWx3, for sensor_msgs/Image encodings and CompressedImage formats; and the way
back for compressed outputs (PNG or JPEG bytes, as compressed_image_transport sends them).

ROS-free: it takes the message fields, so rclpy messages (node) and rosbags messages (bag evaluation) share it.
rgb8 with a tight row stride is returned as a zero-copy view of the message buffer; every other encoding is
converted into a buffer reused across frames of the same size. A frame's size is checked against `max_pixels` from
the message fields or the PNG/JPEG header before anything is decoded, so a small file claiming a huge image costs
nothing.
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
MAX_PIXELS = 50_000_000  # default limit: well above 4K (8.3 MP) and 8K (33 MP)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...); C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageDecodeError(ValueError):
    """The message cannot be turned into an image; the text says which field is wrong."""


def check_pixels(height: int, width: int, max_pixels: int, what: str = "image",
                 error: type[ValueError] = ImageDecodeError) -> None:
    """Refuse an image of more than `max_pixels` from its claimed size alone, before anything is allocated for it;
    colour frames and depth images (`what`) are refused in the same words."""
    if height * width > max_pixels:
        raise error(f"{width}x{height} {what} is {height * width} pixels, more than max_input_pixels {max_pixels}")


def compressed_size(data: np.ndarray) -> tuple[int, int]:
    """(height, width) from the header of PNG or JPEG bytes (uint8, 1-D), without decoding; ImageDecodeError
    for anything else (OpenCV would decode any format it knows, whatever the message's `format` says)."""
    buf = memoryview(data)
    if bytes(buf[:8]) == _PNG_SIGNATURE and len(buf) >= 24 and bytes(buf[12:16]) == b"IHDR":
        return int.from_bytes(buf[20:24], "big"), int.from_bytes(buf[16:20], "big")
    if bytes(buf[:2]) == b"\xff\xd8":
        i = 2
        while i + 9 <= len(buf) and buf[i] == 0xFF:
            marker = buf[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in _JPEG_SOF:
                return int.from_bytes(buf[i + 5:i + 7], "big"), int.from_bytes(buf[i + 7:i + 9], "big")
            i += 2 + int.from_bytes(buf[i + 2:i + 4], "big")
        raise ImageDecodeError(f"corrupt jpeg data ({len(buf)} bytes): no frame header")
    raise ImageDecodeError(f"data ({len(buf)} bytes) is neither a PNG nor a JPEG")


class ImageDecoder:
    """Decodes frames into a reused RGB buffer (re-allocated only when the camera size changes); frames of more
    than `max_pixels` pixels are refused before decoding."""

    def __init__(self, max_pixels: int = MAX_PIXELS) -> None:
        self._rgb: np.ndarray | None = None
        self.max_pixels = max_pixels

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
        check_pixels(height, width, self.max_pixels)
        if channels == 2 and width % 2:
            raise ImageDecodeError(f"'{encoding}' packs two pixels in four bytes, so its width must be even, "
                                   f"got {width}")
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
        check_pixels(*compressed_size(buf), self.max_pixels)
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
