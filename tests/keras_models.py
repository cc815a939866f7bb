"""Keras ResNets as Keras's CIFAR-10 ResNet example builds them (functional API, softmax head, NHWC), for the tests
and scripts/keras_cifar.py: v1 (depth 6n+2, basic blocks) and v2 (depth 9n+2, pre-activation bottlenecks), and the
data that example trains on: images scaled to [0, 1] less their per-pixel mean."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")


def _keras() -> Any:
    import keras

    return keras


def resnet_layer(x: Any, filters: int = 16, kernel: int = 3, strides: int = 1, activation: str | None = "relu",
                 batch_norm: bool = True, conv_first: bool = True) -> Any:
    """Conv2D-BatchNorm-Activation (v1) or BatchNorm-Activation-Conv2D (v2), as the example's `resnet_layer`."""
    layers = _keras().layers
    conv = layers.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer="he_normal",
                         kernel_regularizer=_keras().regularizers.l2(1e-4))
    if conv_first:
        x = conv(x)
        if batch_norm:
            x = layers.BatchNormalization()(x)
        return layers.Activation(activation)(x) if activation else x
    if batch_norm:
        x = layers.BatchNormalization()(x)
    if activation:
        x = layers.Activation(activation)(x)
    return conv(x)


def resnet_v1(input_shape: tuple[int, int, int] = (32, 32, 3), depth: int = 20, classes: int = 10) -> Any:
    """The example's ResNet v1: 3 stages of (depth - 2) / 6 basic blocks, 16/32/64 filters, softmax head."""
    keras = _keras()
    if (depth - 2) % 6:
        raise ValueError("depth must be 6n+2 (20, 32, 44, 56, ...)")
    layers, filters, blocks = keras.layers, 16, (depth - 2) // 6
    inputs = keras.Input(shape=input_shape)
    x = resnet_layer(inputs)
    for stack in range(3):
        for block in range(blocks):
            strides = 2 if stack > 0 and block == 0 else 1
            y = resnet_layer(x, filters, strides=strides)
            y = resnet_layer(y, filters, activation=None)
            if strides == 2:  # linear projection of the shortcut
                x = resnet_layer(x, filters, kernel=1, strides=strides, activation=None, batch_norm=False)
            x = layers.Activation("relu")(layers.add([x, y]))
        filters *= 2
    x = layers.Flatten()(layers.AveragePooling2D(pool_size=x.shape[1])(x))
    outputs = layers.Dense(classes, activation="softmax", kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}_v1")


def resnet_v2(input_shape: tuple[int, int, int] = (32, 32, 3), depth: int = 29, classes: int = 10) -> Any:
    """The example's ResNet v2: pre-activation bottleneck blocks, 3 stages of (depth - 2) / 9 blocks."""
    keras = _keras()
    if (depth - 2) % 9:
        raise ValueError("depth must be 9n+2 (29, 56, 110, ...)")
    layers, filters_in, blocks = keras.layers, 16, (depth - 2) // 9
    inputs = keras.Input(shape=input_shape)
    x = resnet_layer(inputs, filters_in, conv_first=True)
    for stage in range(3):
        for block in range(blocks):
            activation, batch_norm, strides = "relu", True, 1
            if stage == 0:
                filters_out = filters_in * 4
                if block == 0:
                    activation, batch_norm = None, False
            else:
                filters_out = filters_in * 2
                strides = 2 if block == 0 else 1
            y = resnet_layer(x, filters_in, kernel=1, strides=strides, activation=activation, batch_norm=batch_norm,
                             conv_first=False)
            y = resnet_layer(y, filters_in, conv_first=False)
            y = resnet_layer(y, filters_out, kernel=1, conv_first=False)
            if block == 0:
                x = resnet_layer(x, filters_out, kernel=1, strides=strides, activation=None, batch_norm=False)
            x = layers.add([x, y])
        filters_in = filters_out
    x = layers.Activation("relu")(layers.BatchNormalization()(x))
    x = layers.Flatten()(layers.AveragePooling2D(pool_size=x.shape[1])(x))
    outputs = layers.Dense(classes, activation="softmax", kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}_v2")


def fashion_rgb32(images: np.ndarray) -> np.ndarray:
    """Fashion-MNIST's 28x28 grey images as the 32x32 RGB ones the CIFAR models take: resized the way resnetx's
    preprocessing resizes (bilinear, antialiased), grey repeated into three channels, uint8."""
    from pipeline.model.preprocess import Preprocess

    pre = Preprocess(32, 32, 3, mean=(0.0,) * 3, std=(1 / 255,) * 3)  # -> 0..255 floats, NCHW
    x = pre(images)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def train_briefly(model: Any, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch: int = 64) -> Any:
    """A few SGD epochs on (x, y) (float inputs as the model takes them, integer labels): enough to be a classifier."""
    keras = _keras()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
    return model
