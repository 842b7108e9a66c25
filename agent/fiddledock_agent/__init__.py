"""The FiddleDock in-container agent (standard library only, Python 3.8+).

``bootstrap`` receives these modules over the container's stdin and starts
``supervisor.main``; ``supervisor`` owns the channel to the notebook and the
worker process; ``worker`` runs cells; ``display`` builds MIME bundles;
``hooks`` patches modules when user code imports them; ``shim`` stands in
for ``IPython.display``; ``mpl`` shows matplotlib figures; ``seccomp``
refuses io_uring to the cell; ``limits`` explains full writable folders;
``hints`` adds hints to errors (missing modules, ``!`` and ``%`` lines);
``usersite`` makes packages installed meanwhile importable.
"""

MODULES = ("protocol", "display", "hooks", "shim", "mpl", "seccomp", "limits", "hints",
           "usersite", "worker", "supervisor")
