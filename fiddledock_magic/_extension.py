"""Loading the extension into an IPython shell (idempotent)."""

from ._config import DockerRun
from ._manager import InstanceManager
from ._magics import DockerRunMagics
from ._panel_model import close_model_of

_STATE = "_fiddledock_state"


def load_ipython_extension(shell):
    if getattr(shell, _STATE, None) is not None:
        return
    config = DockerRun(parent=shell)
    shell.configurables.append(config)
    manager = InstanceManager(config)
    magics = DockerRunMagics(shell, manager)
    shell.register_magics(magics)
    setattr(shell, _STATE, (config, manager, magics))


def unload_ipython_extension(shell):
    state = getattr(shell, _STATE, None)
    if state is None:
        return
    config, manager, _ = state
    close_model_of(manager)  # its refresh thread and cell hook would outlive the manager
    manager.close()
    if config in shell.configurables:
        shell.configurables.remove(config)
    setattr(shell, _STATE, None)


def manager_of(shell):
    """The InstanceManager of a shell the extension is loaded in."""
    state = getattr(shell, _STATE, None)
    return state[1] if state else None
