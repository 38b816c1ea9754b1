"""Hides TensorFlow's C++ start-up lines, which no environment variable reaches.

TensorFlow 2.21 writes "oneDNN custom operations are on", "Could not find cuda drivers"
and "This TensorFlow binary is optimized to use ..." to the process's stderr while its
shared libraries load, before its logging reads ``TF_CPP_MIN_LOG_LEVEL`` (absl's
"All log messages before absl::InitializeLog() is called" preamble, twice per process).
The only place to catch them is file descriptor 2 during ``import tensorflow``: it is
pointed at a temporary file for that import, and every captured line except these is
written back to stderr afterwards, in order (Python warnings and real errors included).
"""

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

# The start-up lines: absl's preamble and the INFO lines of three TensorFlow source files.
_STARTUP_LINE = re.compile(r"absl::InitializeLog\(\) is called|^I\d{4} \S+ +\d+ (port|cudart_stub|cpu_feature_guard)"
                           r"\.cc:\d+\] |^To enable the following instructions:")


@contextlib.contextmanager
def _startup_lines_dropped():
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.writelines(line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                                  if not _STARTUP_LINE.search(line))
            sys.stderr.flush()


class QuietTensorFlowImport:
    """A ``sys.meta_path`` finder that runs the first ``import tensorflow`` of the process
    (keras' included) with the start-up lines dropped, then removes itself."""

    def find_spec(self, name, path=None, target=None):
        del path, target
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_quietly(module):
            with _startup_lines_dropped():
                execute(module)

        spec.loader.exec_module = exec_quietly  # the loader itself stays the module's __loader__
        return spec
