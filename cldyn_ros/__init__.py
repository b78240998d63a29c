"""cldyn_ros: closed-loop dynamic infrared-visible image fusion (CLDyN) for ROS 2.

Layers, each usable without the ones above it:

- :mod:`cldyn_ros.model`: the network (pure PyTorch).
- :mod:`cldyn_ros.inference.engine`: device, precision, batching and timing around the model.
- :mod:`cldyn_ros.imaging`: thermal normalisation, registration, file I/O, synthetic scenes.
- :mod:`cldyn_ros.metrics`: no-reference fusion metrics in vectorised torch.
- Adapters: :mod:`cldyn_ros.cli` (``cldyn``) and the ROS 2 node.
"""

import os

# OpenMP threads that wait for work sleep instead of spinning. On a robot's small CPU
# shared with other processes, spinning threads hold the cores the other threads of the
# same parallel region need: with 2 threads on 2 busy cores every frame was several times
# slower than with 1 (docs/benchmarks.md, "Threads"). libgomp reads this once, when torch
# loads, so it must be set before the first torch import; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
