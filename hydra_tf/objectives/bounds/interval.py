"""Interval bound propagation (IBP; Gowal et al., 2018).

`IntervalBounds` holds an elementwise lower and upper bound of one tensor,
(batch, ...). An affine layer maps the box's centre through the layer (with
its bias) and its radius through the absolute kernel (without bias), which
gives the tightest box around the image of a box; monotone layers (ReLU,
pooling) map the two ends. Every operation is a plain TensorFlow op, so a
loss on the bounds has gradients to the kernels and, through the masked
kernel of a score layer, straight through the mask to the scores.

Bounds are float32 whatever the network's dtype policy: a float16 box would
round its ends and could exclude points it must contain.
"""

import tensorflow as tf

from hydra_tf.models import convolution
from hydra_tf.models import kinds
from hydra_tf.objectives.bounds import propagation
from hydra_tf.objectives.bounds import specification


def _float32(value):
    return tf.cast(tf.convert_to_tensor(value), tf.float32)


class IntervalBounds(propagation.Bounds):
    """Elementwise bounds lower <= x <= upper of one tensor x.

    Args:
      lower: (batch, ...) lower bounds.
      upper: (batch, ...) upper bounds, of the same shape.
    """

    def __init__(self, lower, upper):
        self.lower = _float32(lower)
        self.upper = _float32(upper)

    @classmethod
    def from_linf(cls, x, eps, domain=(0.0, 1.0)):
        """The L-inf ball of radius `eps` around `x`, clipped to the data domain.

        Args:
          x: (batch, ...) inputs, inside `domain`.
          eps: radius; a scalar or anything that broadcasts against `x`.
          domain: (low, high) of the data ([0, 1] for our images), or None
            for no clipping. The box is clipped to the domain, never to the
            batch's own minimum and maximum (which the CROWN-IBP reference
            code does, and which can leave out valid inputs).
        """
        x = _float32(x)
        eps = _float32(eps)
        lower, upper = x - eps, x + eps
        if domain is not None:
            low, high = domain
            lower = tf.clip_by_value(lower, low, high)
            upper = tf.clip_by_value(upper, low, high)
        return cls(lower, upper)

    @classmethod
    def from_centre(cls, centre, radius):
        """The box centre +- radius (radius >= 0)."""
        return cls(centre - radius, centre + radius)

    @property
    def centre(self):
        return (self.lower + self.upper) / 2.0

    @property
    def radius(self):
        return (self.upper - self.lower) / 2.0

    @property
    def shape(self):
        return self.lower.shape

    def _affine(self, linear, kernel, bias):
        """Bounds of linear(x, kernel) + bias, for a map linear in x and in kernel."""
        kernel = _float32(kernel)
        centre = linear(self.centre, kernel)
        if bias is not None:
            centre = centre + _float32(bias)
        return self.from_centre(centre, linear(self.radius, tf.abs(kernel)))

    def apply_dense(self, layer, kernel, bias):
        return self._affine(lambda x, k: tf.tensordot(x, k, [[-1], [0]]), kernel, bias)

    def apply_conv2d(self, layer, kernel, bias):
        strides, padding = propagation.conv2d_arguments(layer)
        return self._affine(
            lambda x, k: convolution.conv2d(x, k, strides[1:3], padding), kernel, bias
        )

    def apply_batch_norm(self, layer, scale, offset):
        scale = _float32(scale)
        return self.from_centre(self.centre * scale + _float32(offset), self.radius * tf.abs(scale))

    def apply_specification(self, weights, offsets):
        """Bounds of weights·x + offsets: a per-example linear map (a folded specification).

        Args:
          weights: (batch, n_spec, n) where x is (batch, n).
          offsets: (batch, n_spec).
        """
        centre = tf.einsum("bsi,bi->bs", weights, self.centre) + offsets
        return self.from_centre(centre, tf.einsum("bsi,bi->bs", tf.abs(weights), self.radius))

    def apply_relu(self, layer):
        return type(self)(tf.nn.relu(self.lower), tf.nn.relu(self.upper))

    def apply_flatten(self, layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise self._unsupported(layer)
        size = [tf.shape(self.lower)[0], -1]
        return type(self)(tf.reshape(self.lower, size), tf.reshape(self.upper, size))

    def apply_add(self, layer, inputs):
        return type(self)(tf.add_n([b.lower for b in inputs]), tf.add_n([b.upper for b in inputs]))

    def _pool(self, layer, pool):
        ksize, strides, padding = propagation.pool_arguments(layer)
        return type(self)(
            pool(self.lower, ksize, strides, padding), pool(self.upper, ksize, strides, padding)
        )

    def apply_max_pool(self, layer):
        return self._pool(layer, tf.nn.max_pool2d)

    def apply_avg_pool(self, layer):
        # A mean with non-negative weights: monotone in every input.
        return self._pool(layer, tf.nn.avg_pool2d)

    def apply_global_avg_pool(self, layer):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise self._unsupported(layer)
        keepdims = bool(getattr(layer, "keepdims", False))
        return type(self)(
            tf.reduce_mean(self.lower, axis=[1, 2], keepdims=keepdims),
            tf.reduce_mean(self.upper, axis=[1, 2], keepdims=keepdims),
        )


def specification_bounds(network, box, spec, intervals=None):
    """IBP bounds of C·network(x) for x in `box`, with C folded into the last dense layer.

    Args:
      network: a functional model whose logits come from a dense layer.
      box: `IntervalBounds` of the input.
      spec: (batch, n_spec, n_classes) specification C.
      intervals: the IBP bounds of the layers before the last dense layer, from
        `propagate_layers(network, box, stop_before=final_dense(network).name)`,
        to share one pass with other bounds (CROWN-IBP); computed if None.

    Returns:
      `IntervalBounds` of shape (batch, n_spec).
    """
    last = specification.final_dense(network)
    if intervals is None:
        intervals = propagation.propagate_layers(network, box, stop_before=last.name)
    inputs = intervals[propagation.producer(last.input).name]
    return inputs.apply_specification(*specification.fold(spec, kinds.kernel(last), last.bias))
