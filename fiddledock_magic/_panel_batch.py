"""One click's action on several instances (the panel's selected rows), and the one
message that sums it up when the last of them is done."""

PAST = {"restart": "restarted", "reset": "reset", "delete": "deleted"}


def listed(names, at_most=8):
    """'alice, bob and carol'; a long list ends with 'and N more'."""
    names = list(names)
    if len(names) > at_most:
        names = names[:at_most - 1] + ["%d more" % (len(names) - at_most + 1)]
    return names[0] if len(names) == 1 else "%s and %s" % (", ".join(names[:-1]), names[-1])


def counted(names):
    """'1 instance', '3 instances'."""
    return "%d instance%s" % (len(names), "" if len(names) == 1 else "s")


def cells_ended(names, now=True):
    """'the cell running in bob is ended' ('was' when not ``now``; more names, more cells)."""
    one = len(names) == 1
    verb = ("is" if one else "are") if now else ("was" if one else "were")
    return "the cell%s running in %s %s ended" % ("" if one else "s", listed(sorted(names)),
                                                  verb)


class Batch(object):
    """One action on several instances (one click): one message when the last is done."""

    def __init__(self, action, names, skipped=()):
        self.action = action
        self.pending = set(names)
        self.done, self.failed, self.ended = [], [], []
        self.skipped = list(skipped)   # (name, why) of instances busy with an action

    def finish(self, name, outcome):
        """One action is over; True when it was the last (under the model's lock)."""
        self.pending.discard(name)
        if outcome[1] == "error":
            self.failed.append(outcome[0])
        else:
            self.done.append(name)
        return not self.pending

    def summary(self):
        """``(message, kind)``: what was done, which cells it ended, what failed or waited."""
        parts = []
        if self.done:
            parts.append("%s %s: %s" % (PAST[self.action], counted(self.done),
                                        listed(sorted(self.done))))
        if self.ended:
            parts.append(cells_ended(self.ended, now=False))
        parts.extend(self.failed)
        parts.extend("%r not %s: %s" % (name, PAST[self.action], why)
                     for name, why in self.skipped)
        return "; ".join(parts), "error" if self.failed or self.skipped else "info"
