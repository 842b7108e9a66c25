"""What the user should hear about the instance's writable folders.

Each writable folder (/tmp, the home folder, /dev/shm) is a tmpfs bounded
both in bytes and in files (see the instance's mount options). A cell that
fills one gets OSError(ENOSPC) inside; these sentences say, beneath the
cell, which folder is full and of what, because "No space left on device"
in a folder that holds only empty files is a riddle.
"""

import os

from fiddledock_agent.notices import size_text

SHARED_MEMORY = "/dev/shm"
MANY_FILES = 10000  # enough to matter when memory runs out (each file costs ~1 KiB)


def full_folders(folders, crowded=False):
    """A sentence for each folder that is full (of files, or of bytes).

    ``crowded``: also name folders holding many files, full or not (when
    memory ran out: files count as memory).
    """
    sentences = []
    for path in list(folders) + [SHARED_MEMORY]:
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        files = st.f_files - st.f_ffree
        if st.f_files and st.f_ffree == 0:
            sentences.append("%s has too many files: it holds %d, the most it allows (the "
                             "number grows with the instance's disk size); delete some"
                             % (path, st.f_files))
        elif st.f_blocks and st.f_bavail == 0:
            sentences.append("%s is full: all of its %s are used (the instance's disk size); "
                             "delete some files" % (path, size_text(st.f_blocks * st.f_frsize)))
        elif crowded and files >= MANY_FILES:
            sentences.append("%s holds %d files, which take memory" % (path, files))
    return sentences
