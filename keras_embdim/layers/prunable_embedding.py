"""`PrunableEmbedding`: an Embedding whose dimensions a pruner removes."""

from __future__ import annotations

from keras_embdim._compat import register_serializable
from keras_embdim.layers.searchable_embedding import SearchableEmbedding


@register_serializable(package="keras_embdim")
class PrunableEmbedding(SearchableEmbedding):
    """Drop-in `keras.layers.Embedding` whose columns can be pruned per field.

    The mask is set from outside, by `keras_embdim.SingleShotPruner` (or any
    code calling `set_dimension_mask`); `DimensionExporter` then stores only the
    kept columns. Weights of a trained plain `Embedding` load into it
    (`set_weights([table])`, or `load_weights` of a model whose layer has the
    same name): that is the warm-start path.

    Args:
        input_dim: vocabulary size (one field), or a list of vocabulary sizes,
            one per field (multi-field form; input `[..., F]` local ids, output
            `[..., F, output_dim]`).
        output_dim: embedding dimension D before search.
        field_names: optional names of the fields (reports, TensorBoard).
        validate_ids: check that every id lies in its field's vocabulary
            (default True).
        **kwargs: the other `keras.layers.Embedding` arguments
            (`embeddings_initializer`, `embeddings_regularizer`,
            `embeddings_constraint`, `mask_zero`, `name`, ...).

    Example:

    >>> import numpy as np, keras_embdim as ked
    >>> emb = ked.PrunableEmbedding(input_dim=[10, 20], output_dim=4)
    >>> out = emb(np.array([[1, 2], [3, 19]]))
    >>> tuple(out.shape)
    (2, 2, 4)
    >>> emb.set_dimension_mask([[1, 1, 0, 0], [1, 0, 0, 0]])
    >>> float(abs(np.asarray(emb(np.array([[1, 2]])))[0, 1, 1:]).sum())
    0.0
    >>> emb.dimension_mask().kept_params
    40
    """
