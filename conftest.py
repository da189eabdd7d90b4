"""pytest setup shared by all tests.

Splits the CPU into two logical devices before TensorFlow initialises, so the
tf.distribute tests can run a MirroredStrategy on this CPU-only machine; the
other tests use the default (single-device) strategy.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


def pytest_collection_modifyitems(config, items):
    """Drops tf.test.TestCase's inherited `test_session` (a context manager, not a test)."""
    del config
    items[:] = [item for item in items if item.name != "test_session"]
