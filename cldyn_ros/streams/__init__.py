"""ROS-free stream handling.

Image messages, pairing, the latest-pair worker and the closed-loop strength control.
"""
