"""MIME bundles for objects, the way IPython's display formatter builds them.

Only data leaves the container: every value in a bundle is a str or a
JSON-able object; binary images are base64 text, as in Jupyter messages.
"""

import base64
import json
import reprlib

# method name -> MIME type, in IPython's order of preference.
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
BINARY_TYPES = ("image/png", "image/jpeg", "application/pdf")
_short_repr = reprlib.Repr()
_short_repr.maxstring = 200
_short_repr.maxother = 200


def _plain(obj):
    try:
        return repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the cell
        return "<%s object (repr failed: %s)>" % (type(obj).__name__, _short_repr.repr(exc))


def _normalise(mime, value):
    """A bundle value as JSON-able data."""
    if mime in BINARY_TYPES:
        if isinstance(value, str):
            return value
        return base64.b64encode(bytes(value)).decode("ascii")
    if mime == "application/json" or mime.endswith("+json"):
        json.dumps(value)  # must be JSON-able; raises otherwise
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _split(result):
    """A repr method may return data or (data, metadata)."""
    if isinstance(result, tuple) and len(result) == 2:
        return result
    return result, None


def bundle(obj, raw=False):
    """``(data, metadata)`` for obj; ``raw`` means obj already is a bundle."""
    data, metadata = {}, {}
    if raw:
        source = obj if isinstance(obj, dict) else {}
        for mime, value in source.items():
            data[str(mime)] = _normalise(str(mime), value)
        return data, metadata
    method = getattr(type(obj), "_repr_mimebundle_", None)
    if method is not None:
        try:
            result = obj._repr_mimebundle_(include=None, exclude=None)
        except TypeError:
            result = obj._repr_mimebundle_()
        got, meta = _split(result)
        for mime, value in (got or {}).items():
            try:
                data[mime] = _normalise(mime, value)
            except (TypeError, ValueError):
                pass
        metadata.update(meta or {})
    for name, mime in REPR_METHODS:
        if mime in data:
            continue
        method = getattr(obj, name, None)
        if method is None or not callable(method):
            continue
        try:
            value, meta = _split(method())
        except NotImplementedError:
            continue
        if value is None:
            continue
        try:
            data[mime] = _normalise(mime, value)
        except (TypeError, ValueError):
            continue
        if meta:
            metadata[mime] = meta
    if "text/plain" not in data:
        data["text/plain"] = _plain(obj)
    return data, metadata
