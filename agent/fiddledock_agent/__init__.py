"""The FiddleDock in-container agent (standard library only, Python 3.8+).

``bootstrap`` receives these modules from the first client and starts
``supervisor.main``. The supervisor side: ``supervisor`` decides what each
request and each worker event does; ``clients`` keeps each client's channel;
``cell`` is the running cell's checked request; ``output`` queues its output;
``workers`` keeps one worker, ``processes`` forks it and sweeps leftovers;
``probes`` reads cgroup and /proc facts; ``notices`` and ``limits`` word what
the user is told; ``seccomp`` refuses io_uring to the cell. The worker side:
``worker`` runs cells; ``streams`` is its channel and sys.stdout/err/in;
``interrupts`` turns SIGINT into KeyboardInterrupt only in cell code;
``tracebacks`` draws a cell's exception; ``hints`` adds hints to it (missing
modules, ``!`` and ``%`` lines); ``usersite`` makes packages installed
meanwhile importable; ``display`` builds MIME bundles;
``hooks`` patches modules when user code imports them; ``shim`` stands in for
``IPython.display``; ``mpl`` shows matplotlib figures. ``protocol`` is shared
with the notebook side.
"""

MODULES = ("protocol", "probes", "notices", "display", "hooks", "shim", "mpl", "seccomp",
           "limits", "streams", "tracebacks", "hints", "usersite", "interrupts", "worker",
           "processes", "workers", "cell", "output", "clients", "supervisor")
