"""`seg-perception replay BAG`: publish a bag's camera topics into ROS 2 with rclpy, for live tests of seg_node.

Messages go out as the bag's own CDR bytes (`Publisher.publish(bytes)`), so header stamps and payloads are exactly
those recorded, and nothing is deserialized on the way. Timing follows the bag's log times divided by --rate.
No `ros2 bag` install is needed: the bag is read with `rosbags` (sqlite3 or mcap).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from seg_perception.bags import CAMERA_INFO, IMAGE_TYPES, BagReader
from seg_perception.errors import EvalError

DEFAULT_TYPES = IMAGE_TYPES + (CAMERA_INFO,)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", type=Path, help="bag folder (metadata.yaml + .db3/.mcap)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (2 = twice as fast)")
    p.add_argument("--loop", action="store_true", help="start over at the end (stamps repeat as recorded)")
    p.add_argument("--topics", nargs="+", metavar="TOPIC",
                   help="topics to publish (default: every Image, CompressedImage and CameraInfo topic)")
    p.add_argument("--topic-remap", nargs="+", default=[], metavar="FROM:=TO", help="publish FROM's messages on TO")
    p.add_argument("--qos", default="reliable", choices=("reliable", "best_effort"),
                   help="publisher reliability (a reliable publisher also serves best-effort subscribers)")
    p.add_argument("--depth", type=int, default=10, help="publisher queue depth")
    p.add_argument("--clock", action="store_true", help="also publish /clock from the log times (use_sim_time)")
    p.add_argument("--wait-subscribers", type=float, default=0.0, metavar="SECONDS",
                   help="before playing, wait up to this long for a subscriber on any played topic")
    p.add_argument("--wait-for-all-acked", type=float, default=5.0, metavar="SECONDS",
                   help="after playing, wait up to this long for reliable subscribers to acknowledge every message "
                        "(as `ros2 bag play --wait-for-all-acked`; 0: exit at once, dropping what is in flight)")


def _remaps(entries: list[str]) -> dict[str, str]:
    out = {}
    for entry in entries:
        src, sep, dst = entry.partition(":=")
        if not sep or not src or not dst:
            raise EvalError(f"--topic-remap entry '{entry}' is not FROM:=TO")
        out[src] = dst
    return out


def _message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image."""
    package, _, name = msgtype.rpartition("/")
    try:
        return getattr(importlib.import_module(package.replace("/", ".")), name)
    except (ImportError, AttributeError) as exc:
        raise EvalError(f"message type {msgtype} is not installed for rclpy: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    try:
        if args.rate <= 0:
            raise EvalError("--rate must be positive")
        remaps = _remaps(args.topic_remap)
        with BagReader(args.bag) as reader:
            if args.topics:
                topics = {t: reader.topic(t) for t in args.topics}
            else:
                topics = {t: m for t, m in reader.topics.items() if m in DEFAULT_TYPES}
            if not topics:
                raise EvalError(f"bag '{args.bag}' has no Image, CompressedImage or CameraInfo topic; "
                                f"its topics: {', '.join(sorted(reader.topics)) or 'none'}")
            unknown = sorted(set(remaps) - set(topics))
            if unknown:
                raise EvalError(f"--topic-remap names topics that are not played: {unknown}")
            return _play(args, reader, topics, remaps)
    except EvalError as exc:
        print(f"seg-perception replay: error: {exc}", file=sys.stderr)
        return 2


def _play(args: argparse.Namespace, reader: BagReader, topics: dict[str, str], remaps: dict[str, str]) -> int:
    import rclpy
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    rclpy.init(args=[])  # our own argv holds FROM:=TO remaps, which rcl would take for its own deprecated syntax
    node = rclpy.create_node("seg_replay")
    try:
        qos = QoSProfile(depth=args.depth, reliability=ReliabilityPolicy.RELIABLE if args.qos == "reliable"
                         else ReliabilityPolicy.BEST_EFFORT)
        publishers = {t: node.create_publisher(_message_class(m), remaps.get(t, t), qos) for t, m in topics.items()}
        clock = None
        if args.clock:
            from rosgraph_msgs.msg import Clock

            clock, clock_pub = Clock(), node.create_publisher(Clock, "/clock", 10)
        _wait_for_subscribers(args.wait_subscribers, publishers)
        log = node.get_logger()
        log.info(f"playing {args.bag} at {args.rate}x: " + ", ".join(f"{t} -> {remaps.get(t, t)}" for t in topics))
        sent = 0
        while True:
            t0 = w0 = None
            for conn, log_ns, raw in reader.raw_messages(topics):
                if t0 is None:
                    t0, w0 = log_ns, time.perf_counter()
                delay = w0 + (log_ns - t0) / 1e9 / args.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                if not rclpy.ok():  # SIGINT / SIGTERM: rclpy's handler shut the context down
                    break
                if clock is not None:
                    clock.clock.sec, clock.clock.nanosec = divmod(log_ns, 1_000_000_000)
                    clock_pub.publish(clock)
                publishers[conn.topic].publish(bytes(raw))
                sent += 1
            if not args.loop or sent == 0 or not rclpy.ok():
                break
        if args.qos == "reliable" and args.wait_for_all_acked > 0 and rclpy.ok():
            # exiting destroys the publishers' histories: a slow subscriber would lose what it has not acked yet
            deadline = time.monotonic() + args.wait_for_all_acked
            for pub in publishers.values():
                pub.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
        print(f"published {sent} messages", flush=True)  # after a signal the rosout logger is gone
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _wait_for_subscribers(seconds: float, publishers: dict, settle: float = 1.0) -> None:
    """Until every played topic has a subscriber, or some have (a ground-truth topic may never get one) and the
    matches have stopped changing for `settle` seconds: on a busy machine a node's second subscription
    (camera_info) is discovered well after its first."""
    deadline = time.monotonic() + seconds
    last, since = None, 0.0
    while time.monotonic() < deadline:
        counts = [p.get_subscription_count() for p in publishers.values()]
        now = time.monotonic()
        if all(counts):
            return
        if counts != last:
            last, since = counts, now
        elif any(counts) and now - since >= settle:
            return
        time.sleep(0.05)
