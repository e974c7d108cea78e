"""Recurrent layers in the Keras engine: units pruned, gate blocks sliced alike.

Each model comes from the sequence zoo with, in every prunable group, the units the
plan will remove zeroed (kernel, recurrent kernel and bias columns in every gate
block: such a unit stays 0); removing them must leave the outputs unchanged, the
job's own exactness check must pass, and the pruned file must load back smaller.
"""
from __future__ import annotations

import keras
import numpy as np

from tests.pruning.keras_engine.sequence_zoo import (
    bilstm_tagger,
    conv_gru_speech,
    keyword_spotting_lstm,
    prune_keras,
    prune_zeroed,
    randomize,
    video_convlstm,
)


def gate_columns(units, width, gates):
    return [g * width + u for g in range(gates) for u in units]


def kept(n, removed):
    return [i for i in range(n) if i not in set(removed)]


def test_keyword_spotting_conv_reshape_lstm(tmp_path):
    model, shape = keyword_spotting_lstm()
    randomize(model)
    original = [w.copy() for w in model.get_layer("lstm").get_weights()]
    _, pruned, widths = prune_zeroed(tmp_path / "kws.keras", model,
                                     {"conv": [1, 5], "lstm": [0, 4, 7]}, 0.25, shape)
    assert widths == {"conv": 6, "lstm": 9, "out": 4}
    # Reshape (12, 10, 8) -> (12, 80): channel c is every 8th feature of a frame.
    features = [f for f in range(80) if f % 8 not in (1, 5)]
    keep = gate_columns(kept(12, [0, 4, 7]), 12, 4)
    kernel, recurrent, bias = pruned.get_layer("lstm").get_weights()
    np.testing.assert_array_equal(kernel, original[0][features][:, keep])
    np.testing.assert_array_equal(recurrent, original[1][kept(12, [0, 4, 7])][:, keep])
    np.testing.assert_array_equal(bias, original[2][keep])
    assert pruned.get_layer("frames").target_shape == (12, 60)


def test_conv_gru_both_reset_modes(tmp_path):
    model, shape = conv_gru_speech()
    randomize(model)
    bias = model.get_layer("gru1").get_weights()[2].copy()
    assert bias.shape == (2, 24)  # reset_after: input and recurrent biases
    _, pruned, widths = prune_zeroed(tmp_path / "gru.keras", model,
                                     {"conv": [0, 2, 4, 6, 8], "gru1": [1, 3, 5, 7],
                                      "gru2": [0, 1, 2]}, 0.5, shape)
    assert widths == {"conv": 5, "gru1": 4, "gru2": 3, "out": 3}
    np.testing.assert_array_equal(pruned.get_layer("gru1").get_weights()[2],
                                  bias[:, gate_columns([0, 2, 4, 6], 8, 3)])
    assert pruned.get_layer("gru2").get_weights()[2].shape == (9,)
    assert pruned.get_layer("gru2").reset_after is False


def test_bidirectional_lstm_tagger(tmp_path):
    model, shape = bilstm_tagger()
    randomize(model)
    # Both directions lose the same positions (Keras builds them alike).
    result, pruned, widths = prune_zeroed(tmp_path / "tagger.keras", model,
                                          {"proj": [0, 5, 9], "bilstm": [2, 6], "td": [1, 4]},
                                          0.25, shape)
    assert widths == {"proj": 9, "bilstm": 12, "td": 4, "tags": 4}
    layer = pruned.get_layer("bilstm")
    assert layer.forward_layer.units == layer.backward_layer.units == 6
    assert pruned.get_layer("td").layer.units == 4
    statuses = {row["name"]: row["status"] for row in result.report["layers"]}
    assert statuses == {"proj": "pruned", "bilstm": "pruned", "td": "pruned", "tags": "output"}


def test_convlstm_and_simple_rnn_through_time_distributed_flatten(tmp_path):
    model, shape = video_convlstm()
    randomize(model)
    _, pruned, widths = prune_zeroed(tmp_path / "clip.keras", model,
                                     {"convlstm": [0, 3], "rnn": [1, 2]}, 1 / 3, shape)
    assert widths == {"convlstm": 4, "rnn": 3, "out": 2}
    # TimeDistributed(Flatten) of (8, 8, 4): the SimpleRNN reads 256 features.
    assert pruned.get_layer("rnn").get_weights()[0].shape == (8 * 8 * 4, 3)


def test_refused_recurrent_layers_are_named_with_the_reason(tmp_path):
    inputs = keras.Input((9, 4))
    x = keras.layers.Conv1D(6, 3, name="c")(inputs)
    x = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True),
                                   merge_mode="sum", name="bi")(x)
    x = keras.layers.Permute((2, 1), name="swap")(x)  # the units are no longer last
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(keras.layers.Flatten()(x)))
    model.save(tmp_path / "refused.keras")
    result, pruned = prune_keras(tmp_path / "refused.keras", 0.5)
    rows = {row["name"]: row for row in result.report["layers"]}
    assert rows["c"]["channels_after"] == 3  # the GRU's inputs still follow
    assert rows["bi"]["status"] == "unsupported" and rows["bi"]["channels_after"] == 12
    assert "Permute(2, 1) moves the channel axis" in rows["bi"]["reason"]
    assert pruned.get_layer("bi").forward_layer.get_weights()[0].shape == (3, 18)
