"""ROS-free stream handling.

The settings schema (:mod:`.settings`), the frame pipeline the node and bag evaluation run
(:mod:`.pipeline`), image messages, pairing, the latest-pair worker and the closed-loop
strength control.
"""
