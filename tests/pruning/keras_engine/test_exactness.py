"""Exactness: filters that are exactly zero go first, and removing them changes nothing.

Each model below has, in every prunable group, the k lowest-L1 filters set to zero
(kernel and bias, in every producer the group ties together); BatchNorm keeps its
fresh statistics, so zero maps to zero. Pruning at k/n must remove exactly those
channels — the outputs stay equal to 1e-5. One test per coupler the engine supports.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

L = keras.layers
RNG = np.random.default_rng(0)


def zero_filters(layer, idx):
    """Zero output filters ``idx`` of a producer (kernel and bias)."""
    weights = layer.get_weights()
    if isinstance(layer, L.SeparableConv2D):
        weights[1][..., idx] = 0
        if len(weights) > 2:
            weights[2][idx] = 0
    elif isinstance(layer, L.Conv2DTranspose):
        weights[0][..., idx, :] = 0
        if len(weights) > 1:
            weights[1][idx] = 0
    else:
        weights[0][..., idx] = 0
        if len(weights) > 1:
            weights[1][idx] = 0
    layer.set_weights(weights)


def randomize(model):
    """Non-trivial weights everywhere (no filter is accidentally near zero)."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            continue
        if isinstance(layer, keras.Model):
            randomize(layer)
            continue
        layer.set_weights([np.where(np.abs(w) < 0.05, 0.2, w) + RNG.normal(0, 0.1, w.shape)
                           .astype(w.dtype) for w in layer.get_weights()])


def check(prune_file, tmp_path, model, zeroed, percent, input_shape, expected, omitted=(),
          randomized=False):
    """Zero ``zeroed`` ({layer: indices}), save, prune, compare outputs and widths."""
    if not randomized:
        randomize(model)
    for name, idx in zeroed.items():
        layer = model.get_layer(name) if "/" not in name else \
            model.get_layer(name.split("/")[0]).get_layer(name.split("/")[1])
        zero_filters(layer, idx)
    path = tmp_path / "model.keras"
    model.save(path)
    x = RNG.normal(size=(4, *input_shape)).astype("float32")
    before = model.predict(x, verbose=0)
    result, pruned = prune_file(path, percent, omitted)
    after = pruned.predict(x, verbose=0)
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-5)
    widths = {row["name"]: row["channels_after"] for row in result.report["layers"]}
    assert {k: widths[k] for k in expected} == expected, widths
    assert result.report["params_after"] < result.report["params_before"]
    return result, pruned


def test_sequential_with_batchnorm(prune_file, tmp_path):
    model = keras.Sequential([
        keras.Input((12, 12, 3)),
        L.Conv2D(8, 3, name="c1"), L.BatchNormalization(), L.ReLU(),
        L.Conv2D(10, 3, name="c2"), L.MaxPooling2D(),
        L.GlobalAveragePooling2D(), L.Dense(6, name="d1"), L.Dense(3, name="out"),
    ])
    _, pruned = check(prune_file, tmp_path, model,
                      {"c1": [1, 5], "c2": [0, 3, 7], "d1": [2, 4]},
                      percent=0.25, input_shape=(12, 12, 3),
                      expected={"c1": 6, "c2": 7, "d1": 4, "out": 3})
    # The rewrite builds with zero initializers for speed; the saved config must
    # still name the user's own.
    for name in ("c1", "d1"):
        assert pruned.get_layer(name).get_config()["kernel_initializer"] == \
            model.get_layer(name).get_config()["kernel_initializer"]
        assert pruned.get_layer(name).get_config()["kernel_initializer"]["class_name"] != "Zeros"


def test_residual_add(prune_file, tmp_path):
    inp = keras.Input((10, 10, 4))
    a = L.Conv2D(8, 3, padding="same", name="a")(inp)
    b = L.Conv2D(8, 3, padding="same", name="b")(L.ReLU()(a))
    s = L.Add()([a, b])
    c = L.Conv2D(4, 1, name="c")(s)
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(c))
    model = keras.Model(inp, out)
    # a and b are one group (tied by the Add): zero the same channels in both.
    check(prune_file, tmp_path, model, {"a": [2, 6], "b": [2, 6], "c": [1]},
          percent=0.25, input_shape=(10, 10, 4), expected={"a": 6, "b": 6, "c": 3})


def test_concatenate_offsets(prune_file, tmp_path):
    inp = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a")(inp)
    b = L.Conv2D(8, 3, padding="same", name="b")(inp)
    cat = L.Concatenate()([a, b])
    c = L.Conv2D(5, 3, name="c")(cat)
    out = L.Dense(3, name="out")(L.Flatten()(c))
    model = keras.Model(inp, out)
    check(prune_file, tmp_path, model, {"a": [0, 3], "b": [1, 2, 5, 7], "c": [4, 0, 2]},
          percent=0.5, input_shape=(8, 8, 3), expected={"a": 2, "b": 4, "c": 2})


def test_flatten_into_dense(prune_file, tmp_path):
    model = keras.Sequential([
        keras.Input((6, 6, 2)), L.Conv2D(6, 3, name="c1"), L.Flatten(),
        L.Dense(8, name="d1"), L.Dense(2, name="out"),
    ])
    check(prune_file, tmp_path, model, {"c1": [0, 4], "d1": [3, 5, 6]}, percent=1 / 3,
          input_shape=(6, 6, 2), expected={"c1": 4, "d1": 5})


def test_depthwise_and_separable(prune_file, tmp_path):
    model = keras.Sequential([
        keras.Input((10, 10, 3)), L.Conv2D(6, 3, name="c1"),
        L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        L.SeparableConv2D(8, 3, name="sep"), L.GlobalMaxPooling2D(), L.Dense(2, name="out"),
    ])
    randomize(model)
    # A zeroed input channel of the depthwise layer yields its bias: zero those too.
    kernel, bias = model.get_layer("dw").get_weights()
    bias[[2, 3, 8, 9]] = 0
    model.get_layer("dw").set_weights([kernel, bias])
    check(prune_file, tmp_path, model, {"c1": [1, 4], "sep": [0, 5, 6]}, percent=1 / 3,
          input_shape=(10, 10, 3), expected={"c1": 4, "sep": 5}, randomized=True)


def test_transposed_convolution(prune_file, tmp_path):
    model = keras.Sequential([
        keras.Input((5, 5, 2)), L.Conv2DTranspose(6, 3, strides=2, name="up"),
        L.Conv2D(4, 3, name="c"), L.Flatten(), L.Dense(2, name="out"),
    ])
    check(prune_file, tmp_path, model, {"up": [2, 3], "c": [1]}, percent=1 / 3,
          input_shape=(5, 5, 2), expected={"up": 4, "c": 3})


def test_nested_model_and_shared_layer(prune_file, tmp_path):
    inner_in = keras.Input((8, 8, 6))
    inner_out = L.BatchNormalization()(L.Conv2D(6, 3, padding="same", name="ic")(inner_in))
    inner = keras.Model(inner_in, inner_out, name="block")
    inp = keras.Input((8, 8, 3))
    stem = L.Conv2D(6, 3, padding="same", name="stem")(inp)
    shared = L.Conv2D(4, 1, name="shared")
    left = shared(inner(stem))
    right = shared(L.Conv2D(6, 1, name="side")(stem))
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(L.Add()([left, right])))
    model = keras.Model(inp, out)
    # 'shared' is called on the inner block's output and on 'side': its input channels
    # tie 'ic' and 'side' into one group.
    check(prune_file, tmp_path, model,
          {"stem": [0, 5], "block/ic": [1, 2], "side": [1, 2], "shared": [3]},
          percent=1 / 3, input_shape=(8, 8, 3),
          expected={"stem": 4, "block/ic": 4, "side": 4, "shared": 3})


def test_omitted_layer_keeps_outputs_but_inputs_shrink(prune_file, tmp_path):
    model = keras.Sequential([
        keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="c1"), L.Conv2D(8, 3, name="keep"),
        L.Flatten(), L.Dense(2, name="out"),
    ])
    result, pruned = check(prune_file, tmp_path, model, {"c1": [0, 1, 2, 3]}, percent=0.5,
                           input_shape=(8, 8, 3), expected={"c1": 4, "keep": 8},
                           omitted=("keep",))
    statuses = {row["name"]: row["status"] for row in result.report["layers"]}
    assert statuses == {"c1": "pruned", "keep": "omitted", "out": "output"}
    assert pruned.get_layer("keep").kernel.shape[-2] == 4


def test_unknown_omitted_name_lists_valid_layers(prune_file, tmp_path):
    from edgeai.pruning import PruningError

    model = keras.Sequential([keras.Input((4,)), L.Dense(4, name="d1"), L.Dense(2, name="o")])
    model.save(tmp_path / "m.keras")
    with pytest.raises(PruningError, match="fc9.*d1, o"):
        prune_file(tmp_path / "m.keras", 0.5, omitted=("fc9",))


def test_op_residual_squeeze_excite_and_grouped_depthwise(prune_file, tmp_path):
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inp)
    d = L.Conv2D(8, 3, padding="same", groups=8, name="dwconv")(x)  # ConvNeXt style
    se = L.GlobalAveragePooling2D()(d)
    se = L.Reshape((1, 1, 8))(se)
    se = L.Conv2D(4, 1, activation="relu", name="squeeze")(se)
    se = L.Conv2D(8, 1, activation="sigmoid", name="excite")(se)
    y = L.Multiply()([d, se])
    y = x + y  # a keras.ops node, not a layer
    out = L.Dense(2, name="out")(L.GlobalAveragePooling2D()(y))
    model = keras.Model(inp, out)
    randomize(model)
    # 'stem' and 'excite' are tied through the Multiply and the op-node Add. A zeroed
    # stem channel makes dwconv's channel its bias: zero that bias as well. excite's
    # zeroed channel gives sigmoid(0)=0.5, times dwconv's zero: still zero.
    kernel, bias = model.get_layer("dwconv").get_weights()
    bias[[2, 5]] = 0
    model.get_layer("dwconv").set_weights([kernel, bias])
    check(prune_file, tmp_path, model, {"stem": [2, 5], "excite": [2, 5], "squeeze": [1]},
          percent=0.25, input_shape=(8, 8, 3),
          expected={"stem": 6, "dwconv": 6, "excite": 6, "squeeze": 3}, randomized=True)


def test_grouped_convolution_loses_the_same_positions_per_group(prune_file, tmp_path):
    model = keras.Sequential([
        keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="c1"),
        L.Conv2D(8, 3, groups=2, name="grouped"), L.GlobalAveragePooling2D(),
        L.Dense(2, name="out"),
    ])
    # Blocks of 4 channels: position 1 of each block of c1, position 2 of 'grouped'.
    check(prune_file, tmp_path, model, {"c1": [1, 5], "grouped": [2, 6]}, percent=0.25,
          input_shape=(8, 8, 3), expected={"c1": 6, "grouped": 6})


def test_group_normalization_stays_valid(prune_file, tmp_path):
    model = keras.Sequential([
        keras.Input((8, 8, 3)), L.Conv2D(8, 3, name="c1"), L.GroupNormalization(groups=4),
        L.Conv2D(6, 3, name="c2"), L.GlobalAveragePooling2D(), L.Dense(2, name="out"),
    ])
    path = tmp_path / "gn.keras"
    model.save(path)
    result, pruned = prune_file(path, 0.5)
    widths = {row["name"]: row["channels_after"] for row in result.report["layers"]}
    assert widths["c1"] == 4  # one of the two channels of each of the 4 groups
    assert pruned.layers[1].groups == 4
    assert pruned.predict(np.zeros((1, 8, 8, 3)), verbose=0).shape == (1, 2)
