"""Flood the fusion node's inputs from a process of its own (used by the overload test).

    python flood_publisher.py --rate 200 --seconds 5 --height 64 --width 80

Publishes a thermal (mono8) and a colour (rgb8) frame per tick with the same stamp, the
wall-clock time of sending, on thermal/image and rgb/image with sensor-data QoS (best effort,
depth 50). Running apart from the node under test keeps the flood's own Python work off the
node's interpreter lock, as with real cameras. Prints one JSON line: pairs sent, seconds,
the wall-clock start in ns, and whether both subscriptions were seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

# test/ (ros_helpers) and the repository root (this checkout's cldyn_ros, not an installed one)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]
from ros_helpers import NS, make_image, sample_frames  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=80)
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("test_flood_publisher")
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT)
    thermal_pub = node.create_publisher(Image, "thermal/image", qos)
    rgb_pub = node.create_publisher(Image, "rgb/image", qos)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and not (
        thermal_pub.get_subscription_count() and rgb_pub.get_subscription_count()
    ):
        time.sleep(0.05)
    connected = bool(thermal_pub.get_subscription_count() and rgb_pub.get_subscription_count())
    time.sleep(0.5)  # discovery of the reverse direction settles

    # Two messages reused with new stamps: the flood itself stays cheap.
    thermal, colour = sample_frames(args.height, args.width)
    t_msg = make_image(thermal, "mono8", 0, "thermal")
    c_msg = make_image(colour, "rgb8", 0, "cam")
    start_wall = time.time_ns()
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < args.seconds:
        stamp = time.time_ns()
        for msg in (t_msg, c_msg):
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, NS)
        thermal_pub.publish(t_msg)
        rgb_pub.publish(c_msg)
        n += 1
        delay = start + n / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"sent": n, "seconds": now - start, "start_wall_ns": start_wall,
                      "connected": connected}), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
