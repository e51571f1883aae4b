"""nbserve: the trainer side of nb-serve (see the repository README, "Switching from noisebase").

    import nbserve
    loader = nbserve.Loader("ipc:///run/nb-serve/control.sock")   # numpy; nbserve.torch / nbserve.lightning
    for batch in loader:                                           # one epoch, noisebase's keys
        ...

Only numpy and pyzmq are needed here; ``nbserve.torch`` needs PyTorch and ``nbserve.lightning`` Lightning.
"""

from ._config import ConfigMismatch
from ._protocol import Batch, BatchError, ProtocolError
from ._shm import LeaseLimit, ShmUnavailable
from ._transport import ControlClient, DaemonError, DaemonUnavailable, default_control
from .loader import Loader
from .projective import backproject_pixel_centers_np
from .sampler import SamplerState

__version__ = "0.2.0"

__all__ = ["Loader", "Batch", "LeaseLimit", "ShmUnavailable", "BatchError", "ProtocolError", "DaemonError", "DaemonUnavailable", "ConfigMismatch",
           "SamplerState", "ControlClient", "backproject_pixel_centers_np", "default_control", "__version__"]
