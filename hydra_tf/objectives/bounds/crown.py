"""Backward linear bounds: CROWN (Zhang et al., 2018) and CROWN-IBP (Zhang et al., ICLR 2020).

To bound C·z over an input box, CROWN starts from the linear function C·z of
the network's output and walks the network backwards: through an affine
layer the function stays exact (its weights go through the transposed
layer, the layer's bias goes into the offset); at a ReLU it is replaced by a
linear lower (or upper) bound valid on the ReLU's pre-activation interval:
upper line slope u / (u - l) and intercept -l·u / (u - l) for an unstable
neuron, lower line slope 1 if u >= -l else 0 (CROWN-IBP's adaptive choice).
Reaching the input, the linear function A·x + c is minimised (maximised)
over the box: A·centre -+ |A|·radius + c.

The pre-activation intervals come from IBP in `crown_ibp` mode (one IBP pass
and one backward pass from the output: cheap enough to train with) and from
CROWN itself in `full` mode (one backward pass per neuron of every layer
before a ReLU: for evaluation of small networks).

`BackwardBounds` is the bound type: one `apply_<kind>` per layer kind, each
mapping linear bounds in terms of a layer's output to linear bounds in terms
of its input; `backward_bounds` runs the walk.
"""

import collections
import math

import keras
import tensorflow as tf

from hydra_tf.models import kinds
from hydra_tf.objectives.bounds import interval
from hydra_tf.objectives.bounds import propagation

MODES = ("crown_ibp", "full")

# Layers replaced by linear relaxations, which need bounds of their input.
RELAXED_KINDS = ("relu", "max_pool")

# In `full` mode, the identity specification of a layer with n neurons is
# walked back in chunks of rows, each holding at most this many float32
# coefficients (batch x rows x the largest tensor on the way): 256 MiB.
_FULL_MODE_CHUNK_ELEMENTS = 2**26


class LinearFunction(collections.namedtuple("LinearFunction", ["weights", "offsets"])):
    """The linear function t -> sum(weights * t) + offsets of one tensor t.

    Attributes:
      weights: (batch, n_spec, *t.shape[1:]).
      offsets: (batch, n_spec).
    """

    def __add__(self, other):
        return LinearFunction(self.weights + other.weights, self.offsets + other.offsets)


def _float32(value):
    return tf.cast(tf.convert_to_tensor(value), tf.float32)


def _fold_batch(weights):
    """(batch, n_spec, ...) -> (batch * n_spec, ...), and the (batch, n_spec) pair."""
    outer = tf.shape(weights)[:2]
    merged = tf.reshape(weights, tf.concat([[outer[0] * outer[1]], tf.shape(weights)[2:]], 0))
    return merged, outer


def _unfold_batch(merged, outer, inner_shape):
    """(batch * n_spec, *inner_shape) -> (batch, n_spec, *inner_shape)."""
    return tf.reshape(merged, tf.concat([outer, inner_shape], 0))


def _channel_dot(weights, vector):
    """sum(weights * vector) over all but the first two axes, `vector` along the last: (b, s)."""
    spatial = list(range(2, len(weights.shape) - 1))
    if spatial:
        weights = tf.reduce_sum(weights, axis=spatial)
    return tf.linalg.matvec(weights, _float32(vector))


def _input_shape(layer):
    """The static shape of `layer`'s input without the batch axis, as a list of ints."""
    shape = list(layer.input.shape[1:])
    if any(dim is None for dim in shape):
        raise propagation.UnsupportedLayerError(
            f"Cannot bound layer {layer.name!r} backwards: its input shape {tuple(shape)} "
            "is not fully known."
        )
    return shape


class BackwardBounds(propagation.Bounds):
    """Linear bounds of a target (batch, n_spec) in terms of one tensor t of a network.

    lower.weights·t + lower.offsets <= target <= upper.weights·t + upper.offsets
    for every t the input box can produce. Either side may be None (not
    computed). Each `apply_<kind>(layer, ...)` takes bounds in terms of the
    layer's output and returns bounds in terms of its input.

    Args:
      lower: `LinearFunction` lower bound of the target, or None.
      upper: `LinearFunction` upper bound of the target, or None.
      relaxations: {layer name: `IntervalBounds` of that layer's input} for
        every ReLU and max-pooling layer the walk passes.
    """

    def __init__(self, lower, upper, relaxations):
        self.lower = lower
        self.upper = upper
        self.relaxations = relaxations

    def _new(self, lower, upper):
        return type(self)(lower, upper, self.relaxations)

    def __add__(self, other):
        """The sum of two bounds of parts of the target in terms of the same tensor."""
        return self._new(
            None if self.lower is None else self.lower + other.lower,
            None if self.upper is None else self.upper + other.upper,
        )

    def _linear(self, transpose, offsets=None):
        """Through a linear map y = M x (+ b): weights W -> transpose(W), offsets += offsets(W)."""

        def side(function):
            if function is None:
                return None
            extra = 0.0 if offsets is None else offsets(function.weights)
            return LinearFunction(transpose(function.weights), function.offsets + extra)

        return self._new(side(self.lower), side(self.upper))

    def apply_dense(self, layer, kernel, bias):
        kernel = _float32(kernel)
        return self._linear(
            lambda w: tf.tensordot(w, kernel, [[-1], [1]]),
            None if bias is None else lambda w: _channel_dot(w, bias),
        )

    def apply_conv2d(self, layer, kernel, bias):
        strides, padding = propagation.conv2d_arguments(layer)
        kernel = _float32(kernel)
        inner = _input_shape(layer)

        def transpose(w):
            # The adjoint of the convolution, on batch x n_spec maps at once;
            # the explicit output shape settles stride 2's ambiguous sizes.
            merged, outer = _fold_batch(w)
            back = tf.nn.conv2d_transpose(
                merged, kernel, tf.concat([tf.shape(merged)[:1], inner], 0), strides, padding
            )
            return _unfold_batch(back, outer, inner)

        return self._linear(transpose, None if bias is None else lambda w: _channel_dot(w, bias))

    def apply_batch_norm(self, layer, scale, offset):
        scale = _float32(scale)
        return self._linear(lambda w: w * scale, lambda w: _channel_dot(w, offset))

    def apply_flatten(self, layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise self._unsupported(layer)
        inner = _input_shape(layer)
        return self._linear(lambda w: _unfold_batch(w, tf.shape(w)[:2], inner))

    def apply_add(self, layer, inputs):
        """Bounds in terms of each input of the sum: the same weights, the offsets once.

        `inputs` (the base class's forward convention) is not used: a
        backward walk holds bounds of the output only.
        """
        del inputs
        count = len(propagation.layer_inputs(layer))

        def without_offsets(function):
            if function is None:
                return None
            return LinearFunction(function.weights, tf.zeros_like(function.offsets))

        rest = self._new(without_offsets(self.lower), without_offsets(self.upper))
        return (self,) + (rest,) * (count - 1)

    def _relax(self, slopes, intercepts):
        """Through an elementwise map f bounded by lines: lower_f(t) <= f(t) <= upper_f(t).

        slopes, intercepts: (lower, upper) pairs of (batch, *t.shape[1:]) tensors.
        A lower bound of the target takes the lower line where its weight is
        positive and the upper line where negative; an upper bound the reverse.
        """
        (lower_slope, upper_slope), (lower_intercept, upper_intercept) = slopes, intercepts

        def side(function, positive_slope, negative_slope, positive_icpt, negative_icpt):
            if function is None:
                return None
            positive = tf.nn.relu(function.weights)
            negative = function.weights - positive
            weights = positive * positive_slope[:, None] + negative * negative_slope[:, None]
            offsets = function.offsets
            for part, intercept in ((positive, positive_icpt), (negative, negative_icpt)):
                if intercept is not None:
                    offsets = offsets + _flat_dot(part, intercept)
            return LinearFunction(weights, offsets)

        return self._new(
            side(self.lower, lower_slope, upper_slope, lower_intercept, upper_intercept),
            side(self.upper, upper_slope, lower_slope, upper_intercept, lower_intercept),
        )

    def apply_relu(self, layer):
        box = self.relaxations[layer.name]
        # Stable neurons fall out of the same formulas: l >= 0 gives slopes 1
        # and intercept 0, u <= 0 gives slopes 0.
        upper_slope, upper_intercept = propagation.relu_upper_line(box.lower, box.upper)
        lower_slope = propagation.relu_lower_slope(box.lower, box.upper)
        return self._relax((lower_slope, upper_slope), (None, upper_intercept))

    def apply_max_pool(self, layer):
        # Lower line: max(window) >= x_j, j the window's element of largest
        # lower bound. Upper line: x_j itself when j dominates the window
        # (l_j >= u_i for every other i, so max = x_j), else the constant U,
        # the window's largest upper bound. The dominance test needs windows
        # that do not overlap; overlapping windows always take U.
        ksize, strides, padding = propagation.pool_arguments(layer)
        box = self.relaxations[layer.name]
        lower = tf.stop_gradient(box.lower)
        largest_lower, argmax = tf.nn.max_pool_with_argmax(
            lower, ksize, strides, padding, include_batch_in_index=True
        )
        ceiling = tf.nn.max_pool2d(box.upper, ksize, strides, padding)
        inner = _input_shape(layer)
        size = math.prod(inner)
        if all(stride >= k for stride, k in zip(strides[1:3], ksize[1:3])):
            others = tf.tensor_scatter_nd_update(
                tf.reshape(tf.stop_gradient(box.upper), [-1]),
                tf.reshape(argmax, [-1, 1]),
                tf.fill([tf.size(argmax)], float("-inf")),
            )
            others = tf.nn.max_pool2d(tf.reshape(others, tf.shape(lower)), ksize, strides, padding)
            dominant = tf.cast(largest_lower >= others, tf.float32)
        else:
            dominant = tf.zeros_like(ceiling)

        def route(w):
            # Each output position's weight goes to its window's element j.
            outer = tf.shape(w)[:2]
            per_position = tf.reshape(w, tf.concat([outer, [-1]], 0))
            by_position = tf.transpose(per_position, [0, 2, 1])  # (b, positions, s)
            scattered = tf.math.unsorted_segment_sum(
                tf.reshape(by_position, [-1, outer[1]]),
                tf.reshape(argmax, [-1]),
                outer[0] * size,
            )
            scattered = tf.transpose(tf.reshape(scattered, [outer[0], size, outer[1]]), [0, 2, 1])
            return _unfold_batch(scattered, outer, inner)

        def side(function, lower_line):
            # `lower_line`: the part of the weights that takes the lower line
            # (positive weights of a lower bound, negative of an upper bound).
            if function is None:
                return None
            upper_line = function.weights - lower_line
            element = lower_line + upper_line * dominant[:, None]
            constant = upper_line * (1.0 - dominant[:, None])
            return LinearFunction(route(element), function.offsets + _flat_dot(constant, ceiling))

        return self._new(
            None if self.lower is None else side(self.lower, tf.nn.relu(self.lower.weights)),
            None if self.upper is None else side(self.upper, tf.minimum(self.upper.weights, 0.0)),
        )

    def apply_avg_pool(self, layer):
        ksize, strides, padding = propagation.pool_arguments(layer)
        inner = _input_shape(layer)

        def transpose(w):
            merged, outer = _fold_batch(w)
            back = tf.raw_ops.AvgPoolGrad(
                orig_input_shape=tf.concat([tf.shape(merged)[:1], inner], 0),
                grad=merged,
                ksize=ksize,
                strides=strides,
                padding=padding,
            )
            return _unfold_batch(back, outer, inner)

        return self._linear(transpose)

    def apply_global_avg_pool(self, layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise self._unsupported(layer)
        height, width, channels = _input_shape(layer)

        def transpose(w):
            w = tf.reshape(w, tf.concat([tf.shape(w)[:2], [1, 1, channels]], 0))
            return tf.tile(w / float(height * width), [1, 1, height, width, 1])

        return self._linear(transpose)

    def concretize(self, box):
        """(lower, upper) bounds of the target over `box` (this tensor's `IntervalBounds`).

        Either is None when that side is not computed.
        """

        def side(function, sign):
            if function is None:
                return None
            spread = _flat_dot(tf.abs(function.weights), box.radius)
            return _flat_dot(function.weights, box.centre) + sign * spread + function.offsets

        return side(self.lower, -1.0), side(self.upper, 1.0)


def _flat_dot(weights, values):
    """sum(weights * values) per (batch, spec): weights (b, s, ...), values (b, ...)."""
    flat_weights = tf.reshape(weights, tf.concat([tf.shape(weights)[:2], [-1]], 0))
    flat_values = tf.reshape(values, [tf.shape(values)[0], -1])
    return tf.einsum("bsn,bn->bs", flat_weights, flat_values)


def _walk_back(network, layer, bounds, box):
    """Walks `bounds` (in terms of `layer`'s output) back to the input; concretises over `box`."""
    input_name = propagation.producer(network.inputs[0]).name
    pending = {layer.name: bounds}
    for current in reversed(network.layers):
        if current.name not in pending:
            continue
        bounds = pending.pop(current.name)
        if current.name == input_name:
            return bounds.concretize(box)
        results = bounds.propagate(current)
        if kinds.kind(current) != "add":
            results = (results,)
        for tensor, result in zip(propagation.layer_inputs(current), results):
            name = propagation.producer(tensor).name
            pending[name] = pending[name] + result if name in pending else result
    if input_name in pending:
        # A Sequential model does not list its input layer among its layers.
        return pending.pop(input_name).concretize(box)
    raise propagation.UnsupportedLayerError(
        f"Layer {layer.name!r} does not depend on the input of {network.name!r}."
    )


def _relaxed_inputs(network):
    """(relaxed layer, the layer producing its input) for every ReLU / max-pool, in order."""
    return [
        (layer, propagation.producer(layer.input))
        for layer in network.layers
        if kinds.kind(layer) in RELAXED_KINDS
    ]


def _neuron_bounds(network, layer, relaxations, box):
    """Full-CROWN bounds of every neuron of `layer`'s output: `IntervalBounds` of its shape."""
    shape = [int(dim) for dim in layer.output.shape[1:]]
    neurons = math.prod(shape)
    widest = max(math.prod(other.output.shape[1:]) for other in network.layers)
    batch = box.lower.shape[0] or 1
    rows = max(1, _FULL_MODE_CHUNK_ELEMENTS // (batch * widest))
    lowers, uppers = [], []
    for start in range(0, neurons, rows):
        stop = min(start + rows, neurons)
        identity = tf.one_hot(tf.range(start, stop), neurons, dtype=tf.float32)
        weights = tf.broadcast_to(
            tf.reshape(identity, [1, stop - start] + shape),
            tf.concat([tf.shape(box.lower)[:1], [stop - start], shape], 0),
        )
        function = LinearFunction(weights, tf.zeros(tf.shape(weights)[:2]))
        lower, upper = _walk_back(
            network, layer, BackwardBounds(function, function, relaxations), box
        )
        lowers.append(lower)
        uppers.append(upper)
    batch_shape = tf.concat([tf.shape(box.lower)[:1], shape], 0)
    return interval.IntervalBounds(
        tf.reshape(tf.concat(lowers, 1), batch_shape), tf.reshape(tf.concat(uppers, 1), batch_shape)
    )


def backward_bounds(network, box, spec, mode="crown_ibp", lower=True, upper=True, intervals=None):
    """CROWN bounds of C·network(x) for every x in `box`.

    Args:
      network: a functional model (one input, one output: the logits).
      box: `IntervalBounds` of the input (e.g. `IntervalBounds.from_linf`).
      spec: (batch, n_spec, n_classes) specification C
        (`specification.margin_specification`).
      mode: "crown_ibp" (ReLU pre-activation bounds from IBP) or "full"
        (from CROWN itself, layer by layer, intersected with IBP's; slow,
        for evaluation).
      lower, upper: which sides to compute (training needs only `lower`).
      intervals: IBP bounds of the layers ({layer name: `IntervalBounds`},
        from `propagate_layers`), to share one IBP pass with
        `interval.specification_bounds`; computed if None.

    Returns:
      (lower, upper): (batch, n_spec) tensors, None for a side not computed.

    Raises:
      UnsupportedLayerError: a layer the bounds cannot handle, named.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
    if not (lower or upper):
        raise ValueError("Nothing to compute: lower and upper are both False.")
    relaxed = _relaxed_inputs(network)
    if intervals is None and relaxed:
        # IBP is needed up to the input of the last relaxed layer only.
        intervals = propagation.propagate_layers(network, box, stop_before=relaxed[-1][0].name)
    relaxations = {}
    if mode == "crown_ibp":
        for layer, source in relaxed:
            relaxations[layer.name] = intervals[source.name]
    else:
        tightened = {}
        for layer, source in relaxed:
            if source.name not in tightened:
                if isinstance(source, keras.layers.InputLayer):
                    tightened[source.name] = box
                else:
                    crown = _neuron_bounds(network, source, relaxations, box)
                    ibp = intervals[source.name]
                    tightened[source.name] = interval.IntervalBounds(
                        tf.maximum(crown.lower, ibp.lower), tf.minimum(crown.upper, ibp.upper)
                    )
            relaxations[layer.name] = tightened[source.name]
    spec = _float32(spec)
    function = LinearFunction(spec, tf.zeros(tf.shape(spec)[:2]))
    start = BackwardBounds(function if lower else None, function if upper else None, relaxations)
    return _walk_back(network, propagation.producer(network.outputs[0]), start, box)
