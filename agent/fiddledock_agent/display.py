"""MIME bundles for objects, the way IPython's display formatter builds them.

Only data leaves the container: every value in a bundle is a str, a
JSON-able object, or bytes for binary types (images, PDF). ``wire`` turns a
bundle into the raw parts of a ``display`` frame (see protocol.py).
Objects are asked through their ``_repr_*_`` methods (``_repr_mimebundle_``
first, then one method per type, as IPython does), plus formatters that
other agent modules register for types without such methods (matplotlib
figures). Nothing here imports a third-party library: pandas DataFrames are
tables because they have ``_repr_html_``.
"""

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
BINARY_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")
# Built-in containers are pretty-printed like IPython's text/plain (one item
# per line when long); anything else shows its own repr.
PRETTY_TYPES = (dict, list, tuple, set, frozenset)
PRETTY_WIDTH = 79
FORMATTERS = []  # callables obj -> {mime: value} or None; see register_formatter

_short_repr = reprlib.Repr()
_short_repr.maxstring = 200
_short_repr.maxother = 200


def register_formatter(fn):
    """Add fn(obj) -> partial bundle or None, asked after the repr methods."""
    FORMATTERS.append(fn)
    return fn


def short(obj):
    return _short_repr.repr(obj)


def plain(obj):
    """text/plain, as IPython would show it."""
    try:
        if type(obj) in PRETTY_TYPES or (isinstance(obj, PRETTY_TYPES)
                                         and type(obj).__repr__ in _BUILTIN_REPRS):
            text = repr(obj)
            if len(text) <= PRETTY_WIDTH and "..." not in text:
                return text  # what pprint gives for one that fits a line (and no recursion)
            # Imported here: pprint (with dataclasses and inspect) costs an idle worker ~2 MiB.
            import pprint
            return pprint.pformat(obj, width=PRETTY_WIDTH, sort_dicts=False)
        return repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the cell
        return "<%s object (repr failed: %s)>" % (type(obj).__name__, short(exc))


_BUILTIN_REPRS = tuple(t.__repr__ for t in PRETTY_TYPES)


def is_json_type(mime):
    return mime == "application/json" or mime.endswith("+json")


def normalise(mime, value):
    """A bundle value as str, JSON-able data or (binary types) bytes.

    Raises TypeError/ValueError if it cannot be.
    """
    if mime in BINARY_TYPES:
        if isinstance(value, str):  # base64 text, as IPython's own objects give
            import base64
            return base64.b64decode("".join(value.split()), validate=True)
        return bytes(value)
    if is_json_type(mime):
        if isinstance(value, (str, bytes)):  # IPython accepts JSON text too
            value = json.loads(value)
        json.dumps(value, allow_nan=False)  # must be strict JSON; raises otherwise
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise TypeError("%s data must be str, not %s" % (mime, type(value).__name__))
    return value


def wire(data):
    """``(parts, payload)`` of a bundle for a ``display``/``result`` frame."""
    parts, chunks = [], []
    for mime, value in data.items():
        if isinstance(value, bytes):
            raw = value
        elif is_json_type(mime):
            raw = json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")
        else:
            raw = value.encode("utf-8", "replace")
        parts.append([mime, len(raw)])
        chunks.append(raw)
    return parts, b"".join(chunks)


def _split(result):
    """A repr method may return data or (data, metadata)."""
    if isinstance(result, tuple) and len(result) == 2:
        return result
    return result, None


def _wanted(mime, include, exclude):
    if include and mime not in include:
        return False
    return not (exclude and mime in exclude)


def _report(on_error, obj, what, exc):
    if on_error is not None:
        on_error("%s of %s failed: %s: %s" % (what, type(obj).__name__,
                                              type(exc).__name__, short(str(exc))))


def bundle(obj, raw=False, include=None, exclude=None, on_error=None):
    """``(data, metadata)`` for obj; ``raw`` means obj already is a bundle.

    A repr method that raises is skipped (reported through ``on_error``),
    like IPython's formatters do, so one broken method never fails a cell.
    """
    data, metadata = {}, {}
    if raw:
        source = obj if isinstance(obj, dict) else {}
        for mime, value in source.items():
            try:
                data[str(mime)] = normalise(str(mime), value)
            except (TypeError, ValueError) as exc:
                _report(on_error, value, "display(raw=True) data for %s" % mime, exc)
        return data, metadata
    # A class is shown by its repr, never by calling its unbound repr methods.
    is_class = isinstance(obj, type)
    if not is_class and callable(getattr(type(obj), "_repr_mimebundle_", None)):
        try:
            try:
                result = obj._repr_mimebundle_(include=include, exclude=exclude)
            except TypeError:
                result = obj._repr_mimebundle_()
            got, meta = _split(result)
            for mime, value in (got or {}).items():
                if not _wanted(mime, include, exclude):
                    continue
                try:
                    data[mime] = normalise(mime, value)
                except (TypeError, ValueError) as exc:
                    _report(on_error, obj, "_repr_mimebundle_ data for %s" % mime, exc)
            if isinstance(meta, dict):
                metadata.update(meta)
        except Exception as exc:
            _report(on_error, obj, "_repr_mimebundle_", exc)
    for name, mime in REPR_METHODS if not is_class else ():
        if mime in data or not _wanted(mime, include, exclude):
            continue
        method = getattr(obj, name, None)
        if method is None or not callable(method):
            continue
        try:
            value, meta = _split(method())
            if value is None:
                continue
            data[mime] = normalise(mime, value)
        except NotImplementedError:
            continue
        except Exception as exc:
            _report(on_error, obj, name, exc)
            continue
        if meta:
            metadata[mime] = meta
    for formatter in FORMATTERS:
        try:
            extra = formatter(obj)
        except Exception as exc:
            _report(on_error, obj, "formatting", exc)
            continue
        for mime, value in (extra or {}).items():
            if mime not in data and _wanted(mime, include, exclude):
                data[mime] = normalise(mime, value)
    if "text/plain" not in data:
        data["text/plain"] = plain(obj)
    return data, metadata
