"""A container's traceback drawn as IPython draws a local cell's.

The agent sends frames (``_events`` checked them: plain text, no control
characters); the lines are the editor's (the ``%%dockerrun`` line is line 1)
and the cell's name is the notebook's own (``In[5]``). Colours come from the
shell's theme, so a remote error looks like a local one.
"""

from pygments.token import Token

try:  # IPython 9 themes
    from IPython.utils.PyColorize import Parser, theme_table
except ImportError:  # IPython 8: the same layout, without colours
    Parser = theme_table = None

WIDTH = 75
NUMBERS = 7  # width of the line-number column, as IPython's


class _Plain:
    """A theme that draws no colours."""

    def format(self, tokens):
        return "".join(value for _, value in tokens)

    def make_arrow(self, pad):
        return "-" * pad + "> "


def theme_of(shell):
    """The shell's traceback theme (``%colors``), or a plain one."""
    name = str(getattr(shell, "colors", "nocolor") or "nocolor").lower()
    if theme_table is None:
        return _Plain(), None
    if name not in theme_table:
        name = "nocolor"
    return theme_table[name], name


def _highlight(line, theme_name):
    if theme_name is None or theme_name == "nocolor":
        return line
    try:
        coloured, failed = Parser(theme_name=theme_name).format2(line, "str")
    except Exception:
        failed = True
    # A line that does not lex alone (an unclosed bracket) is shown as it is.
    return line if failed or not coloured else coloured.rstrip("\n")


def _where(frame, instance):
    """``Cell In[5] (instance alice), line 4, in f()`` or ``File /usr/lib/x.py:12, in g()``."""
    if frame["cell"] is not None:
        label = frame["cell"]
        head = [(Token.NormalEm, "Cell "),
                (Token.FilenameEm, "%s (instance %s)" % (label, instance)),
                (Token.FilenameEm, ", line %d" % frame["line"])]
    else:
        head = [(Token.NormalEm, "File "),
                (Token.FilenameEm, "%s:%d" % (frame["file"], frame["line"]))]
    name = frame["name"]
    if name and name != "<module>":
        head += [(Token, ", in "), (Token.VName, name), (Token.ValEm, "()")]
    return head


def _source(frame, theme, theme_name):
    tokens = []
    for number, line in frame["lines"]:
        if number == frame["line"]:
            pad = NUMBERS - len(str(number))
            tokens += [(Token.LinenoEm, theme.make_arrow(pad)), (Token.LinenoEm, str(number))]
        else:
            tokens.append((Token.LinenoEm, "%*d" % (NUMBERS, number)))
        tokens += [(Token, " "), (Token, _highlight(line, theme_name)), (Token, "\n")]
    return tokens


def render(ename, evalue, frames, instance, shell):
    """The traceback's lines, with the shell's colours."""
    theme, theme_name = theme_of(shell)
    out = []
    syntax = bool(frames) and frames[-1]["name"] is None  # a SyntaxError: where, no stack
    if frames and not syntax:
        out.append(theme.format([(Token.Topline, "-" * WIDTH)]))
        out.append(theme.format([(Token.ExcName, ename),
                                 (Token, "Traceback (most recent call last)".rjust(
                                     WIDTH - len(ename)))]))
    for frame in frames:
        tokens = _where(frame, instance) + [(Token, "\n")] + _source(frame, theme, theme_name)
        out.append(theme.format(tokens))
    last = [(Token.ExcName, ename)]
    if evalue:
        last += [(Token, ": "), (Token, evalue)]
    out.append(theme.format(last))
    return out
