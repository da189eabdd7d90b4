"""Symbolic interval bounds (ReluVal and Neurify; Wang et al., 2018), forward.

Each neuron of a tensor t carries two linear functions of the network's
input x, a lower and an upper equation, valid on the whole input box:

    lower_weights·x + lower_offsets <= t(x) <= upper_weights·x + upper_offsets.

IBP forgets that neurons depend on the same inputs; the equations keep that
dependency exactly through every linear layer (an affine map of affine
functions is affine: the positive part of a kernel maps each side to
itself, the negative part swaps the sides), so x - x is 0 rather than
[-2r, 2r]. Precision is lost only at unstable ReLUs, where each equation is
replaced by a line bounding relu of it. Concretising an equation (its
minimum or maximum over the box: positive weights at one end of the box,
negative weights at the other) gives elementwise bounds (`IntervalBounds`).
This is the analysis MixTrain trains and certifies with.

The ReLU rule. For one neuron let [l, u] be the range over the box of the
equation concerned (its lower equation for the lower line, its upper
equation for the upper line), l <- min(l, 0), u <- max(u, 0):

- upper line, Neurify's: relu(t) <= u/(u-l)·(upper_eq - l). Sound: relu is
  increasing and t <= upper_eq, so relu(t) <= relu(upper_eq), and over
  [l, u], the range of upper_eq, relu lies below its chord from (l, 0) to
  (u, u).
- lower line: relu(t) >= s·lower_eq with s = 1 where u >= -l, else 0 (the
  rule CROWN-IBP uses, `propagation.relu_lower_slope`). Sound for any s in
  [0, 1]: where lower_eq <= 0, s·lower_eq <= 0 <= relu(t); where
  lower_eq > 0, s·lower_eq <= lower_eq <= t = relu(t). Among those lines it
  leaves the least area between itself and relu over [l, u] (the area is
  linear in s). Neurify's parallel line s = u/(u-l) and the line 0 are as
  sound, and measured looser here. Mean margin lower bound of cnn_verifiable trained
  naturally (3 epochs, 3000 Fashion-MNIST images) on 50 test images, this
  rule / Neurify's / 0 (verified of 50): eps 0.002: 6.98 (32) / 6.92 (32) /
  6.45 (30); eps 0.005: 4.96 (22) / 4.65 (21) / 2.80 (10); eps 0.01: -0.55
  (7) / -1.80 (5) / -10.07 (0). IBP: -18.1, -49.5, -96.2 (none verified);
  CROWN-IBP: 2.13 (13), -13.0 (0), -38.3 (0).

Stable neurons fall out of the same formulas: l >= 0 gives slopes 1 and
intercept 0 (the equations are kept), u <= 0 gives slopes 0 (the neuron is 0).

Intersection with IBP (`from_box(box, intersect=True)`, the default). The
bounds also carry an IBP interval [L, U] of the tensor, started from the box
and tightened at every ReLU by the equations' ranges; `concretize` returns
the intersection, and the ReLU lines use the ranges clipped to [L, U]. Still
sound: upper_eq >= t >= L, so upper_eq never goes below the clipped range's
bottom max(l_up, L); where it goes above its top u' = min(u_up, U) >= t,
the chord is at least its value at u', which is u' >= relu(t) (or 0 = relu(t)
when u' <= 0); the lower slope may be anything in [0, 1]. So the bounds are
never looser than IBP's, at any layer. Without it, 1% (eps 0.002) to 5%
(eps 0.01) of the bound ends of the network above are looser than IBP's,
but the margins do not move (equal to 4 digits); on the random networks of
the soundness tests (eps 0.15) the mean margin lower bound gains up to 0.01
(of about -2). It costs an IBP pass: no measurable time.

Memory and time. The weights of a tensor of size m take batch x n_inputs x
m float32 per side (one side only before the first ReLU, where the two
equations are the same function and are computed once), and
`propagate_layers` keeps every layer's. For cnn_verifiable on 28x28x1
inputs (n_inputs = 784) the widest tensor is conv1's 14x14x16 = 3136
neurons: 784 x 3136 x 4 bytes = 9.8 MB per example and side. All layers
together, `symbolic_specification_bounds` was measured at 53 MB of peak
memory per example (1.7 GB for a batch of 32, which took 1.45 s eagerly and
1.4 s in a `tf.function` on this busy 2-core machine). It suits the few
examples per batch MixTrain bounds and certification in small batches, not
IBP-sized training batches.
"""

import math

import tensorflow as tf

from hydra_tf.models import convolution
from hydra_tf.models import kinds
from hydra_tf.objectives.bounds import interval
from hydra_tf.objectives.bounds import propagation
from hydra_tf.objectives.bounds import specification


def _float32(value):
    return tf.cast(tf.convert_to_tensor(value), tf.float32)


def _fold(fn, weights):
    """`fn`, a map of (N, *s) tensors, applied to each of the batch x n_inputs rows of `weights`.

    weights: (batch, n_inputs, *s) -> (batch, n_inputs, *fn's output shape[1:]). Static
    shapes but the batch's, so that the layers see known sizes inside a `tf.function`.
    """
    mapped = fn(tf.reshape(weights, [-1, *weights.shape[2:]]))
    return tf.reshape(mapped, [-1, weights.shape[1], *mapped.shape[1:]])


def _flatten(tensor):
    """(batch, ...) -> (batch, size), keeping the static size."""
    return tf.reshape(tensor, [-1, math.prod(tensor.shape[1:])])


class SymbolicIntervalBounds(propagation.Bounds):
    """Lower and upper linear equations in the input of every neuron of one tensor t.

    For every x in `box`, with x flattened to n_inputs values and `·`
    contracting the n_inputs axis:
    lower_weights·x + lower_offsets <= t(x) <= upper_weights·x + upper_offsets.

    The two sides may be the very same tensors (before the first ReLU both
    are the exact affine function); a linear layer then maps them once.

    Args:
      lower_weights, upper_weights: (batch, n_inputs, *t.shape[1:]).
      lower_offsets, upper_offsets: (batch, *t.shape[1:]).
      box: `IntervalBounds` of the network's input, (batch, *input_shape).
      intervals: `IntervalBounds` of t to intersect the equations' bounds
        with (IBP, tightened at every ReLU), or None for none.
    """

    def __init__(self, lower_weights, lower_offsets, upper_weights, upper_offsets, box, intervals):
        self.lower_weights = lower_weights
        self.lower_offsets = lower_offsets
        self.upper_weights = upper_weights
        self.upper_offsets = upper_offsets
        self.box = box
        self.intervals = intervals

    @classmethod
    def from_box(cls, box, intersect=True):
        """The identity equations of the input, over `box`.

        Args:
          box: `IntervalBounds` of the input (e.g. `IntervalBounds.from_linf`,
            clipped to the data domain); its shape without the batch axis
            must be known.
          intersect: whether to carry IBP bounds and intersect with them.
        """
        shape = list(box.lower.shape[1:])
        n_inputs = math.prod(shape)
        identity = tf.reshape(tf.eye(n_inputs), [1, n_inputs, *shape])
        batch = tf.shape(box.lower)[:1]
        weights = tf.broadcast_to(identity, tf.concat([batch, [n_inputs], shape], 0))
        offsets = tf.zeros_like(box.lower)
        return cls(weights, offsets, weights, offsets, box, box if intersect else None)

    def _shared(self):
        return self.lower_weights is self.upper_weights and self.lower_offsets is self.upper_offsets

    def _new(self, lower, upper, intervals):
        """New bounds from (weights, offsets) pairs of each side, over the same box."""
        return type(self)(*lower, *upper, self.box, intervals)

    def _ibp(self, method, *args):
        """The carried IBP bounds through `method` of `IntervalBounds`, or None."""
        return None if self.intervals is None else getattr(self.intervals, method)(*args)

    def _range(self, weights, offsets):
        """(minimum, maximum) of the equations over the box, each of the offsets' shape."""
        flat = tf.reshape(weights, [-1, weights.shape[1], math.prod(weights.shape[2:])])
        centre = tf.einsum("bnk,bn->bk", flat, _flatten(self.box.centre))
        spread = tf.einsum("bnk,bn->bk", tf.abs(flat), _flatten(self.box.radius))
        middle = tf.reshape(centre, [-1, *offsets.shape[1:]]) + offsets
        spread = tf.reshape(spread, [-1, *offsets.shape[1:]])
        return middle - spread, middle + spread

    def _clip(self, low, high):
        """[low, high] intersected with the carried IBP bounds, if any."""
        if self.intervals is None:
            return low, high
        return tf.maximum(low, self.intervals.lower), tf.minimum(high, self.intervals.upper)

    def concretize(self):
        """`IntervalBounds` of t: the lower equation's minimum, the upper one's maximum."""
        lower, _ = self._range(self.lower_weights, self.lower_offsets)
        _, upper = self._range(self.upper_weights, self.upper_offsets)
        return interval.IntervalBounds(*self._clip(lower, upper))

    def _affine(self, linear, kernel, bias, intervals):
        """Through y = linear(t, kernel) + bias, a map linear in t and in the kernel.

        Each side of y takes the positive part of the kernel from the same
        side of t and the negative part from the other side.
        """
        kernel = _float32(kernel)
        bias = 0.0 if bias is None else _float32(bias)

        def image(weights, offsets, k):
            return _fold(lambda w: linear(w, k), weights), linear(offsets, k)

        if self._shared():
            weights, offsets = image(self.lower_weights, self.lower_offsets, kernel)
            side = (weights, offsets + bias)
            return self._new(side, side, intervals)
        positive = tf.nn.relu(kernel)
        negative = kernel - positive
        lower = (self.lower_weights, self.lower_offsets)
        upper = (self.upper_weights, self.upper_offsets)

        def side(same, other):
            same_weights, same_offsets = image(*same, positive)
            other_weights, other_offsets = image(*other, negative)
            return same_weights + other_weights, same_offsets + other_offsets + bias

        return self._new(side(lower, upper), side(upper, lower), intervals)

    def _increasing_linear(self, fn, intervals):
        """Through a linear map `fn` with non-negative coefficients: each side maps to itself."""
        lower = (_fold(fn, self.lower_weights), fn(self.lower_offsets))
        if self._shared():
            return self._new(lower, lower, intervals)
        upper = (_fold(fn, self.upper_weights), fn(self.upper_offsets))
        return self._new(lower, upper, intervals)

    def apply_dense(self, layer, kernel, bias):
        return self._affine(
            lambda t, k: tf.tensordot(t, k, [[-1], [0]]),
            kernel,
            bias,
            self._ibp("apply_dense", layer, kernel, bias),
        )

    def apply_conv2d(self, layer, kernel, bias):
        strides, padding = propagation.conv2d_arguments(layer)
        return self._affine(
            lambda t, k: convolution.conv2d(t, k, strides[1:3], padding),
            kernel,
            bias,
            self._ibp("apply_conv2d", layer, kernel, bias),
        )

    def apply_batch_norm(self, layer, scale, offset):
        return self._affine(
            lambda t, k: t * k, scale, offset, self._ibp("apply_batch_norm", layer, scale, offset)
        )

    def apply_flatten(self, layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise self._unsupported(layer)
        return self._increasing_linear(_flatten, self._ibp("apply_flatten", layer))

    def apply_avg_pool(self, layer):
        ksize, strides, padding = propagation.pool_arguments(layer)
        return self._increasing_linear(
            lambda t: tf.nn.avg_pool2d(t, ksize, strides, padding),
            self._ibp("apply_avg_pool", layer),
        )

    def apply_global_avg_pool(self, layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise self._unsupported(layer)
        keepdims = bool(getattr(layer, "keepdims", False))
        return self._increasing_linear(
            lambda t: tf.reduce_mean(t, axis=[1, 2], keepdims=keepdims),
            self._ibp("apply_global_avg_pool", layer),
        )

    def apply_add(self, layer, inputs):
        intervals = None
        if self.intervals is not None:
            intervals = self.intervals.apply_add(layer, [bounds.intervals for bounds in inputs])
        lower = (
            tf.add_n([bounds.lower_weights for bounds in inputs]),
            tf.add_n([bounds.lower_offsets for bounds in inputs]),
        )
        if all(bounds._shared() for bounds in inputs):
            return self._new(lower, lower, intervals)
        upper = (
            tf.add_n([bounds.upper_weights for bounds in inputs]),
            tf.add_n([bounds.upper_offsets for bounds in inputs]),
        )
        return self._new(lower, upper, intervals)

    def apply_relu(self, layer):
        """The relaxation of the module docstring, from the ranges clipped to the IBP bounds."""
        lower_range = self._clip(*self._range(self.lower_weights, self.lower_offsets))
        if self._shared():
            upper_range = lower_range
        else:
            upper_range = self._clip(*self._range(self.upper_weights, self.upper_offsets))
        lower_slope = propagation.relu_lower_slope(*lower_range)
        upper_slope, upper_intercept = propagation.relu_upper_line(*upper_range)
        intervals = None
        if self.intervals is not None:
            intervals = interval.IntervalBounds(
                tf.nn.relu(lower_range[0]), tf.nn.relu(upper_range[1])
            )
        return self._new(
            (self.lower_weights * lower_slope[:, None], self.lower_offsets * lower_slope),
            (
                self.upper_weights * upper_slope[:, None],
                self.upper_offsets * upper_slope + upper_intercept,
            ),
            intervals,
        )

    def apply_specification(self, weights, offsets):
        """Through weights·t + offsets: a per-example linear map (a folded specification).

        Args:
          weights: (batch, n_spec, n) where t is (batch, n).
          offsets: (batch, n_spec).
        """
        weights = _float32(weights)
        offsets = _float32(offsets)
        positive = tf.nn.relu(weights)
        negative = weights - positive

        def side(same, other):
            (same_weights, same_offsets), (other_weights, other_offsets) = same, other
            return (
                tf.einsum("bsk,bnk->bns", positive, same_weights)
                + tf.einsum("bsk,bnk->bns", negative, other_weights),
                tf.einsum("bsk,bk->bs", positive, same_offsets)
                + tf.einsum("bsk,bk->bs", negative, other_offsets)
                + offsets,
            )

        lower = (self.lower_weights, self.lower_offsets)
        upper = (self.upper_weights, self.upper_offsets)
        return self._new(
            side(lower, upper),
            side(upper, lower),
            self._ibp("apply_specification", weights, offsets),
        )


def symbolic_specification_bounds(network, box, spec, intersect=True):
    """Symbolic interval bounds of C·network(x) for x in `box`, C folded into the last dense layer.

    Args:
      network: a functional model whose logits come from a dense layer.
      box: `IntervalBounds` of the input (e.g. `IntervalBounds.from_linf`).
      spec: (batch, n_spec, n_classes) specification C
        (`specification.margin_specification`).
      intersect: whether to intersect with IBP bounds at every ReLU and at
        the end (never looser than `interval.specification_bounds`).

    Returns:
      `IntervalBounds` of shape (batch, n_spec).

    Raises:
      UnsupportedLayerError: a layer the bounds cannot handle, named.
    """
    last = specification.final_dense(network)
    start = SymbolicIntervalBounds.from_box(box, intersect=intersect)
    values = propagation.propagate_layers(network, start, stop_before=last.name)
    inputs = values[propagation.producer(last.input).name]
    folded = specification.fold(spec, kinds.kernel(last), last.bias)
    return inputs.apply_specification(*folded).concretize()
