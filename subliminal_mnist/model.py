"""The paper's MLP: 784 -> 256 -> 256 -> (10 class logits + m auxiliary logits).

The auxiliary ("ghost") logits are ordinary outputs of the last layer that no
loss of the teacher ever touches. They carry the teacher's hidden state to a
student: distilling only them, on noise, teaches the student MNIST when both
start from the same initialization.

The module is Flax NNX; everything else in the package handles its parameters
as a plain pytree (`nnx.State`) through the pure pair `Architecture.init` /
`Architecture.apply`, so that seeds can be a `jax.vmap` axis and the one
training loop stays model-agnostic.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

INPUT_SIZE = 28 * 28

# N(0, 1/fan_in) weights, as in the paper's code (torch normal_(0, 1/sqrt(d_in)));
# untruncated, unlike the usual LeCun-normal initializer.
_weight_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal")


class MLP(nnx.Module):
    """ReLU MLP whose last layer has `num_classes + num_aux` outputs.

    Args:
      layer_sizes: input size, hidden sizes, output size, e.g. (784, 256, 256, 13).
    Call: images (..., 784) -> logits (..., num_classes + num_aux).
    """

    def __init__(self, layer_sizes: tuple[int, ...], *, rngs: nnx.Rngs):
        self.layers = nnx.List([
            nnx.Linear(d_in, d_out, kernel_init=_weight_init, bias_init=nnx.initializers.zeros, rngs=rngs)
            for d_in, d_out in zip(layer_sizes[:-1], layer_sizes[1:])
        ])  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


Params = nnx.State


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Sizes of the MLP, and its pure init and apply.

    Frozen and hashable: an `Architecture` is a static argument under `jit`.
    """

    hidden_sizes: tuple[int, ...] = (256, 256)
    num_classes: int = 10
    num_aux: int = 3

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        return (INPUT_SIZE, *self.hidden_sizes, self.num_classes + self.num_aux)

    @property
    def class_indices(self) -> tuple[int, ...]:
        """Output indices of the class logits (the teacher's task)."""
        return tuple(range(self.num_classes))

    @property
    def aux_indices(self) -> tuple[int, ...]:
        """Output indices of the auxiliary logits (never trained by the teacher)."""
        return tuple(range(self.num_classes, self.num_classes + self.num_aux))

    @property
    def all_indices(self) -> tuple[int, ...]:
        return self.class_indices + self.aux_indices

    def output_mask(self, indices: tuple[int, ...]) -> np.ndarray:
        """The outputs `indices` as a boolean mask (K,), how the training loop's losses select outputs."""
        return np.isin(np.arange(self.num_classes + self.num_aux), indices)

    def init(self, key: jax.Array) -> Params:
        """Fresh parameters for one seed; `jax.vmap` it over a batch of keys."""
        return nnx.state(MLP(self.layer_sizes, rngs=nnx.Rngs(params=key)))

    def apply(self, params: Params, images: jax.Array) -> jax.Array:
        """images (..., 784) -> logits (..., num_classes + num_aux)."""
        return nnx.merge(self._graphdef(), params)(images)

    # The architecture itself is the apply function handed to the training loop: it
    # compares and hashes by value, so equal architectures share one compiled loop
    # (a bound method would not: it compares its instance by identity).
    __call__ = apply

    def _graphdef(self) -> nnx.GraphDef:
        # The structure only: built abstractly (no arrays) at trace time.
        abstract = nnx.eval_shape(lambda: MLP(self.layer_sizes, rngs=nnx.Rngs(0)))
        return nnx.graphdef(abstract)


def accuracy(logits: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """Share of argmax over the class logits that equal the labels. logits (N, K), labels (N,)."""
    return jnp.mean(jnp.argmax(logits[..., :num_classes], axis=-1) == labels)
