"""``IPython.display`` inside the container, where IPython is not installed.

Users type ``from IPython.display import display, HTML, Markdown, Image``;
in an image without IPython that import is served from here (see
``hooks.provide``), with the handful of classes teaching notebooks use. Each
object only has ``_repr_*_`` methods, so it goes through the same bundle
code as any other object. Where IPython is installed, the real module is
used and its ``display`` functions are pointed at the worker instead (an
IPython without a running shell would only print reprs).
"""

import json
import os

_worker = None  # set by install()


def display(*objs, **kwargs):
    """Show objects beneath the cell (rich reprs honoured)."""
    return _worker.display(*objs, **kwargs)


def update_display(obj, *, display_id, **kwargs):
    """Replace what an earlier ``display(..., display_id=...)`` showed."""
    kwargs["update"] = True
    return _worker.display(obj, display_id=display_id, **kwargs)


def clear_output(wait=False):
    """Clear this cell's output (with ``wait``, when new output arrives)."""
    _worker.clear_output(wait)


class DisplayHandle:
    """What ``display(obj, display_id=True)`` returns: update it later."""

    def __init__(self, display_id=None):
        if not display_id:
            import uuid
            display_id = uuid.uuid4().hex
        self.display_id = display_id

    def __repr__(self):
        return "<DisplayHandle display_id=%s>" % self.display_id

    def display(self, obj, **kwargs):
        display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs):
        update_display(obj, display_id=self.display_id, **kwargs)


class DisplayObject:
    """Data given directly, or read from a file; shown through one repr method."""

    binary = False

    def __init__(self, data=None, url=None, filename=None, metadata=None):
        if data is not None and isinstance(data, str) and filename is None and url is None:
            if (len(data) < 4096 and not data.lstrip().startswith("<")
                    and "\n" not in data and os.path.isfile(data)):
                filename, data = data, None
        self.data = data
        self.url = url
        self.filename = filename
        self.metadata = metadata or {}
        if filename is not None and data is None:
            with open(filename, "rb" if self.binary else "r") as f:
                self.data = f.read()

    def __repr__(self):
        return "<%s.%s object>" % ("IPython.core.display", type(self).__name__)


class TextDisplayObject(DisplayObject):
    pass


class Pretty(TextDisplayObject):
    def __repr__(self):
        return str(self.data)


class HTML(TextDisplayObject):
    def _repr_html_(self):
        return self.data


class Markdown(TextDisplayObject):
    def _repr_markdown_(self):
        return self.data


class Latex(TextDisplayObject):
    def _repr_latex_(self):
        return self.data


class Math(TextDisplayObject):
    def _repr_latex_(self):
        text = str(self.data).strip("$")
        return "$\\displaystyle %s$" % text


class SVG(DisplayObject):
    def _repr_svg_(self):
        data = self.data
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


class JSON(DisplayObject):
    def __init__(self, data=None, url=None, filename=None, expanded=False, metadata=None,
                 root="root", **kwargs):
        super().__init__(data, url, filename, metadata)
        if isinstance(self.data, str) and filename is not None:
            self.data = json.loads(self.data)
        self.metadata.update({"expanded": expanded, "root": root})

    def _repr_json_(self):
        return self.data, self.metadata


class Javascript(TextDisplayObject):
    """Kept so code runs; the notebook never executes a container's JavaScript."""

    def __init__(self, data=None, url=None, filename=None, lib=None, css=None):
        super().__init__(data, url, filename)

    def _repr_javascript_(self):
        return self.data


_IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg",
                "gif": "image/gif", "webp": "image/webp"}


def _sniff(data):
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class Image(DisplayObject):
    binary = True

    def __init__(self, data=None, url=None, filename=None, format=None, embed=None,
                 width=None, height=None, retina=False, unconfined=False, metadata=None,
                 alt=None):
        if isinstance(data, str) and data.startswith(("http://", "https://")) and url is None:
            url, data = data, None
        if isinstance(data, str) and filename is None and url is None:
            filename, data = data, None
        self.embed = embed if embed is not None else url is None
        if url is not None and filename is None and data is None:
            self.data, self.url, self.filename, self.metadata = None, url, None, metadata or {}
        else:
            super().__init__(data, None, filename, metadata)
        if format is None and filename:
            format = os.path.splitext(filename)[1].lstrip(".").lower() or None
        if format is None and isinstance(self.data, bytes):
            format = _sniff(self.data)
        self.format = (format or "png").lower()
        self.width, self.height, self.alt = width, height, alt

    def _size_meta(self):
        meta = {}
        for key in ("width", "height", "alt"):
            if getattr(self, key) is not None:
                meta[key] = getattr(self, key)
        meta.update(self.metadata)
        return meta

    def _repr_mimebundle_(self, include=None, exclude=None):
        if not self.embed or self.data is None:
            size = "".join(' %s="%s"' % (k, v) for k, v in (("width", self.width),
                                                           ("height", self.height))
                           if v is not None)
            return {"text/html": '<img src="%s"%s/>' % (self.url, size)}, {}
        mime = _IMAGE_TYPES.get(self.format, "image/" + self.format)
        data = self.data if isinstance(self.data, bytes) else bytes(self.data)
        meta = self._size_meta()
        import base64
        return ({mime: base64.b64encode(data).decode("ascii")},
                {mime: meta} if meta else {})


def get_ipython():
    """There is no IPython shell in the container."""
    return None


EXPORTS = ("display", "update_display", "clear_output", "DisplayHandle", "DisplayObject",
           "TextDisplayObject", "Pretty", "HTML", "Markdown", "Latex", "Math", "SVG",
           "JSON", "Javascript", "Image")


def _fill_display(module):
    for name in EXPORTS:
        setattr(module, name, globals()[name])
    module.__all__ = list(EXPORTS)
    module.__doc__ = "FiddleDock's stand-in for IPython.display (IPython is not installed)."


def _fill_package(module):
    module.get_ipython = get_ipython
    module.__doc__ = "FiddleDock's stand-in for IPython (not installed in this image)."
    module.version_info = (0, 0, 0, "fiddledock-shim")
    module.__version__ = "0.0.0+fiddledock-shim"


def _fill_core(module):
    module.__doc__ = "FiddleDock's stand-in for IPython.core."


def publish_display_data(data, metadata=None, source=None, *, transient=None, **kwargs):
    """A raw MIME bundle, as IPython's function of that name publishes it."""
    display_id = (transient or {}).get("display_id")
    _worker.display(data, raw=True, metadata=metadata, display_id=display_id,
                    update=bool(kwargs.get("update")))


def _point_at_worker(module):
    """The real IPython's display functions, routed to the worker."""
    for name, fn in (("display", display), ("update_display", update_display),
                     ("clear_output", clear_output),
                     ("publish_display_data", publish_display_data)):
        if hasattr(module, name):
            setattr(module, name, fn)


def install(worker, hooks):
    global _worker
    _worker = worker
    hooks.provide("IPython", _fill_package, package=True)
    hooks.provide("IPython.core", _fill_core, package=True)
    hooks.provide("IPython.display", _fill_display)
    hooks.provide("IPython.core.display", _fill_display)
    # Real IPython: display_functions (IPython >= 7.23) or core.display (older)
    # define display(); IPython.display re-exports it when imported after them.
    for name in ("IPython.core.display_functions", "IPython.core.display", "IPython.display"):
        hooks.after_import(name, _point_at_worker)
