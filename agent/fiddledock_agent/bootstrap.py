# Receives the agent's sources over stdin and starts it.
#
# The client runs this file's text as `python3 -c <text>`, so an image needs
# nothing but a Python 3.8+: the agent arrives as source (a read-only root
# filesystem takes no files). Until a `boot` frame comes, any other frame is
# answered with `need_boot`. Framing: see protocol.py.
import json, os, struct, sys, types


def _read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data


def _boot():
    while True:
        hlen, plen = struct.unpack(">II", _read(8))
        header = json.loads(_read(hlen).decode("utf-8"))
        payload = _read(plen)
        if header.get("type") == "boot":
            break
        reply = json.dumps({"type": "need_boot", "to": header.get("from")}).encode()
        os.write(1, struct.pack(">II", len(reply), 0) + reply)
    sources = json.loads(payload.decode("utf-8"))
    package = types.ModuleType("fiddledock_agent")
    package.__path__ = []
    sys.modules["fiddledock_agent"] = package
    for name in header["modules"]:
        full = "fiddledock_agent." + name
        module = types.ModuleType(full)
        module.__file__ = "<fiddledock_agent/%s.py>" % name
        sys.modules[full] = module
        setattr(package, name, module)
        exec(compile(sources[name], module.__file__, "exec"), module.__dict__)
    sys.modules["fiddledock_agent.supervisor"].main(header)


if __name__ == "__main__":
    _boot()
