"""Camera bytes -> RGB: every accepted encoding against pixels packed by hand, byte by byte.

A 2x4 image of known colours is written in each encoding's byte order (sensor_msgs/image_encodings: `yuv422`
is UYVY, `yuv422_yuy2` is YUYV), and the decoder must give back those colours, so a channel swap or the other
YUV byte order fails.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from seg_perception.core.image_codec import RAW_ENCODINGS, ImageDecodeError, ImageDecoder

H, W = 2, 4
RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]],
                [[200, 100, 50], [1, 2, 3], [0, 0, 0], [255, 255, 255]]], np.uint8)


def packed(order: str, rgb: np.ndarray = RGB) -> bytes:
    """rgb packed with channels in `order` ('bgra': B, G, R, then alpha 77), row after row."""
    source = {"r": rgb[..., 0], "g": rgb[..., 1], "b": rgb[..., 2], "a": np.full(rgb.shape[:2], 77, np.uint8)}
    return np.stack([source[c] for c in order], axis=-1).tobytes()


@pytest.mark.parametrize("encoding, order", [("rgb8", "rgb"), ("8UC3", "rgb"), ("bgr8", "bgr"), ("rgba8", "rgba"),
                                             ("bgra8", "bgra")])
def test_colour_encodings_give_back_the_packed_colours(encoding, order):
    data = packed(order)
    got = ImageDecoder().decode_raw(data, encoding, H, W, W * len(order))
    assert got.shape == (H, W, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_grey_encodings_fill_all_three_channels(encoding):
    grey = np.array([[0, 1, 128, 255], [7, 70, 170, 250]], np.uint8)
    got = ImageDecoder().decode_raw(grey.tobytes(), encoding, H, W, W)
    np.testing.assert_array_equal(got, np.repeat(grey[..., None], 3, axis=2))


def test_row_padding_is_skipped():
    for encoding, order in (("rgb8", "rgb"), ("bgr8", "bgr")):
        rows = np.frombuffer(packed(order), np.uint8).reshape(H, W * 3)
        padded = np.concatenate([rows, np.full((H, 5), 99, np.uint8)], axis=1)  # 5 junk bytes ending each row
        np.testing.assert_array_equal(ImageDecoder().decode_raw(padded.tobytes(), encoding, H, W, W * 3 + 5), RGB)


def test_rgb8_is_a_view_of_the_message_bytes():
    data = bytearray(packed("rgb"))
    got = ImageDecoder().decode_raw(data, "rgb8", H, W, W * 3)
    data[0] = 7
    assert got[0, 0, 0] == 7  # no copy was made


# Y, U, V of each horizontal pixel pair: two lumas share one chroma sample.
LUMA = np.array([[50, 200, 120, 235], [16, 81, 145, 180]], np.uint8)
CHROMA = np.array([[[90, 170], [128, 128]], [[240, 110], [60, 60]]], np.uint8)  # [row, pair, (U, V)]


def bt601_video_range(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB from YUV 4:2:2 as camera drivers (and OpenCV) define it: ITU-R BT.601, luma 16..235."""
    c, d, e = y - 16.0, u - 128.0, v - 128.0
    rgb = np.stack([1.164 * c + 1.596 * e, 1.164 * c - 0.392 * d - 0.813 * e, 1.164 * c + 2.017 * d], axis=-1)
    return np.clip(np.round(rgb), 0, 255)


def yuv422_bytes(order: str) -> bytes:
    """LUMA and CHROMA packed per pixel pair as 'uyvy' (U Y0 V Y1) or 'yuyv' (Y0 U Y1 V)."""
    y0, y1 = LUMA[:, 0::2], LUMA[:, 1::2]
    u, v = CHROMA[..., 0], CHROMA[..., 1]
    quads = {"uyvy": (u, y0, v, y1), "yuyv": (y0, u, y1, v)}[order]
    return np.stack(quads, axis=-1).tobytes()


@pytest.mark.parametrize("encoding, order", [("yuv422", "uyvy"), ("uyvy", "uyvy"), ("yuv422_yuy2", "yuyv"),
                                             ("yuyv", "yuyv")])
def test_yuv422_byte_orders(encoding, order):
    u = np.repeat(CHROMA[..., 0], 2, axis=1).astype(float)
    v = np.repeat(CHROMA[..., 1], 2, axis=1).astype(float)
    want = bt601_video_range(LUMA.astype(float), u, v)
    got = ImageDecoder().decode_raw(yuv422_bytes(order), encoding, H, W, W * 2)
    assert got.shape == (H, W, 3)
    assert np.abs(got.astype(int) - want).max() <= 2, f"{encoding}: got\n{got}\nwant\n{want}"
    assert (got[0, 2:] == got[0, 2:, :1]).all()  # the pair with U = V = 128 is grey


def test_compressed_png_gives_back_the_pixels_in_rgb_order():
    png = cv2.imencode(".png", RGB[..., ::-1])[1].tobytes()  # OpenCV writes BGR
    np.testing.assert_array_equal(ImageDecoder().decode_compressed(png, "rgb8; png compressed bgr8"), RGB)


def test_every_accepted_encoding_is_tested_here():
    """An encoding added to the decoder needs its hand-packed case above."""
    assert set(RAW_ENCODINGS) <= {"rgb8", "8UC3", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "yuv422", "uyvy",
                                  "yuv422_yuy2", "yuyv"}


@pytest.mark.parametrize("args, message", [
    ((b"\0" * 24, "32FC1", H, W, W * 4), "unsupported encoding '32FC1'"),
    ((b"", "rgb8", 0, W, W * 3), "empty image"),
    ((b"\0" * 24, "rgb8", H, W, W * 2), "step 8 is smaller"),
    ((b"\0" * 23, "rgb8", H, W, W * 3), "data holds 23 bytes"),
])
def test_bad_fields_are_named(args, message):
    with pytest.raises(ImageDecodeError, match=message):
        ImageDecoder().decode_raw(*args)
