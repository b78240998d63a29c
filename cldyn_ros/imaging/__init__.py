"""Image handling around the fusion network: no ROS and no torch needed.

- :mod:`~cldyn_ros.imaging.thermal`: robust, temporally smoothed normalisation of thermal frames.
- :mod:`~cldyn_ros.imaging.registration`: bring the thermal image onto the colour frame's grid.
- :mod:`~cldyn_ros.imaging.io`: reading/writing image files and pairing infrared/visible files.
- :mod:`~cldyn_ros.imaging.synthetic`: animated synthetic street scenes for demos and tests.
- :mod:`~cldyn_ros.imaging.contact_sheet`: titled image grids for reports.

Colour images are HxWx3 ``uint8`` RGB; thermal images are HxW ``uint8``/``uint16`` or float.
"""

from .contact_sheet import make_contact_sheet, save_contact_sheet
from .io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    PairListing,
    find_pairs,
    read_color,
    read_thermal,
    write_image,
)
from .registration import Registration
from .synthetic import CONDITIONS, SceneGenerator, SyntheticPair, generate_pairs, write_pairs
from .thermal import ThermalNormalizer

__all__ = [
    "CONDITIONS",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "PairListing",
    "Registration",
    "SceneGenerator",
    "SyntheticPair",
    "ThermalNormalizer",
    "find_pairs",
    "generate_pairs",
    "make_contact_sheet",
    "read_color",
    "read_thermal",
    "save_contact_sheet",
    "write_image",
    "write_pairs",
]
