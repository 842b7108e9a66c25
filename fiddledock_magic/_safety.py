"""What a container may show in the notebook page.

Everything a container sends is untrusted: a student's ``<script>`` must not
run with the teacher's Jupyter page privileges (it could read the page's
token and, through the kernel, reach the host). Output produced while a
notebook runs counts as *trusted* in Jupyter frontends, so they would not
sanitize it themselves; this module does, before anything is published.
See docs/SECURITY-HTML.md for the reasoning.

- Only an allow-list of MIME types passes; JavaScript, widget views and
  anything else a frontend would execute or hand to a plug-in are dropped.
- HTML goes through nh3 (the Rust ammonia sanitizer): formatting, tables
  and links stay; scripts, event handlers, forms, iframes, ``<style>``,
  CSS that could cover the page, and every automatic network request
  (remote images) go. Images may only be ``data:`` URLs.
- SVG is never put into the page as markup: it becomes an ``<img>`` whose
  source is a ``data:`` URL, where browsers run no script.
- Markdown cannot carry raw HTML (tag openers are escaped), remote images
  or ``javascript:`` links.
- Base64 images are checked to be base64; text and JSON pass unchanged.
"""

import base64
import binascii
import copy
import html
import re

import nh3

# MIME types a container may show; everything else is dropped.
PASSED = ("text/plain", "application/json")
IMAGES = ("image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf")
HTML = "text/html"
SVG = "image/svg+xml"
MARKDOWN = "text/markdown"
LATEX = "text/latex"
ALLOWED = PASSED + IMAGES + (HTML, SVG, MARKDOWN, LATEX)

TAGS = set(nh3.ALLOWED_TAGS) | {"tfoot"}
ATTRIBUTES = copy.deepcopy(nh3.ALLOWED_ATTRIBUTES)
ATTRIBUTES.setdefault("*", set()).update({"style", "title", "lang", "dir"})
ATTRIBUTES.setdefault("table", set()).update({"border", "cellpadding", "cellspacing", "width"})
for _cell in ("td", "th"):
    ATTRIBUTES.setdefault(_cell, set()).update({"valign", "width", "height", "nowrap"})
# pandas marks its tables; no other class names (they could borrow the page's styles).
CLASSES = {"table": {"dataframe"}}
# CSS properties kept in style="": text and box looks, nothing that positions,
# layers or transforms an element over the page, nothing that loads a URL.
STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "line-height", "letter-spacing", "word-spacing",
    "text-align", "text-decoration", "text-indent", "text-transform", "vertical-align",
    "white-space", "word-break", "overflow-wrap", "direction",
    "width", "height", "min-width", "max-width", "min-height", "max-height",
    "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
    "border", "border-top", "border-right", "border-bottom", "border-left",
    "border-color", "border-style", "border-width", "border-radius",
    "border-collapse", "border-spacing", "table-layout", "caption-side",
    "list-style-type", "display", "opacity",
}
_BAD_STYLE = re.compile(r"url\s*\(|expression|image-set|@import|\\|<|&", re.IGNORECASE)
_DATA_IMAGE = re.compile(r"^\s*data:image/(png|jpeg|gif|webp|svg\+xml|bmp);", re.IGNORECASE)
_LINK_ATTRS = {("a", "href"), ("area", "href")}
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]*$")


def _attribute_filter(tag, attr, value):
    if attr == "style":
        return None if _BAD_STYLE.search(value) else value
    if tag == "img" and attr == "src":
        # Only inline images: no request leaves the page on the container's behalf.
        return value if _DATA_IMAGE.match(value) else None
    if (tag, attr) in _LINK_ATTRS:
        return None if value.strip().lower().startswith("data:") else value
    if attr in ("cite", "longdesc", "action", "formaction", "background", "poster"):
        return None
    return value


def sanitize_html(text):
    """HTML that cannot run code, load anything, or cover the page."""
    return nh3.clean(
        text,
        tags=TAGS,
        clean_content_tags={"script", "style", "template", "noscript", "textarea", "title"},
        attributes=ATTRIBUTES,
        allowed_classes=CLASSES,
        filter_style_properties=STYLE_PROPERTIES,
        attribute_filter=_attribute_filter,
        url_schemes={"http", "https", "mailto", "data"},
        link_rel="noopener noreferrer nofollow",
    )


def svg_as_img(svg):
    """An <img> showing the SVG: as an image, an SVG's scripts never run."""
    if isinstance(svg, bytes):
        svg = svg.decode("utf-8", "replace")
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return '<img src="data:image/svg+xml;base64,%s" alt="SVG image">' % data


# --- markdown and LaTeX ---------------------------------------------------------
_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
_IMAGE_OPEN = re.compile(r"!\[")
_SCHEME_WORD = re.compile(r"(java|vb|live)(script)", re.IGNORECASE)
_NUMERIC_REF = re.compile(r"&#(?:[xX]([0-9a-fA-F]+)|([0-9]+));?")
_COLON_REF = re.compile(r"&colon;?", re.IGNORECASE)
_SPACE = re.compile(r"[\x00-\x20\\]+")
_DANGEROUS = re.compile(r"(javascript|vbscript|livescript):")


def _decode_once(text):
    def numeric(match):
        try:
            return chr(int(match.group(1), 16) if match.group(1) else int(match.group(2)))
        except (ValueError, OverflowError):
            return ""
    return html.unescape(_COLON_REF.sub(":", _NUMERIC_REF.sub(numeric, text)))


def has_script_url(text):
    """Whether text could become a javascript:-style URL once a renderer decodes it.

    Decodes character references until nothing changes (more eagerly than
    any renderer), drops what URL parsers and markdown ignore (ASCII
    whitespace, control characters, backslash escapes), then looks.
    """
    for _ in range(8):
        decoded = _decode_once(text)
        if decoded == text:
            break
        text = decoded
    return bool(_DANGEROUS.search(_SPACE.sub("", text).lower()))


def sanitize_markdown(text):
    """Markdown that renders to no raw HTML, no remote image, no script link; None if it cannot be."""
    text = _TAG_OPEN.sub("&lt;", text)
    text = _IMAGE_OPEN.sub("!\\[", text)  # an image would load its URL on its own
    if has_script_url(text):
        text = _SCHEME_WORD.sub("\\1\u200b\\2", text)  # invisible, and no longer a scheme
        if has_script_url(text):  # hidden behind character references: give up on it
            return None
    return text


# --- bundles ----------------------------------------------------------------------
def _is_base64(value):
    if not isinstance(value, str) or not _BASE64.match(value):
        return False
    try:
        base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def safe_bundle(data, metadata):
    """A copy of a MIME bundle that is safe to show in the notebook page."""
    out = {}
    for mime, value in data.items():
        if mime not in ALLOWED:
            continue
        if mime in IMAGES:
            if _is_base64(value):
                out[mime] = value
        elif mime == HTML:
            if isinstance(value, str):
                out[mime] = sanitize_html(value)
        elif mime == SVG:
            if isinstance(value, (str, bytes)) and HTML not in data:
                out[HTML] = svg_as_img(value)
        elif mime == MARKDOWN:
            if isinstance(value, str):
                clean = sanitize_markdown(value)
                if clean is not None:
                    out[mime] = clean
        elif mime == LATEX:
            if isinstance(value, str) and not has_script_url(value):
                out[mime] = value
        elif mime == "text/plain":
            out[mime] = value if isinstance(value, str) else str(value)
        else:
            out[mime] = value
    if "text/plain" not in out:
        out["text/plain"] = str(data.get("text/plain", ""))
    meta = {k: v for k, v in dict(metadata or {}).items()
            if k not in data or k in out}  # no metadata for dropped types
    return out, meta
