"""The absl binaries. Importing the package keeps TensorFlow's own chatter off the console.

A run should show this project's progress, not TensorFlow's:

- TensorFlow's C++ runtime prints start-up lines when it is imported (oneDNN,
  CPU instructions, absent CUDA drivers); TF_CPP_MIN_LOG_LEVEL no longer
  silences them (TF 2.19+). TensorFlow is imported here with its stderr
  captured, and every captured line but those known start-up lines is
  written back, so real errors still show. Later C++ INFO and WARNING lines
  (the TF Lite converter's) follow TF_CPP_MIN_LOG_LEVEL, 2 unless set.
- TensorFlow and Keras log SavedModel internals (signature serialisation,
  sharding callbacks, fingerprints, "Assets written") at INFO, through absl
  and the "tensorflow" logger; those INFO records are dropped, their
  warnings and errors kept.
- The evaluation traces one function per network and attack (AutoAttack:
  four per network), which TensorFlow reports as "excessive retracing"; that
  warning is dropped too.
"""

import logging
import os
import re
import sys
import tempfile

from absl import logging as absl_logging

_START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|port\.cc:\d+\] oneDNN custom operations"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers|cpu_feature_guard\.cc:\d+\]"
    r"|^To enable the following instructions:|cuda_platform\.cc:\d+\] failed call to cuInit"
)
_LIBRARIES = (f"{os.sep}tensorflow{os.sep}", f"{os.sep}keras{os.sep}")


def _import_tensorflow_quietly():
    """Imports TensorFlow with its start-up lines dropped from stderr (nothing else)."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            # Looking for GPUs here, while stderr is captured, puts the
            # "failed call to cuInit" line of a machine without a CUDA driver
            # among the dropped ones. It does not initialise the devices, so
            # --cpu_replicas can still split the CPU afterwards.
            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _START_UP_NOISE.search(line):
                    sys.stderr.write(line)


_EXPECTED_WARNINGS = re.compile(r"triggered tf\.function retracing")


def _project_or_important(record):
    if not any(p in record.pathname for p in _LIBRARIES):
        return True
    return record.levelno >= logging.WARNING and not _EXPECTED_WARNINGS.search(
        str(record.getMessage())
    )


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "tensorflow" not in sys.modules:
    _import_tensorflow_quietly()
absl_logging.get_absl_handler().addFilter(_project_or_important)
logging.getLogger("tensorflow").setLevel(logging.WARNING)
# TensorFlow's own logger has its own handler: the same filter on the logger.
logging.getLogger("tensorflow").addFilter(_project_or_important)
