"""Bad input across every layer and callback: a clear error naming the argument, nothing changed."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

import keras_embdim as ked
from keras_embdim import keras

CALLBACKS = {
    "sseds": lambda b, **k: ked.SingleShotPruner(b, verbose=0, **k),
    "ham": lambda b, **k: ked.HardMaskSearch(b, verbose=0, **k),
    "pme": lambda b, **k: ked.PMEPruner(b, verbose=0, **k),
    "amtl": lambda b, **k: ked.TwinsMaskSearch(b, verbose=0, **k),
}


def _layer(kind, vocab=(5, 7), dim=4):
    if kind == "prunable":
        return ked.PrunableEmbedding(list(vocab), dim, name="emb")
    if kind == "ham":
        return ked.HardMaskEmbedding(list(vocab), dim, name="emb")
    if kind == "twins":
        return ked.TwinsMaskLayer(ked.PrunableEmbedding(list(vocab), dim), name="emb")
    return ked.MixedDimensionEmbedding(list(vocab), [2, 1], dim, name="emb")


LAYERS = ["prunable", "ham", "twins", "mixed"]


@pytest.mark.parametrize("method", sorted(CALLBACKS))
@pytest.mark.parametrize("budget", [0, -0.1, 1.5, float("nan"), "0.1", True, None])
def test_bad_budget_names_the_argument(method, budget):
    with pytest.raises((ValueError, TypeError), match="budget"):
        CALLBACKS[method](budget)


@pytest.mark.parametrize("method", sorted(CALLBACKS))
@pytest.mark.parametrize("option,value,message", [
    ("verbose", "x", "`verbose` must be an integer >= 0"),
    ("verbose", -1, "`verbose` must be an integer >= 0"),
    ("layers", "embedding", r"`layers` must be a list of names \(e.g. layers=\['embedding'\]\)"),  # not 9 names
    ("layers", ["embedding", ""], "`layers` must be a list of names"),
    ("log_dir", 5, "`log_dir` must be a non-empty path or a keras.callbacks.TensorBoard"),
])
def test_bad_search_options_name_themselves(method, option, value, message):
    cls = type(CALLBACKS[method](0.1))
    with pytest.raises(ValueError, match=message):
        cls(0.1, **{"verbose": 0, option: value})


def test_search_options_that_are_fine():
    cb = ked.SingleShotPruner(0.1, verbose=True, layers=("a", "b"))
    assert cb.verbose == 1 and cb.layer_names == ["a", "b"]
    with pytest.raises(ValueError, match="`layers` must be a list of names"):
        ked.OrthogonalRegularizer(layers="embedding")


@pytest.mark.parametrize("make,flag", [
    (lambda **k: ked.PrunableEmbedding([5, 7], 4, **k), "validate_ids"),
    (lambda **k: ked.PrunableEmbedding([5, 7], 4, **k), "per_value"),
    (lambda **k: ked.HardMaskEmbedding([5, 7], 4, **k), "frozen"),
    (lambda **k: ked.TwinsMaskLayer(ked.PrunableEmbedding([5, 7], 4), **k), "validate_ids"),
    (lambda **k: ked.TwinsMaskLayer(ked.PrunableEmbedding([5, 7], 4), **k), "frozen"),
    (lambda **k: ked.TwinsMaskLayer(ked.PrunableEmbedding([5, 7], 4), **k), "count_frequencies"),
])
def test_layer_flags_must_be_booleans(make, flag):
    # "no" is truthy: read as True it would silently turn a per-field layer into a per-value one
    with pytest.raises(ValueError, match=f"`{flag}` must be True or False; received {flag}='no'"):
        make(**{flag: "no"})
    assert getattr(make(**{flag: np.bool_(True)}), flag) is True


@pytest.mark.parametrize("make", [
    lambda names: ked.PrunableEmbedding([5, 7, 3], 4, field_names=names),
    lambda names: ked.HardMaskEmbedding([5, 7, 3], 4, field_names=names),
    lambda names: ked.MixedDimensionEmbedding([5, 7, 3], [2, 1, 1], 4, field_names=names),
    lambda names: ked.TwinsMaskLayer(keras.layers.Embedding(15, 4), field_vocab_sizes=[5, 7, 3], field_names=names),
])
def test_field_names_must_be_distinct(make):
    # an id error, dimensions.json and the reports name a field by its name: two fields of one name are ambiguous
    with pytest.raises(ValueError, match=r"`field_names` must be distinct .* which repeats \['a'\]"):
        make(["a", "b", "a"])
    assert make(["a", "b", "c"]).layout.names == ("a", "b", "c")


def _model(d, embedding="prunable"):
    def emb(v, dim, names):
        if embedding == "ham":
            return ked.HardMaskEmbedding(v, dim, field_names=names, name="embedding")
        if embedding == "twins":
            return ked.TwinsMaskLayer(ked.PrunableEmbedding(v, dim, field_names=names), name="embedding")
        return ked.PrunableEmbedding(v, dim, field_names=names, name="embedding")

    return ked.models.compile_ctr(ked.models.build_mlp(d.vocab_sizes, d.field_names, embedding_dim=4, hidden=(4,),
                                                       embedding=emb if embedding != "plain" else "plain"))


EMBEDDING_OF = {"sseds": "prunable", "pme": "prunable", "ham": "ham", "amtl": "twins"}


@pytest.mark.parametrize("method", sorted(CALLBACKS))
def test_no_searchable_layer_and_two_searches_are_clear_errors(method, small_data):
    d = small_data
    x, y = d.train
    plain = _model(d, "plain")
    before = [w.copy() for w in plain.get_weights()]
    with pytest.raises(ValueError, match=r"has only plain keras.layers.Embedding layers \['embedding'\]; make them "
                                         r"searchable with ked.make_searchable\(model\)"):
        plain.fit(d.inputs(x[:256]), y[:256], epochs=1, verbose=0, callbacks=[CALLBACKS[method](0.5)])
    dense_only = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    dense_only.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="has no searchable embedding layer"):
        dense_only.fit(np.zeros((8, 3)), np.zeros((8, 1)), epochs=1, verbose=0, callbacks=[CALLBACKS[method](0.5)])
    for a, b in zip(before, plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    model = _model(d, EMBEDDING_OF[method])
    with pytest.raises(ValueError, match="already searched by another"):
        model.fit(d.inputs(x[:256]), y[:256], epochs=1, verbose=0,
                  callbacks=[CALLBACKS[method](0.5), CALLBACKS[method](0.5)])


@pytest.mark.parametrize("method", sorted(CALLBACKS))
def test_one_search_callback_given_to_a_second_model_is_refused(method, small_data):
    """Reused in a loop over models, a finished search did nothing to the second one (every dimension
    kept, silently): now a clear error, nothing changed."""
    d = small_data
    x, y = d.inputs(d.train[0][:512]), d.train[1][:512]
    cb = CALLBACKS[method](0.5)
    first = _model(d, EMBEDDING_OF[method])
    first.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[cb])
    assert cb.phase == ked.Phase.DONE
    second = _model(d, EMBEDDING_OF[method])
    before = [w.copy() for w in second.get_weights()]
    with pytest.raises(ValueError, match=rf"{type(cb).__name__}: this callback searches layers 'embedding' of "
                                         rf"another model \(phase: {cb.phase.value}\); a search callback searches "
                                         rf"one model. Pass a new {type(cb).__name__}"):
        second.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[cb])
    for a, b in zip(before, second.get_weights()):
        np.testing.assert_array_equal(a, b)
    first.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[cb])  # its own model: training goes on


@pytest.mark.parametrize("method", sorted(CALLBACKS))
def test_early_stopping_that_restores_weights_from_before_the_search_does_not_undo_it(method, small_data, tmp_path,
                                                                                      caplog):
    """`EarlyStopping(restore_best_weights=True)` restores every variable: from an epoch before the
    search ended, the masks too, so the model and its export went back to full tables (the search
    silently undone). The searched masks are imposed again, with a warning, and the export is the
    searched model."""
    d = small_data
    x, y = d.inputs(d.train[0][:512]), d.train[1][:512]
    model = _model(d, EMBEDDING_OF[method])
    search = CALLBACKS[method](0.5, **({"warmup_steps": 10, "scoring_steps": 4} if method == "sseds" else {}))
    # a monitored value that only grows: the best epoch is epoch 0 whatever the losses, and fit stops after epoch 1
    epoch_seen = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(epoch_seen=epoch))
    stop = keras.callbacks.EarlyStopping(monitor="epoch_seen", mode="min", patience=1, restore_best_weights=True)
    exporter = ked.DimensionExporter(str(tmp_path / "m"), sample_inputs=d.inputs(d.test[0][:64]), verbose=0)
    with caplog.at_level("WARNING", logger="keras_embdim"):
        model.fit(x, y, batch_size=64, epochs=4, verbose=0, callbacks=[epoch_seen, stop, search, exporter])
    assert re.search(rf"{type(search).__name__}: weights restored after the search ended \(EarlyStopping"
                     r".* give EarlyStopping start_from_epoch=\d", caplog.text), caplog.text
    assert stop.best_epoch == 0 and stop.stopped_epoch == 1  # epoch 0's weights, from before the search's end
    layer = model.get_layer("embedding")
    assert layer.dimension_mask().kept_params == search.result.params_after < layer.dimension_mask().full_params
    assert exporter.result.kept_params == search.result.params_after


@pytest.mark.parametrize("kind", ["ham", "twins"])
def test_weights_keep_their_order_when_a_search_freezes_some(kind, small_data):
    """Ending a search makes weights non-trainable (HAM's logits, AMTL's twins); tf_keras listed
    them after the trainable ones from then on, so `set_weights` of a list taken before put values
    into other variables (or failed on a shape). Each variable gets its own values back."""
    model = _model(small_data, kind)
    layer = model.get_layer("embedding")
    before = {id(v): np.array(v) for v in model.weights}
    order = [id(v) for v in model.weights]
    saved = model.get_weights()
    layer.end_search(layer.dimension_mask())
    assert [id(v) for v in model.weights] == order
    model.set_weights([np.zeros_like(w) for w in saved])
    model.set_weights(saved)
    for v in model.weights:
        np.testing.assert_array_equal(np.array(v), before[id(v)])


@pytest.mark.parametrize("method", ["sseds", "ham", "pme"])
def test_min_dim_wider_than_the_layer_is_a_clear_error(method, small_data):
    d = small_data
    x, y = d.train
    model = _model(d, EMBEDDING_OF[method])
    with pytest.raises(ValueError, match=r"min_dim=9 is larger than the width of layers 'embedding' \(output_dim=4\)"):
        model.fit(d.inputs(x[:256]), y[:256], epochs=1, verbose=0, callbacks=[CALLBACKS[method](1.0, min_dim=9)])
    with pytest.raises(ValueError, match="min_dim"):
        ked.TwinsMaskLayer(ked.PrunableEmbedding(10, 4), min_dim=9)


@pytest.mark.parametrize("kind", LAYERS)
def test_ids_out_of_range_name_the_layer(kind):
    layer = _layer(kind)
    for bad in ([[5, 0]], [[0, 7]], [[-1, 0]]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="'emb'"):
            layer(np.array(bad))


@pytest.mark.parametrize("kind", LAYERS)
def test_float_ids_read_like_int_ids_and_wrong_rank_is_refused(kind):
    layer = _layer(kind)
    ids = np.array([[1, 2], [4, 6]])
    np.testing.assert_array_equal(layer(ids.astype(np.float32)).numpy(), layer(ids).numpy())  # as keras Embedding
    with pytest.raises(ValueError, match=r"must have shape \[\.\.\., 2\]"):
        layer(np.array([1, 2, 3]))  # [batch] ids for a two-field layer
    with pytest.raises(ValueError, match=r"must have shape \[\.\.\., 2\]"):
        layer(np.array(3))


@pytest.mark.parametrize("kind", LAYERS)
def test_ids_of_any_integer_dtype_read_alike_and_strings_or_ragged_ids_say_what_to_do(kind):
    layer = _layer(kind)
    ids = np.array([[1, 2], [4, 6]])
    want = layer(ids).numpy()
    for dtype in (np.uint8, np.int16, np.uint16, np.uint32, np.uint64):  # a gather takes int32 / int64 only
        np.testing.assert_array_equal(layer(ids.astype(dtype)).numpy(), want)
    with pytest.raises(tf.errors.InvalidArgumentError, match="'emb'"):  # past int32: not wrapped into range
        layer(np.array([[1, 2**32 + 2]], np.uint64))
    with pytest.raises(TypeError, match=r"layer 'emb' takes integer ids; received strings: .*StringLookup"):
        layer(tf.constant([["a", "b"]]))
    with pytest.raises(TypeError, match=r"layer 'emb' takes dense ids; received a RaggedTensor: .*mask_zero=True"):
        layer(tf.ragged.constant([[1, 2], [3]]))


def test_stack_fields_refuses_what_it_cannot_stack():
    with pytest.raises(ValueError, match=r"`dtype_ids` must be one of \('int32', 'int64'\); received dtype_ids='f"):
        ked.layers.StackFields(dtype_ids="float32")
    assert ked.layers.StackFields(dtype_ids=tf.int64).get_config()["dtype_ids"] == "int64"
    stack = ked.layers.StackFields(name="stack")
    for bad, said in (([], "an empty list"), ({"a": np.array([1])}, "a value of type dict"),
                      (np.array([[1, 2]]), "a value of type EagerTensor")):  # rows are not fields
        with pytest.raises(ValueError, match=f"layer 'stack' stacks a list of per-field id tensors.*received {said}"):
            stack(bad)
    with pytest.raises(TypeError, match="layer 'stack' takes integer ids; received strings"):
        stack([tf.constant(["a"]), tf.constant([1])])
    assert stack((np.array([1, 2], np.uint8), np.array([3.0, 4.0]))).numpy().tolist() == [[1, 3], [2, 4]]


@pytest.mark.parametrize("kind", LAYERS)
def test_empty_batch(kind):
    layer = _layer(kind)
    out = layer(np.zeros((0, 2), np.int32))
    assert tuple(out.shape) == (0, 2, 4)


def test_empty_batch_is_served(small_data, tmp_path):
    keras.utils.set_random_seed(0)
    d = small_data
    model = _model(d)
    x, y = d.train
    model.fit(d.inputs(x), y, batch_size=500, epochs=1, verbose=0,
              callbacks=[ked.PMEPruner(0.3, verbose=0)])
    r = ked.export_compact(model, str(tmp_path / "e"), sample_inputs=d.inputs(d.test[0][:100]), verbose=0)
    fn = tf.saved_model.load(r.path).signatures["serving_default"]
    out = fn(**{k: np.asarray(v) for k, v in d.inputs(d.test[0][:0]).items()})
    assert out["ctr"].shape[0] == 0


@pytest.mark.parametrize("fn", [ked.make_searchable, ked.add_twins, ked.rebuild_mixed, ked.dimension_report,
                                ked.find_searchable_layers])
def test_model_functions_refuse_what_is_not_a_model(fn):
    with pytest.raises(TypeError, match="`model` must be a Keras model or layer .*received a str"):
        fn("model.keras")  # a path where the model is expected


def test_sample_ids_outside_a_vocabulary_name_the_argument_before_anything_is_written(tmp_path):
    ids = keras.Input((2,), dtype="int32", name="ids")
    emb = ked.PrunableEmbedding([5, 7], 4, name="emb")
    model = keras.Model(ids, keras.layers.Dense(1)(keras.layers.Flatten()(emb(ids))))
    emb.set_dimension_mask(np.array([[1, 1, 0, 0], [1, 0, 0, 0]]))
    said = r"`sample_inputs`: the model cannot run on them: (?s:.*)layer 'emb': embedding ids must be >= 0"
    with pytest.raises(ValueError, match=said):
        ked.export_compact(model, str(tmp_path / "e"), sample_inputs={"ids": np.array([[1, 2], [4, 7]])}, verbose=0)
    assert os.listdir(tmp_path) == []
    ked.export_compact(model, str(tmp_path / "e"), sample_inputs={"ids": np.array([[1, 2], [4, 6]])}, verbose=0)
