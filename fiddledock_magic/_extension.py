"""Loading the extension into an IPython shell (idempotent)."""

from ._config import DockerRun
from ._manager import InstanceManager
from ._magics import DockerRunMagics
from ._panel_model import close_model_of

_STATE = "_fiddledock_state"
# Each instance holds one socket to the engine: room for thousands. Not the hard
# limit itself when that is huge: programs the kernel starts inherit the limit,
# and some close every possible descriptor when they start.
OPEN_FILES = 65536


def raise_open_files_limit():
    """The soft limit on open descriptors up to OPEN_FILES (the hard limit permitting)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):  # Windows; a limit this process may not change
        pass


def load_ipython_extension(shell):
    if getattr(shell, _STATE, None) is not None:
        return
    raise_open_files_limit()
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
