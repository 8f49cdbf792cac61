"""The small Keras model of the tf-keras-vis parity references, built the same way on every
backend (imported by ``make_references.py`` under TensorFlow and by the tests under torch)."""

from __future__ import annotations

from typing import Any

#: The input of the references: (N, H, W, C), seeded in ``make_references.py``.
SHAPE = (2, 32, 32, 3)
#: The classes explained, one per sample.
CLASSES = [1, 3]


def build(keras: Any) -> Any:
    """Convolutions with ReLU activations (in the layer and as a layer), batch norm, pooling and
    a softmax head: what the VGG16 lab's model has, small."""
    inputs = keras.Input(SHAPE[1:], name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.MaxPooling2D(name="pool1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.Activation("relu", name="relu2")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(5, activation="softmax", name="predictions")(h)
    return keras.Model(inputs, outputs, name="small")
