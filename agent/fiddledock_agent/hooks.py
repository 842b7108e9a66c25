"""Run code right after a module is imported, and stand in for missing modules.

The worker patches a few libraries the moment user code imports them
(``matplotlib.pyplot``'s ``show``, IPython's ``display``), instead of
importing them itself: a cell that never plots never pays for matplotlib,
and nothing is set through environment variables that child processes
would inherit. A ``sys.meta_path`` finder wraps the loader of the watched
module; after the module has executed, the callbacks run.

``provide`` serves a module from a factory when no other finder can find
it (the small ``IPython.display`` stand-in of ``shim``).

The finder and loaders are plain classes: the import system only calls
their methods, and ``importlib.abc`` would cost the worker ~2 MiB (it
imports ``importlib.resources``, ``pathlib``, ``tempfile``, ...).
"""

import importlib.machinery
import sys


class _Loader:
    """The real loader, then the callbacks."""

    def __init__(self, loader, callbacks):
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # Put the real loader back first, so the module looks untouched.
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        for callback in self._callbacks:
            try:
                callback(module)
            except Exception as exc:  # a failed patch must never fail the user's import
                sys.__stderr__.write("fiddledock: patching %s failed: %r\n"
                                     % (module.__name__, exc))

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _ShimLoader:
    def __init__(self, factory):
        self._factory = factory

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        self._factory(module)


class ImportHooks:
    def __init__(self):
        self.after = {}  # module name -> [callback(module)]
        self.fallbacks = {}  # module name -> factory(module), used when nothing else finds it

    def install(self):
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def after_import(self, name, callback):
        """callback(module) once ``name`` is imported (at once if it already is)."""
        module = sys.modules.get(name)
        if module is not None:
            callback(module)
            return
        self.after.setdefault(name, []).append(callback)

    def invalidate_caches(self):
        """What importlib.invalidate_caches() calls on every finder: nothing is cached here."""

    def provide(self, name, factory, package=False):
        """Serve ``name`` from factory(module) when it is not installed."""
        self.fallbacks[name] = (factory, package)

    def _find_elsewhere(self, name, path, target):
        for finder in sys.meta_path:
            if finder is self:
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                return spec
        return None

    def find_spec(self, name, path=None, target=None):
        if name not in self.after and name not in self.fallbacks:
            return None
        spec = self._find_elsewhere(name, path, target)
        if spec is None:
            if name in self.fallbacks:
                factory, package = self.fallbacks[name]
                return importlib.machinery.ModuleSpec(name, _ShimLoader(factory),
                                                      is_package=package)
            return None
        callbacks = self.after.pop(name, None)
        if callbacks and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, callbacks)
        elif callbacks:
            self.after[name] = callbacks
        return spec


HOOKS = ImportHooks()
