"""Starting many instances at once: the pool fills side by side and serves a cell on
many new names; a name made meanwhile, an image gone meanwhile.

How fast is the bench's figure (bench/start.py); here, what a user sees.
"""

import re

import pytest

from conftest import CREATED, wait_for
from fiddledock_magic._errors import ImageNotFound, InstanceConflict
from fiddledock_magic._extension import manager_of
from fiddledock_magic._image import DEFAULT_IMAGE
from fiddledock_magic._spec import POOL_PREFIX, container_name, scope_id

SIX = ["many%d" % i for i in range(6)]


def pool_ids(client, scope):
    return {c.id for c in client.containers.list(
        all=True, filters={"label": "fiddledock.scope=%s" % scope_id(scope)})
        if c.name.startswith(POOL_PREFIX)}


def test_a_pool_of_six_serves_a_cell_on_six_new_names(own_scope, shell, line_magic,
                                                       docker_client, capsys):
    pool = manager_of(shell).pool
    assert line_magic("pool 6").startswith("pool: 0 ready of 6")
    # Filled side by side: more than one container starting at a time.
    def starting():
        found = re.search(r"\((\d+) starting\)", line_magic("pool"))
        return found is not None and int(found.group(1)) > 1
    wait_for(starting, "`%dockerrun pool` to show several containers starting at once", 60)
    assert pool.wait(120), pool.describe()
    ready = pool_ids(docker_client, own_scope)
    assert len(ready) == 6 and "pool: 6 ready of 6" in line_magic("pool")
    capsys.readouterr()
    shell.run_cell_magic("dockerrun", " ".join(SIX), "print('ready', 6 * 7)")
    out = capsys.readouterr().out
    for name in SIX:  # each instance's section shows its own output, from a pooled container
        assert re.search(r"^--- %s: ok \(\d+\.\d s\) ---\n(\[fiddledock\].*\n)*ready 42$" % name,
                         out, re.M), out
        taken = docker_client.api.inspect_container(container_name(name, own_scope))
        assert taken["Id"] in ready
    assert re.search(r"^6 instances: ok: ", out, re.M), out
    # Each is an instance now, usable with its state.
    capsys.readouterr()
    shell.run_cell_magic("dockerrun", SIX[3], "x = 5\nprint(x * 2)")
    assert capsys.readouterr().out == "10\n"
    assert [s.name for s in manager_of(shell).statuses()] == SIX
    assert line_magic("pool 0") == "pool emptied\n"


def test_a_name_made_while_a_cell_creates_it_is_not_made_twice(own_scope, shell, run):
    _, out, _ = run("seen = 'first'\nprint(seen)", "twice")
    assert out == "first\n"
    manager = manager_of(shell)
    # What a many-instance cell does for a name that was absent when it began.
    with pytest.raises(InstanceConflict, match="instance 'twice' already exists"):
        manager.create("twice", manager.default_spec(), _absent=True)
    _, out, err = run("print(seen)", "twice")  # the first one, untouched
    assert out == "first\n" and err == ""


def test_an_image_removed_since_the_last_create_is_named(own_scope, shell, run, docker_client,
                                                         unique_name):
    image = "fiddledock-test-alias-%s:1" % unique_name
    docker_client.api.tag(DEFAULT_IMAGE, image.split(":")[0], "1")
    try:
        _, out, _ = run("print('on the alias')", "alias1", "--image %s" % image)
        assert out == "on the alias\n"
    finally:
        docker_client.api.remove_image(image)
    # Within seconds of the image being found: it is gone now, and the create says so.
    manager = manager_of(shell)
    with pytest.raises(ImageNotFound) as caught:
        manager.create("alias2", manager.default_spec(image))
    assert str(caught.value) == ("image %r is not installed in Docker here; build or pull it "
                                 "first" % image)
    assert [s.name for s in manager.statuses()] == ["alias1"]
    _, out, err = run("print('still here')", "alias1")
    assert CREATED.sub("", err) == "" and out == "still here\n"
