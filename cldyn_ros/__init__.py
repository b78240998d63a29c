"""cldyn_ros: closed-loop dynamic infrared-visible image fusion (CLDyN) for ROS 2.

Layers, each usable without the ones above it:

- :mod:`cldyn_ros.model`: the network (pure PyTorch).
- :mod:`cldyn_ros.inference.engine`: device, precision, batching and timing around the model.
- :mod:`cldyn_ros.imaging`: thermal normalisation, registration, file I/O, synthetic scenes.
- :mod:`cldyn_ros.metrics`: no-reference fusion metrics in vectorised torch.
- Adapters: :mod:`cldyn_ros.cli` (``cldyn``) and the ROS 2 node.
"""

__version__ = "0.1.0"
