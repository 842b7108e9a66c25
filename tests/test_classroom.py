"""One cell for the whole class: %%dockerrun alice bob carol runs the cell in each
instance at once, each instance's output under its own header, then one summary
line; %dockerrun create a b c makes several at once. Through a real kernel and
the real engine."""

import re
import threading
import time

from conftest import ok, stream_text
from fiddledock_magic._magics import expand_lists


def sections(msgs):
    """{instance: final plain text of its section}, in the order the sections were made."""
    order, final = [], {}
    for _, m in msgs:
        if m["msg_type"] not in ("display_data", "update_display_data"):
            continue
        display_id = (m["content"].get("transient") or {}).get("display_id") or ""
        if not display_id.startswith("fiddledock-section-"):
            continue
        if m["msg_type"] == "display_data":
            order.append(display_id)
        final[display_id] = m["content"]["data"]
    out = {}
    for display_id in order:
        text = final[display_id]["text/plain"]
        name = re.match(r"--- ([\w.-]+): ", text).group(1)
        out[name] = text
    return out


def error_reply(reply, ename="InstancesFailed"):
    assert reply["status"] == "error", reply
    assert reply["ename"] == ename, reply
    assert len(reply["traceback"]) == 1, reply["traceback"]  # the summary, not a traceback
    return reply["evalue"]


CLASS_CELL = """%%dockerrun alice bob carol --timeout 3
import socket, time
me = socket.gethostname()
print("hello from", me)
if me == "bob":
    raise ValueError("bob's mistake")
if me == "carol":
    time.sleep(60)
print("done", me)"""


def test_each_instance_under_its_header_and_one_summary_line(kernel):
    reply, msgs = kernel.execute(CLASS_CELL, timeout=120)
    summary = error_reply(reply)
    assert re.fullmatch(r"3 instances: ok: alice \(\d+\.\d s\); failed: bob \(\d+\.\d s\); "
                        r"timed out: carol \(\d+\.\d s\)", summary), summary
    shown = sections(msgs)
    assert list(shown) == ["alice", "bob", "carol"]
    alice, bob, carol = shown["alice"], shown["bob"], shown["carol"]
    assert re.match(r"--- alice: ok \(\d+\.\d s\) ---", alice), alice
    assert "hello from alice" in alice and "done alice" in alice
    assert "bob" not in alice and "carol" not in alice
    # the error is bob's, named so, and nobody else's
    assert re.match(r"--- bob: failed \(\d+\.\d s\) ---", bob), bob
    assert "hello from bob" in bob and "done bob" not in bob
    assert "ValueError: bob's mistake" in bob
    assert re.search(r"Cell In\[\d+\] \(instance bob\), line 6", bob), bob
    assert "ValueError: bob" not in alice + carol
    # the timeout is carol's, with where it stopped
    assert re.match(r"--- carol: timed out \(\d+\.\d s\) ---", carol), carol
    assert "timed out after 3 s" in carol and "KeyboardInterrupt" in carol
    assert "(instance carol)" in carol
    # no output outside the sections: the summary is the cell's error
    assert stream_text(msgs) == "" and stream_text(msgs, "stderr") == ""
    html = [m["content"]["data"]["text/html"] for _, m in msgs
            if m["msg_type"] == "update_display_data"]
    assert any("bob: failed" in h and "ValueError" in h for h in html)

    # every instance is still usable, with its variables (carol's after its timeout)
    reply, msgs = kernel.execute("%%dockerrun alice bob carol\nprint('again', me)", timeout=60)
    ok(reply)
    shown = sections(msgs)
    for name in ("alice", "bob", "carol"):
        assert "again %s" % name in shown[name]
    assert re.fullmatch(r"3 instances: ok: alice \(\d+\.\d s\), bob \(\d+\.\d s\), "
                        r"carol \(\d+\.\d s\)\n", stream_text(msgs)), stream_text(msgs)
    # the last results the panel shows
    reply, msgs = kernel.execute(
        "from fiddledock_magic._extension import manager_of\n"
        "from fiddledock_magic._panel_model import model_for\n"
        "print(sorted((n, r['status']) for n, r in model_for(manager_of(get_ipython()))"
        ".results.items()))")
    assert stream_text(msgs).strip() == "[('alice', 'ok'), ('bob', 'ok'), ('carol', 'ok')]"


def test_a_single_name_keeps_the_one_instance_output(kernel):
    reply, msgs = kernel.execute("%%dockerrun solo\nprint('just me')", timeout=60)
    ok(reply)
    assert sections(msgs) == {}
    assert stream_text(msgs) == "just me\n"


def test_a_pattern_and_a_list_variable_name_many(kernel):
    reply, msgs = kernel.execute("%dockerrun create stu1 stu2 other", timeout=120)
    ok(reply)
    for code in ("students = ['stu1', 'other']", "more = ('stu2',)"):
        ok(kernel.execute(code)[0])
    cell = "\nimport socket\nprint('I am', socket.gethostname())"
    for line, names in (("%%dockerrun {students}", ["stu1", "other"]),
                        ("%%dockerrun $students", ["stu1", "other"]),
                        ("%%dockerrun stu*", ["stu1", "stu2"]),
                        ("%%dockerrun {more}", ["stu2"]),  # a list of one: still a section
                        ("%%dockerrun st?2 other stu2", ["stu2", "other"])):
        reply, msgs = kernel.execute(line + cell, timeout=60)
        ok(reply)
        shown = sections(msgs)
        assert list(shown) == names, (line, shown)
        for name in names:
            assert "I am %s" % name in shown[name]
    reply, msgs = kernel.execute("%%dockerrun zz*" + cell)
    assert reply["ename"] == "UsageError"
    assert reply["evalue"] == ("no instance of this notebook matches 'zz*' "
                               "(it has: other, stu1, stu2)")
    ok(kernel.execute("nobody = []")[0])
    reply, msgs = kernel.execute("%%dockerrun {nobody}" + cell)
    assert reply["evalue"] == "the list of instance names is empty"


def test_the_instances_run_at_the_same_time(kernel):
    ok(kernel.execute("%dockerrun create p1 p2 p3", timeout=120)[0])
    ok(kernel.execute("%%dockerrun p1 p2 p3\nprint('warm')", timeout=60)[0])
    started = time.monotonic()
    reply, msgs = kernel.execute("%%dockerrun p1 p2 p3\nimport time\ntime.sleep(3)", timeout=60)
    took = time.monotonic() - started
    ok(reply)
    assert took < 7, "three 3 s cells took %.1f s: not run side by side" % took
    assert stream_text(msgs).startswith("3 instances: ok: p1")


def test_input_is_asked_once_per_instance_named_by_its_prompt(kernel):
    asked = []

    def answer(content):
        asked.append(content["prompt"])
        return content["prompt"].split("]")[0].lstrip("[").upper()
    reply, msgs = kernel.execute("%%dockerrun in1 in2\nx = input('your name? ')\nprint('got', x)",
                                 timeout=120, allow_stdin=True, stdin_handler=answer)
    ok(reply)
    assert sorted(asked) == ["[in1] your name? ", "[in2] your name? "]
    shown = sections(msgs)
    assert "got IN1" in shown["in1"] and "got IN2" in shown["in2"]


def test_create_several_at_once_one_line_each(kernel, docker_client):
    reply, msgs = kernel.execute("%dockerrun create ca cb cc", timeout=120)
    ok(reply)
    lines = sorted(stream_text(msgs).splitlines())
    assert lines == ["created instance 'ca'", "created instance 'cb'", "created instance 'cc'"]
    # one that exists fails alone, the others are made
    reply, msgs = kernel.execute("%dockerrun create cc cd", timeout=120)
    assert error_reply(reply) == "1 of 2 instances not created: cc"
    assert stream_text(msgs) == "created instance 'cd'\n"
    assert "instance 'cc' was not created: instance 'cc' already exists" \
        in stream_text(msgs, "stderr")
    reply, msgs = kernel.execute("%%dockerrun ca cb cc cd\nprint('up')", timeout=60)
    ok(reply)
    assert stream_text(msgs).startswith("4 instances: ok: ca")


def test_a_bad_name_among_several_creates_nothing(kernels, docker_client):
    from fiddledock_magic._spec import scope_id
    kernel = kernels()
    reply, msgs = kernel.execute("%dockerrun create good1 'bad name' good2", timeout=60)
    assert reply["ename"] == "UsageError", reply
    assert "bad name" in reply["evalue"] and "\n" not in reply["evalue"], reply["evalue"]
    reply, msgs = kernel.execute("%dockerrun create twin twin")
    assert reply["evalue"] == "create names each instance once: twin given twice"
    reply, msgs = kernel.execute("%%dockerrun good1 'bad name'\nprint(1)")
    assert reply["ename"] == "UsageError", reply
    found = docker_client.containers.list(all=True, filters={
        "label": "fiddledock.scope=%s" % scope_id(kernel.scope)})
    assert found == []


def test_lists_in_the_line_become_names():
    assert expand_lists("['a', 'b'] --timeout 3") == ("a b --timeout 3", True)
    assert expand_lists("{'b', 'a'}") == ("a b", True)
    assert expand_lists("alice --timeout 3") == ("alice --timeout 3", False)
    assert expand_lists("[1, 2]") == ("[1, 2]", False)  # not names: left for the parser


def test_the_stop_button_interrupts_every_instance(kernel):
    ok(kernel.execute("%dockerrun create s1 s2", timeout=120)[0])
    seen = []
    stopper = threading.Thread(target=_interrupt_when_running, args=(kernel, seen))
    stopper.start()
    started = time.monotonic()
    reply, msgs = kernel.execute("%%dockerrun s1 s2\nimport time\nx = 1\ntime.sleep(120)\nx = 2",
                                 timeout=90, collect=seen)
    stopper.join()
    assert time.monotonic() - started < 60
    summary = error_reply(reply)
    assert re.fullmatch(r"2 instances: interrupted: s1 \(\d+\.\d s\), s2 \(\d+\.\d s\)",
                        summary), summary
    shown = sections(msgs)
    assert "KeyboardInterrupt" in shown["s1"] and "KeyboardInterrupt" in shown["s2"]
    # the namespaces are kept, and the instances run the next cell
    reply, msgs = kernel.execute("%%dockerrun s1 s2\nprint('x is', x)", timeout=60)
    ok(reply)
    assert "x is 1" in sections(msgs)["s1"] and "x is 1" in sections(msgs)["s2"]


def _interrupt_when_running(kernel, seen, wait=60):
    """The stop button, once both sections say 'running'."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        running = [m for _, m in list(seen) if m["msg_type"] == "update_display_data"
                   and ": running" in m["content"]["data"]["text/plain"]]
        if len({m["content"]["transient"]["display_id"] for m in running}) == 2:
            time.sleep(1)  # inside time.sleep(120) by now
            kernel.km.interrupt_kernel()
            return
        time.sleep(0.1)


def test_without_a_kernel_each_section_is_printed_when_its_instance_ends(shell, own_scope,
                                                                         capsys):
    capsys.readouterr()
    shell.run_cell_magic("dockerrun", "tt1 tt2", "import socket\nprint('on', socket.gethostname())")
    out = capsys.readouterr().out
    assert out.count("--- tt") == 2 and "on tt1" in out and "on tt2" in out, out
    assert re.search(r"\n2 instances: ok: tt1 \(\d+\.\d s\), tt2 \(\d+\.\d s\)\n$", out), out


def test_rich_output_stays_in_its_section_and_runs_no_script(kernel):
    code = ("%%dockerrun r1 r2\n"
            "from IPython.display import display, HTML\n"
            "h = display(HTML('<b>first</b><script>alert(1)</script>'), display_id=True)\n"
            "h.update(HTML('<i>updated</i><img src=x onerror=alert(1)>'))\n"
            "print('text </pre><script>alert(2)</script>')\n"
            "40 + 2")
    reply, msgs = kernel.execute(code, timeout=120)
    ok(reply)
    final = {}
    for _, m in msgs:
        display_id = (m["content"].get("transient") or {}).get("display_id", "")
        if display_id.startswith("fiddledock-section-"):
            final[display_id] = m["content"]["data"]["text/html"]
    assert len(final) == 2
    for page in final.values():
        assert "<i>updated</i>" in page and "first" not in page  # the update, in place
        assert "<script" not in page and "onerror" not in page
        assert "text &lt;/pre&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page
        assert "Out:" in page and "42" in page
    # nothing outside the sections but the summary
    kinds = {m["msg_type"] for _, m in msgs} - {"status", "execute_input"}
    assert kinds == {"display_data", "update_display_data", "stream"}, kinds


# --- the section's own logic (no engine needed) ----------------------------------------------

def test_a_section_keeps_what_a_terminal_would_show():
    from fiddledock_agent.protocol import METADATA_KEY
    from fiddledock_magic._sections import LIVE_TAIL, Section, ansi_html, overwritten
    assert overwritten("10%\r50%\r100%\ndone\r\n") == "100%\ndone\n"
    assert ansi_html("\x1b[31m<b>\x1b[0m&") == '<span style="color:#c62828;">&lt;b&gt;</span>&amp;'
    section = Section("ann", "id")
    section.stream("stdout", "é".encode()[:1])  # a character split across chunks stays whole
    section.stream("stdout", "é\n".encode()[1:])
    section.stream("stderr", b"oops\n")
    assert section.text() == "--- ann: waiting ---\né\noops"
    section.display({"text/plain": "x"}, {METADATA_KEY: {"clear": True, "wait": True}})
    assert "oops" in section.text()  # cleared only when the next output comes
    section.stream("stdout", b"after\n")
    assert section.text() == "--- ann: waiting ---\nafter"
    section.stream("stdout", b"y" * (LIVE_TAIL * 2))
    live = section.html(live=True)
    assert len(live) < LIVE_TAIL * 1.5 and "earlier output is shown when the instance ends" in live
    assert len(section.html()) > LIVE_TAIL * 2
