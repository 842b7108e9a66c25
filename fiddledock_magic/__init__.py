"""FiddleDock: run notebook cells in hardened Docker containers.

``%load_ext fiddledock_magic`` registers ``%%dockerrun`` and ``%dockerrun``.
The names below are the public Python API; everything else is private.
"""

from ._config import DockerRun
from ._errors import (AgentError, CellEnded, CellError, CellKilled, CellTimeout, EngineError,
                      EngineUnavailable, FiddleDockError, ImageBuildError, ImageNotFound,
                      InstanceBusy, InstanceConflict, InstanceLost, InstanceNotFound,
                      TransferError, UnsafeArchive)
from ._extension import load_ipython_extension, unload_ipython_extension

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "CellEnded",
    "CellError",
    "CellKilled",
    "CellTimeout",
    "DockerRun",
    "EngineError",
    "EngineUnavailable",
    "FiddleDockError",
    "ImageBuildError",
    "ImageNotFound",
    "InstanceBusy",
    "InstanceConflict",
    "InstanceLost",
    "InstanceNotFound",
    "TransferError",
    "UnsafeArchive",
    "load_ipython_extension",
    "unload_ipython_extension",
]
