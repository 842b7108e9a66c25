#!/usr/bin/python3
# A hostile FiddleDock agent, for tests/test_untrusted_output.py: installed as
# /usr/local/bin/python3 in a test image, so every `python3 ...` the notebook
# side starts runs this instead (with the image's real /usr/bin/python3),
# whatever its arguments. It serves the frame protocol on its own stdin and
# stdout, answers hello like a real agent, then misbehaves as the cell's first
# line asks. Used as the container's main process (frames over the attached
# stdin/stdout) or exec'd once per client; a main process whose stdin is
# closed sleeps instead of exiting.
import contextlib, io, json, os, struct, sys, time

VERSION = None  # the protocol version, written in when the image is built


def out(header, payload=b""):
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    view = memoryview(struct.pack(">II", len(head), len(payload)) + head + payload)
    while view:
        view = view[os.write(1, view):]


class In:
    buf = b""


def read(n):
    while len(In.buf) < n:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            sys.exit(0)
        In.buf += chunk
    data, In.buf = In.buf[:n], In.buf[n:]
    return data


def run_cell(to, cid, source):
    def ev(header, payload=b""):
        header = dict(header)
        header.setdefault("to", to)
        header.setdefault("id", cid)
        out(header, payload)

    def display(text, **control):
        data = text.encode()
        meta = {"fiddledock": control} if control else {}
        ev({"type": "display", "parts": [["text/plain", len(data)]], "metadata": meta}, data)

    attack = source.split("\n", 1)[0].strip()
    if attack == "#flood-after-done":  # ends the cell, then floods the idle kernel
        ev({"type": "done", "status": "ok"})
        while True:
            ev({"type": "stream", "name": "stdout"}, b"between cells " * 4096)
    elif attack == "#stream-flood":
        while True:
            ev({"type": "stream", "name": "stdout"}, b"x" * 65536)
    elif attack == "#display-flood":
        while True:
            display("flood")
    elif attack == "#notice-flood":
        while True:
            ev({"type": "notice", "text": "forged notice"})
    elif attack == "#junk-flood":
        while True:
            ev({"type": "no-such-event"}, b"j" * 1024)
    elif attack == "#huge-header":
        out(json.dumps({"type": "stream", "name": "stdout", "to": to, "id": cid,
                        "pad": "x" * (16 << 20)}).encode(), b"forged")
    elif attack == "#deep-json":
        out(("{\"type\": \"display\", \"to\": %s, \"id\": %d, \"parts\": [], \"metadata\": {\"a\": "
             % (json.dumps(to), cid)).encode() + b"[" * 200000 + b"]" * 200000 + b"}}")
    elif attack == "#garbage":
        os.write(1, b"\xff" * 64)
    elif attack == "#stream-name-list":
        ev({"type": "stream", "name": ["stdout"]}, b"forged")
    elif attack == "#parts-not-list":
        ev({"type": "display", "parts": {"text/plain": 6}, "metadata": {}}, b"forged")
    elif attack == "#metadata-not-dict":
        ev({"type": "display", "parts": [["text/plain", 6]], "metadata": ["x"]}, b"forged")
    elif attack == "#parts-lie":
        ev({"type": "display", "parts": [["text/plain", 1000]], "metadata": {}}, b"forged")
    elif attack == "#traceback-not-list":
        ev({"type": "done", "status": "error",
            "error": {"ename": "E", "evalue": "v", "traceback": "forged"}})
    elif attack == "#traceback-numbers":
        ev({"type": "done", "status": "error", "error": {"ename": "E", "evalue": "v",
                                                         "traceback": [1, 2]}})
    elif attack == "#ename-number":
        ev({"type": "done", "status": "error", "error": {"ename": 42, "evalue": "v",
                                                         "traceback": ["forged"]}})
    elif attack == "#id-list":
        ev({"type": "stream", "name": "stdout", "id": [cid]}, b"forged")
    elif attack == "#bad-status":
        ev({"type": "done", "status": ["ok"]})
    elif attack == "#forged-done":
        ev({"type": "done", "status": "ok", "id": cid + 1})  # another cell's: ignored
        ev({"type": "stream", "name": "stdout"}, b"after the forged done\n")
    elif attack == "#no-done":
        pass
    elif attack == "#update-other":
        display("hijacked", display_id="shared", update=True)
        ev({"type": "done", "status": "ok"})
    elif attack == "#odd-but-valid":
        head = ("{\"type\": \"display\", \"to\": %s, \"id\": %d, \"parts\": [[\"text/plain\", 2]],"
                " \"metadata\": {\"x\": NaN, \"y\": 1e999, \"s\": \"\\ud800\"}}"
                % (json.dumps(to), cid)).encode()
        out(head, b"ok")
        deep = b"[" * 100 + b"]" * 100
        ev({"type": "display", "parts": [["application/json", len(deep)], ["text/plain", 4]],
            "metadata": {}}, deep + b"deep")
        ev({"type": "notice", "text": "lone \ud800 surrogate"})
        ev({"type": "done", "status": "ok"})
    elif attack == "#big-png":
        png = b"\x89PNG\r\n\x1a\n" + bytes(5000000)
        ev({"type": "display", "parts": [["image/png", len(png)]], "metadata": {}}, png)
        ev({"type": "done", "status": "ok"})
    else:  # an ordinary cell: run it, as an agent would
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(source, "<cell>", "exec"), NAMESPACE)
        ev({"type": "stream", "name": "stdout"}, buf.getvalue().encode())
        ev({"type": "done", "status": "ok"})


NAMESPACE = {}


def main():
    first = os.read(0, 1 << 16)
    if not first:  # nobody talks to us on stdin: stay, as a container's main process
        while True:
            time.sleep(3600)
    In.buf = first
    while True:
        hlen, plen = struct.unpack(">II", read(8))
        header = json.loads(read(hlen))
        payload = read(plen)
        kind, to = header.get("type"), header.get("from")
        if kind in ("hello", "reset"):
            out({"type": "ready", "to": to, "version": VERSION, "busy": False, "worker": 2,
                 "notice": None})
        elif kind == "execute":
            run_cell(to, header.get("id"), payload.decode())
        elif kind == "shutdown":
            return


main()
