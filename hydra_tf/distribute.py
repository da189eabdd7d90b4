"""tf.distribute: strategies, the chief, and random numbers per replica.

Training scales with TensorFlow's own engine: `training.train` builds and
compiles the network inside a strategy's scope and lets `model.fit` run the
step on every replica. What this module adds:

- `make_strategy`: `default` (one device), `mirrored` (the GPUs of one
  machine, or logical CPU devices for tests), `multi_worker` (several
  machines, from `TF_CONFIG`) and `tpu`.
- `is_chief`: only the chief writes results and the final model; the other
  workers write to their own scratch directories.
- Random numbers inside a training step (PGD random starts, TRADES starts,
  smoothing noise) come from `uniform` / `normal`, which draw stateless
  numbers keyed by (seed, step, replica, call site). Replicas therefore get
  independent numbers (TF's stateful ops would give every replica the same
  stream), and a run is reproducible from its seed, also after a resume.

Batch size semantics: `--batch_size` is the global batch. Each of N replicas
gets batch_size / N examples per step; the losses are Keras `Loss` objects,
which divide by the global batch, and the optimizer sums the replicas'
gradients, so a step's update equals the one-device update on the same batch.
"""

import contextlib
import json
import os
import threading

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class StrategyError(ValueError):
    """The asked strategy cannot be built here."""


def split_cpu(count):
    """Splits the first CPU into `count` logical devices (for mirrored tests on CPU).

    Must run before TensorFlow initialises its devices (before any op runs).
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise StrategyError(
            f"Cannot split the CPU into {count} devices once TensorFlow has started ({error})."
        ) from error


def make_strategy(name="default", num_gpus=None, devices=None, tpu_address=None):
    """The `tf.distribute.Strategy` called `name`.

    Args:
      name: one of `STRATEGIES`.
      num_gpus: mirrored: use the first `num_gpus` GPUs (default: all, or
        every logical CPU device when there is no GPU).
      devices: mirrored: an explicit device list, e.g. ["/gpu:0", "/gpu:1"].
      tpu_address: tpu: the TPU's address (default: the local TPU).

    Raises:
      StrategyError: an unknown name, too few GPUs, multi_worker without
        TF_CONFIG, or no TPU.
    """
    if name not in STRATEGIES:
        raise StrategyError(f"Unknown strategy {name!r}. Supported: {STRATEGIES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices:
            return tf.distribute.MirroredStrategy(devices=list(devices))
        gpus = tf.config.list_logical_devices("GPU")
        if num_gpus is not None and num_gpus > len(gpus):
            raise StrategyError(f"--num_gpus={num_gpus} but this machine has {len(gpus)} GPU(s).")
        if gpus:
            chosen = gpus[:num_gpus] if num_gpus else gpus
        else:
            chosen = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(devices=[d.name for d in chosen])
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise StrategyError(
                "--strategy=multi_worker needs TF_CONFIG (the cluster and this worker's task), "
                'e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}.'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise StrategyError(f"No TPU found for --strategy=tpu ({error}).") from error
    return tf.distribute.TPUStrategy(resolver)


def task():
    """(task type, index) of this process from TF_CONFIG; (None, 0) without it."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    current = config.get("task", {})
    return current.get("type"), int(current.get("index", 0))


def is_chief(strategy=None):
    """Whether this process writes results: the chief, or worker 0 without a chief."""
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    kind, index = task()
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    has_chief = bool(config.get("cluster", {}).get("chief"))
    if kind == "chief":
        return True
    return kind in (None, "worker") and index == 0 and not has_chief


def worker_dir(directory, strategy=None):
    """Where this process writes: `directory` on the chief, a per-worker sub-directory elsewhere.

    Every worker must still save (collective ops may run during saving), but
    only the chief's files are the results.
    """
    if is_chief(strategy):
        return directory
    kind, index = task()
    return os.path.join(directory, "workers", f"{kind}_{index}")


# --- random numbers inside a training step -------------------------------

_STEP = threading.local()


@contextlib.contextmanager
def step_randomness(seed, step):
    """Makes `uniform` / `normal` stateless, keyed by (seed, step, replica, call).

    Args:
      seed: the run's integer seed.
      step: a scalar integer tensor, the optimizer's step counter.
    """
    previous = getattr(_STEP, "state", None)
    _STEP.state = {"seed": int(seed), "step": step, "calls": 0}
    try:
        yield
    finally:
        _STEP.state = previous


def current_step():
    """The step counter of the enclosing `step_randomness` block, or None outside one.

    Objectives whose settings follow a schedule (the eps ramp of verifiable
    training) read the training step here.
    """
    state = getattr(_STEP, "state", None)
    return None if state is None else state["step"]


def replica_id():
    """This replica's index among all replicas (0 outside a replica context)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0, tf.int64)
    return tf.cast(context.replica_id_in_sync_group, tf.int64)


def _stateless_seed(salt):
    state = getattr(_STEP, "state", None)
    if state is None:
        return None
    state["calls"] += 1  # a new stream for every call site in the step
    step = tf.cast(state["step"], tf.int64)
    seed = tf.stack(
        [
            tf.constant(state["seed"], tf.int64) * 65_537 + state["calls"],
            step * 1_048_576 + replica_id(),
        ]
    )
    if salt is None:
        return seed
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(salt, tf.int64))


def uniform(shape, minval, maxval, dtype=tf.float32, salt=None):
    """`tf.random.uniform`, but stateless and per replica inside `step_randomness`.

    `salt`: an integer (tensor) folded into the stateless seed. A call site
    inside a `tf.while_loop` body is traced once, so it draws the same
    numbers in every iteration unless it passes the iteration as `salt`.
    """
    seed = _stateless_seed(salt)
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype)


def normal(shape, dtype=tf.float32, salt=None):
    """`tf.random.normal`, but stateless and per replica inside `step_randomness`.

    `salt`: as `uniform`'s.
    """
    seed = _stateless_seed(salt)
    if seed is None:
        return tf.random.normal(shape, dtype=dtype)
    return tf.random.stateless_normal(shape, seed, dtype=dtype)
