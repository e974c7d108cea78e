"""MultiHeadAttention heads, 1-D and 3-D convolutions, and channels through reshapes.

As in test_recurrent: what the plan removes is zeroed first (whole heads: their
query, key, value and output slices), and pruning must change nothing.
"""
from __future__ import annotations

import keras
import numpy as np

from tests.pruning.keras_engine.sequence_zoo import (
    conv1d_sensor,
    prune_keras,
    prune_zeroed,
    randomize,
    transformer_block,
)

L = keras.layers


def test_transformer_block_loses_whole_heads(tmp_path):
    model, shape = transformer_block()
    randomize(model)
    original = [w.copy() for w in model.get_layer("mha").get_weights()]
    result, pruned, widths = prune_zeroed(tmp_path / "block.keras", model,
                                          {"mha": [1, 3], "ff1": list(range(0, 32, 2))},
                                          0.5, shape)
    assert widths["mha"] == 2 and widths["ff1"] == 16
    attention = pruned.get_layer("mha")
    assert attention.num_heads == 2 and attention.key_dim == 4
    query, _, _, _, _, _, output, output_bias = attention.get_weights()
    np.testing.assert_array_equal(query, original[0][:, [0, 2]])
    np.testing.assert_array_equal(output, original[6][[0, 2]])
    np.testing.assert_array_equal(output_bias, original[7])  # the output width stays
    rows = {row["name"]: row for row in result.report["layers"]}
    for name in ("embed", "ff2"):  # the residual stream is tied to the attention output
        assert rows[name]["status"] == "unsupported" and rows[name]["channels_after"] == 16
        assert "MultiHeadAttention keeps its output width" in rows[name]["reason"]


def test_conv1d_sensor_with_separable_and_depthwise(tmp_path):
    model, shape = conv1d_sensor()
    randomize(model)
    # A zeroed input channel of the depthwise layer yields its bias: zero that too.
    kernel, bias = model.get_layer("dw").get_weights()
    bias[[2 * c + m for c in (1, 7, 10, 14) for m in (0, 1)]] = 0
    model.get_layer("dw").set_weights([kernel, bias])
    _, pruned, widths = prune_zeroed(tmp_path / "sensor.keras", model,
                                     {"c1": [0, 5, 9], "sep": [1, 7, 10, 14],
                                      "c2": [2, 3, 8]}, 0.25, shape)
    assert widths == {"c1": 9, "sep": 12, "c2": 7, "out": 5}
    assert pruned.get_layer("dw").get_weights()[0].shape == (3, 12, 2)


def test_conv3d(tmp_path):
    inputs = keras.Input((6, 6, 6, 2))
    x = L.Conv3D(6, 3, name="c3")(inputs)
    x = L.Conv3D(4, 3, name="c4")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(L.GlobalAveragePooling3D()(x)))
    randomize(model)
    _, _, widths = prune_zeroed(tmp_path / "c3.keras", model,
                                {"c3": [1, 4], "c4": [2]}, 1 / 3, (6, 6, 6, 2))
    assert widths == {"c3": 4, "c4": 3, "out": 2}


def test_channels_through_permute_and_reshapes(tmp_path):
    inputs = keras.Input((12, 8, 1))
    x = L.Conv2D(6, 3, padding="same", name="c")(inputs)
    x = L.Permute((2, 1, 3), name="swap")(x)  # (8, 12, 6): channels stay last
    x = L.Reshape((8, 72), name="frames")(x)  # channel c: every 6th feature
    x = L.Dense(16, name="d")(x)
    x = L.Reshape((8, 4, 4), name="split")(x)  # feature i of each block of 4 tied
    x = L.Dense(5, name="per_head")(x)
    x = L.Reshape((-1,), name="flat")(x)
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    randomize(model)
    # 'split' ties d's channels i, i+4, i+8, i+12: zero positions 1 and 3 of each block.
    _, pruned, widths = prune_zeroed(tmp_path / "reshape.keras", model,
                                     {"c": [0, 4, 5], "d": [1, 3, 5, 7, 9, 11, 13, 15],
                                      "per_head": [0, 2, 4]}, 0.5, (12, 8, 1))
    assert widths == {"c": 3, "d": 8, "per_head": 2, "out": 2}
    assert pruned.get_layer("frames").target_shape == (8, 36)
    assert pruned.get_layer("split").target_shape == (8, 4, 2)
    assert pruned.get_layer("flat").target_shape == (-1,)


def test_reshape_that_breaks_channels_keeps_them_and_says_why(tmp_path):
    inputs = keras.Input((9, 4))
    odd = L.Conv1D(10, 3, name="odd")(inputs)  # (7, 10)
    odd = L.Reshape((10, 7), name="scramble")(odd)  # no feature is one channel
    even = L.Conv1D(8, 3, name="even")(inputs)
    x = L.Concatenate()([L.Flatten()(odd), L.Flatten()(even)])
    model = keras.Model(inputs, L.Dense(2, name="out")(x))
    model.save(tmp_path / "scramble.keras")
    result, _ = prune_keras(tmp_path / "scramble.keras", 0.5)
    rows = {row["name"]: row for row in result.report["layers"]}
    assert rows["even"]["channels_after"] == 4
    assert rows["odd"]["status"] == "unsupported" and rows["odd"]["channels_after"] == 10
    assert "Reshape (7, 10) -> (10, 7) does not keep the 10 channels" in rows["odd"]["reason"]
    assert result.report["verification"]["exactness"]["passed"] is True


def test_an_attention_layer_carries_its_heads_so_that_ommitted_keeps_them():
    from edgeai.pruning.keras_engine.analysis import analyse

    model, _ = transformer_block()
    analysis, _ = analyse(model)
    heads = next(group for group in analysis.groups if group.members == ["mha"])
    assert "mha" in heads.carriers and len(heads.scores) == 4 and heads.blocked is None
