"""The ROS 2 adapters, the only package that imports rclpy.

The fusion node, live replay through it, the live demo and the node benchmark.
"""
