"""Small Keras speech, time-series, sensor and language models (a few thousand
parameters each), built as a user would; the engine tests prune each one and the
end-to-end breadth test sends two of them through the service.

Every builder returns ``(model, input_shape)`` with layer names the tests refer to.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

L = keras.layers
RNG = np.random.default_rng(13)


def keyword_spotting_lstm():
    """Spectrogram (time, frequency, 1) -> Conv2D -> BatchNorm -> Reshape -> LSTM."""
    inputs = keras.Input((12, 10, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Reshape((12, 10 * 8), name="frames")(x)  # each frame: frequency x channels
    x = L.LSTM(12, name="lstm")(x)
    return keras.Model(inputs, L.Dense(4, name="out")(x), name="kws_lstm"), (12, 10, 1)


def conv_gru_speech():
    """Features (12, 6) -> Conv1D -> GRU (reset_after) -> GRU (reset_before)."""
    inputs = keras.Input((12, 6))
    x = L.Conv1D(10, 3, padding="same", activation="relu", name="conv")(inputs)
    x = L.GRU(8, return_sequences=True, name="gru1")(x)
    x = L.GRU(6, reset_after=False, name="gru2")(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x), name="conv_gru"), (12, 6)


def transformer_block():
    """Tokens (12, 8) -> Dense embedding -> MultiHeadAttention + LayerNorm -> FFN."""
    inputs = keras.Input((12, 8))
    x = L.Dense(16, name="embed")(inputs)
    attended = L.MultiHeadAttention(num_heads=4, key_dim=4, name="mha")(x, x)
    x = L.LayerNormalization(name="ln1")(L.Add()([x, attended]))
    hidden = L.Dense(32, activation="relu", name="ff1")(x)
    x = L.LayerNormalization(name="ln2")(L.Add()([x, L.Dense(16, name="ff2")(hidden)]))
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(3, name="out")(x), name="transformer"), (12, 8)


def conv1d_sensor():
    """Accelerometer windows (64, 3) -> Conv1D, SeparableConv1D, DepthwiseConv1D."""
    inputs = keras.Input((64, 3))
    x = L.Conv1D(12, 5, activation="relu", name="c1")(inputs)
    x = L.SeparableConv1D(16, 3, name="sep")(x)
    x = L.DepthwiseConv1D(3, depth_multiplier=2, name="dw")(x)
    x = L.MaxPooling1D()(x)
    x = L.Conv1D(10, 3, name="c2")(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(5, name="out")(x), name="sensor"), (64, 3)


def bilstm_tagger():
    """Token features (8, 7) -> Dense -> Bidirectional LSTM -> per-token Dense tags."""
    inputs = keras.Input((8, 7))
    x = L.Dense(12, name="proj")(inputs)
    x = L.Bidirectional(L.LSTM(8, return_sequences=True), name="bilstm")(x)
    x = L.TimeDistributed(L.Dense(6, activation="relu"), name="td")(x)
    return keras.Model(inputs, L.TimeDistributed(L.Dense(4), name="tags")(x),
                       name="tagger"), (8, 7)


def video_convlstm():
    """Clips (4, 8, 8, 2) -> ConvLSTM2D -> TimeDistributed(Flatten) -> SimpleRNN."""
    inputs = keras.Input((4, 8, 8, 2))
    x = L.ConvLSTM2D(6, 3, padding="same", return_sequences=True, name="convlstm")(inputs)
    x = L.TimeDistributed(L.Flatten(), name="per_frame")(x)
    x = L.SimpleRNN(5, name="rnn")(x)
    return keras.Model(inputs, L.Dense(2, name="out")(x), name="convlstm"), (4, 8, 8, 2)


ZOO = {builder.__name__: builder for builder in (
    keyword_spotting_lstm, conv_gru_speech, transformer_block, conv1d_sensor, bilstm_tagger,
    video_convlstm)}


# -- what the exactness tests zero --------------------------------------------------
def zero_units(layer, units):
    """Zero everything that produces ``units`` of ``layer``, so that they are exactly 0
    whatever the input, and have the lowest L1 norm: a dense or convolution layer's
    filters; a recurrent layer's columns in every gate block of its kernel, recurrent
    kernel and bias (each gate then sees 0: the unit's state and output stay 0), in
    both directions of a Bidirectional; an attention layer's heads (query, key, value
    and output slices)."""
    weights = layer.get_weights()
    inner = layer.layer if isinstance(layer, L.TimeDistributed) else layer
    if isinstance(inner, L.MultiHeadAttention):
        for index in (0, 2, 4):  # query, key, value kernels [in, heads, dim], biases
            weights[index][:, units] = 0
            weights[index + 1][units] = 0
        weights[6][units] = 0  # output kernel [heads, dim, out]
    elif isinstance(inner, (L.RNN, L.Bidirectional)):
        for start in range(0, len(weights), 3):  # kernel, recurrent kernel, bias
            kernel, recurrent, bias = weights[start:start + 3]
            width = recurrent.shape[-2]
            columns = [g * width + u for g in range(kernel.shape[-1] // width) for u in units]
            for array in (kernel, recurrent, bias):
                array[..., columns] = 0
    elif isinstance(inner, L.SeparableConv1D):
        weights[1][..., units] = 0
        weights[2][units] = 0
    else:
        weights[0][..., units] = 0
        weights[1][units] = 0
    layer.set_weights(weights)


def randomize(model):
    """Weights well away from zero everywhere (no unit is accidentally the weakest);
    BatchNormalization keeps its fresh statistics, so that zero stays zero."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization) or not layer.weights:
            continue
        layer.set_weights([np.where(np.abs(w) < 0.05, 0.2, w)
                           + RNG.normal(0, 0.1, w.shape).astype(w.dtype)
                           for w in layer.get_weights()])


def prune_keras(path: Path, percent: float, omitted=()):
    """Run the real engine on the saved model at ``path`` (latency not measured: it is
    not what these tests are about); returns (result, the pruned file loaded back)."""
    from edgeai.pruning import PruneJob
    from edgeai.pruning.keras_engine import KerasPruner

    out = path.parent / f"{path.stem}-work" / "out"
    out.mkdir(parents=True)
    job = PruneJob(framework="tensorflow", percent=percent, omitted=tuple(omitted),
                   inputs={"model": str(path)}, input_names={"model": path.name},
                   output_dir=str(out), output_stem="tmptest0001",
                   options={"measure": False})
    result = KerasPruner().prune(job)
    return result, keras.saving.load_model(out / result.artifact)


def prune_zeroed(path, model, zeroed, percent, input_shape, omitted=()):
    """Zero ``zeroed`` ({layer: units}) in ``model`` (already randomized), save it to
    ``path``, prune, and check what every exactness test checks: the pruned model, as
    loaded back from its file, gives the original's outputs; the job's own exactness
    check passed; the model is smaller. Returns (result, pruned model, widths)."""
    for name, units in zeroed.items():
        zero_units(model.get_layer(name), units)
    model.save(path)
    x = RNG.normal(size=(3, *input_shape)).astype("float32")
    before = np.asarray(model(x, training=False))  # eager: predict() would trace a graph
    result, pruned = prune_keras(path, percent, omitted)
    np.testing.assert_allclose(np.asarray(pruned(x, training=False)), before, atol=1e-5,
                               rtol=1e-5)
    report = result.report
    assert report["verification"]["exactness"]["passed"] is True, report["verification"]
    assert report["verification"]["round_trip"]["passed"] is True
    assert report["params_after"] < report["params_before"]
    assert report["macs_after"] < report["macs_before"]
    widths = {row["name"]: row["channels_after"] for row in report["layers"]}
    return result, pruned, widths
