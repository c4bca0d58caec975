"""Objects that pickle into code execution, to check that lit's loaders refuse them: each
would create the file ``marker`` if it ran."""

import functools
import os
import shutil


class SystemPayload:
    """Pickles into ``os.system("touch marker")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload:
    """Pickles into ``exec`` of code that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


class PartialPayload:
    """Pickles into a ``functools.partial`` that copies a file to ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (functools.partial(shutil.copyfile, __file__, self.marker), ())
