"""What a container may show in the notebook page.

HTML and JavaScript from a container are untrusted: a student's <script>
must not run with the teacher's Jupyter page privileges. JavaScript is
dropped; HTML and SVG go through a real sanitizer (nh3, the Rust ammonia
library) that keeps formatting and tables and removes scripts, event
handlers and javascript: URLs. Images and text pass unchanged.
"""

import nh3

DROPPED = ("application/javascript", "text/javascript",
           "application/vnd.jupyter.widget-view+json")
SANITIZED = ("text/html", "image/svg+xml")


def sanitize_html(html):
    return nh3.clean(html, url_schemes={"http", "https", "data", "mailto"})


def safe_bundle(data, metadata):
    """A copy of a MIME bundle that is safe to show in the notebook page."""
    out = {}
    for mime, value in data.items():
        if mime in DROPPED:
            continue
        if mime in SANITIZED:
            if not isinstance(value, str):
                continue
            value = sanitize_html(value)
        out[mime] = value
    if "text/plain" not in out:
        out["text/plain"] = str(data.get("text/plain", ""))
    return out, dict(metadata or {})
