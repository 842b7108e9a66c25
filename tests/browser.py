"""The browser harness: a real JupyterLab server and headless Chromium.

``LabServer`` runs JupyterLab on 127.0.0.1 with a fixed token in its own
temporary root (settings, workspaces and runtime files too, so nothing from
the machine's own Jupyter leaks in). ``Notebook`` drives one notebook in a
Playwright page: open it, run cells, read outputs. The fixtures below are
registered for every test by tests/conftest.py:

- ``lab_server`` (session): the running server; ``lab_server.root`` is its
  notebook folder, ``lab_server.notebook(name, cells)`` writes a notebook.
- ``chromium`` (session): a Playwright Browser on Debian's /usr/bin/chromium.
- ``lab_page``: a fresh page (own browser context) for one test; afterwards
  the kernels it started are shut down.

Typical use::

    lab_server.notebook("t.ipynb", ["print('hi')"])
    nb = Notebook(lab_page, lab_server, "t.ipynb").open()  # kernel idle
    nb.run(0)                                               # until "[1]"
    expect(nb.output(0)).to_contain_text("hi")

Everything waits explicitly with bounded timeouts; nothing sleeps blindly.
Under CI=true a missing browser, Playwright or JupyterLab is a failure, not a
skip. Playwright's own browser download is never used (it cannot work
offline); scripts/ensure-browser.sh installs Chromium.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import missing

CHROMIUM = os.environ.get("FIDDLEDOCK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TOKEN = "fiddledock-browser-test"
SERVER_START_TIMEOUT = 120   # s; a cold JupyterLab on a busy 2-core machine
PAGE_TIMEOUT = 90_000        # ms; first load of JupyterLab's bundles
KERNEL_TIMEOUT = 120_000     # ms; kernel start, or a cell that creates an instance
VIEWPORT = {"width": 1400, "height": 1000}

# No news, no update checks: no traffic leaves the machine, no toast covers the page.
_LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"checkForUpdates": False, "fetchNews": "false", "doNotDisturbMode": True},
}

_LAB_CONFIG = {"LabApp": {"news_url": None, "extension_manager": "readonly",
                          "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"},
               "ServerApp": {"terminals_enabled": False}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path, cells):
    """A notebook of code cells (strings), with the venv's python3 kernel."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


class LabServer:
    """JupyterLab on 127.0.0.1:<free port> with token TOKEN, rooted in ``base/notebooks``."""

    def __init__(self, base):
        self.base = Path(base)
        self.root = self.base / "notebooks"
        self.port = free_port()
        self.token = TOKEN
        self.log_path = self.base / "jupyterlab.log"
        self.process = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def lab_url(self, notebook, workspace=None):
        """The notebook in JupyterLab; a new ``workspace`` name restores no other tabs."""
        where = "lab/workspaces/%s" % workspace if workspace else "lab"
        return "%s/%s/tree/%s?token=%s" % (self.url, where, notebook, self.token)

    def api(self, method, path):
        """A call to the server's REST API; the decoded JSON answer (None if empty)."""
        request = urllib.request.Request("%s/api/%s" % (self.url, path), method=method,
                                         headers={"Authorization": "token " + self.token})
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def stop_kernels(self):
        """End every notebook session and its kernel (between tests)."""
        for session in self.api("GET", "sessions"):
            self.api("DELETE", "sessions/%s" % session["id"])

    def notebook(self, name, cells):
        """Write a notebook into the server's root; returns its path."""
        return write_notebook(self.root / name, cells)

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        settings = self.base / "lab-settings"
        for rel, values in _LAB_SETTINGS.items():
            target = settings / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values))
        config = self.base / "config"
        config.mkdir(exist_ok=True)
        (config / "jupyter_lab_config.json").write_text(json.dumps(_LAB_CONFIG))
        env = dict(os.environ)
        env.update({
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_RUNTIME_DIR": str(self.base / "runtime"),
            "JUPYTER_DATA_DIR": str(self.base / "data"),
            "IPYTHONDIR": str(self.base / "ipython"),
            "JUPYTER_PLATFORM_DIRS": "1",
        })
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", "--ServerApp.port=%d" % self.port,
               "--ServerApp.port_retries=0",
               "--IdentityProvider.token=%s" % self.token,
               "--ServerApp.root_dir=%s" % self.root,
               "--LabApp.user_settings_dir=%s" % settings,
               "--LabApp.workspaces_dir=%s" % (self.base / "workspaces")]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, cwd=str(self.root))
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("JupyterLab exited with %s:\n%s"
                                   % (self.process.returncode, self.log_tail()))
            try:
                with urllib.request.urlopen("%s/api/status?token=%s" % (self.url, self.token),
                                            timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("JupyterLab did not answer within %d s:\n%s"
                           % (SERVER_START_TIMEOUT, self.log_tail()))

    def log_tail(self, lines=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # jupyter shuts its kernels down on SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if getattr(self, "_log", None):
            self._log.close()


class Notebook:
    """One notebook open in JupyterLab in a Playwright page."""

    def __init__(self, page, server, name):
        self.page = page
        self.server = server
        self.name = name

    def open(self, sidebar=False):
        """Load JupyterLab on the notebook; wait for its kernel. The left
        sidebar (file browser) is collapsed unless ``sidebar``."""
        page = self.page
        # A workspace of its own: tabs a previous test left open are not restored.
        workspace = "test-%s" % uuid.uuid4().hex[:8]
        page.goto(self.server.lab_url(self.name, workspace), timeout=PAGE_TIMEOUT)
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=PAGE_TIMEOUT)
        if not sidebar:
            current = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
            if current.count():
                current.first.click()
        self.wait_idle()
        return self

    def cells(self):
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")

    def cell(self, index):
        return self.cells().nth(index)

    def output(self, index):
        """The output area of a cell (what appears beneath it)."""
        return self.cell(index).locator(".jp-OutputArea")

    def wait_idle(self, timeout=KERNEL_TIMEOUT):
        """Until the kernel is connected and idle (toolbar and status bar agree)."""
        from playwright.sync_api import expect
        self.page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
            timeout=timeout)
        expect(self.page.locator(".jp-StatusBar-TextItem",
                                 has_text=re.compile(r"\| Idle$")).first).to_be_visible(
            timeout=timeout)

    def run(self, index, wait=True, timeout=KERNEL_TIMEOUT):
        """Run cell ``index`` (Shift+Enter in its editor); wait until it has finished."""
        from playwright.sync_api import expect
        cell = self.cell(index)
        cell.scroll_into_view_if_needed(timeout=timeout)
        for attempt in range(3):
            cell.locator(".jp-InputArea-editor").click()
            self.page.keyboard.press("Shift+Enter")
            # "[*]" (queued or running) or "[n]" (done); "[ ]" means the key
            # press was lost (e.g. the kernel connection was still settling).
            try:
                expect(self.prompt(index)).to_have_text(re.compile(r"\[(\*|\d+)\]"),
                                                        timeout=10_000)
                break
            except AssertionError:
                if attempt == 2:
                    raise
        if wait:
            self.wait_cell_done(index, timeout)

    def prompt(self, index):
        return self.cell(index).locator(".jp-InputPrompt")

    def wait_cell_done(self, index, timeout=KERNEL_TIMEOUT):
        """Until the cell's prompt shows an execution count, e.g. [3]."""
        from playwright.sync_api import expect
        expect(self.prompt(index)).to_have_text(re.compile(r"\[\d+\]"), timeout=timeout)

    def screenshot(self, path, full_page=False, clip=None):
        """A PNG of the page (``clip``: {x, y, width, height} in CSS pixels)."""
        self.page.screenshot(path=str(path), full_page=full_page, clip=clip)
        return path


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        missing("JupyterLab is not installed (pip install -e '.[test]')")
    server = LabServer(tmp_path_factory.mktemp("jupyterlab"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright is not installed (pip install -e '.[test]')")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        missing("Chromium not found at %s; run scripts/ensure-browser.sh" % CHROMIUM)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                     headless=True)
        yield browser
        browser.close()


@pytest.fixture
def lab_page(chromium, lab_server, tmp_path):
    """A new page in its own context; its last state is kept as tmp_path/last-page.png.

    Afterwards the kernels it started are shut down, so tests do not pile them up.
    """
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    page = context.new_page()
    yield page
    try:
        page.screenshot(path=str(tmp_path / "last-page.png"))
    except Exception:
        pass  # the page may already be gone
    context.close()
    lab_server.stop_kernels()
