"""Tiny packages made by the tests themselves: a wheelhouse that needs no index.

``make_wheel`` writes a pure-Python wheel zip by hand (METADATA, WHEEL,
RECORD), ``make_sdist`` a source archive whose ``setup.py`` would leave a
marker file if anything ran it.
"""

import base64
import hashlib
import io
import os
import tarfile
import zipfile


def _record_hash(data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def make_wheel(folder, name, version, files, requires=(), compress=True):
    """A ``py3-none-any`` wheel of ``files`` ({path in site-packages: text or bytes}) in
    folder; its path."""
    dist = "%s-%s" % (name.replace("-", "_"), version)
    info = dist + ".dist-info"
    metadata = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)
    metadata += "".join("Requires-Dist: %s\n" % r for r in requires)
    contents = dict(files)
    contents[info + "/METADATA"] = metadata
    contents[info + "/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: fiddledock-tests\n"
                                 "Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = []
    path = os.path.join(str(folder), dist + "-py3-none-any.whl")
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as whl:
        for arcname, text in contents.items():
            data = text.encode("utf-8") if isinstance(text, str) else text
            whl.writestr(arcname, data)
            record.append("%s,%s,%d" % (arcname, _record_hash(data), len(data)))
        record.append(info + "/RECORD,,")
        whl.writestr(info + "/RECORD", "\n".join(record) + "\n")
    return path


def make_sdist(folder, name, version, marker):
    """A source archive ``name-version.tar.gz`` whose setup.py writes marker; its path."""
    top = "%s-%s" % (name, version)
    setup = ("import pathlib\npathlib.Path(%r).write_text('setup.py ran')\n"
             "from setuptools import setup\nsetup(name=%r, version=%r, py_modules=[%r])\n"
             % (str(marker), name, version, name.replace("-", "_")))
    members = {"setup.py": setup, "%s.py" % name.replace("-", "_"): "VALUE = 1\n",
               "PKG-INFO": "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)}
    path = os.path.join(str(folder), top + ".tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for arcname, text in members.items():
            data = text.encode("utf-8")
            member = tarfile.TarInfo("%s/%s" % (top, arcname))
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path
