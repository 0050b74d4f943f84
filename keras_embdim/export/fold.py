"""Folding removed columns out of the serving computation, not only out of the tables.

When a searched layer's output reaches a `Dense` layer only through layers that
move data (`Flatten`, `Reshape`, `Concatenate`, `Permute`, `RepeatVector`,
`Cropping1D`, inference-time `Dropout`, `Identity`: `TRANSPARENT`; and the same
moves written as ops on symbolic tensors, `keras.ops.reshape` / `tf.concat` and
the like, `_compat.is_moving_op`), every removed column is an exact zero that
the Dense kernel multiplies. The export then computes

    y = activation(x_kept @ W[kept rows] + b)

where `x_kept` holds only the kept values (`lookup.folded`: one row gather
per kept width, no placement into `[..., F, D]`) and `W[kept rows]` the
matching rows of the kernel. The padded tensor and the removed columns' part
of the matmul are never computed, and the original kernel is not shipped (its
selected rows are). A lookup served by parts (`SplitLookup`: fields stored
whole beside packed ones) is not concatenated: each part is multiplied by its
own kernel rows and the products summed (`kernel_groups`).

Which row of the kernel matches which kept value is found by probing: every
input of the data-moving layers is fed a tensor whose entries are distinct
integers (exact in float32), the layers are run, and the Dense input says
where each entry went. Two examples are probed, the second's codes shifted, so
that an op moving entries across the batch axis (a transpose or concatenation
along it) is refused rather than taken for a placement (`_run_codes`). So any
composition of those layers folds, in both Keras versions, without modelling
each layer's semantics; an entry that reaches the Dense input twice (e.g.
`RepeatVector`) sums its kernel rows.

Affine layers on the way (`BatchNormalization`, `Add`, `Average`, `Subtract`,
`Rescaling`: an item as the sum of its id's and its category's embeddings, a
normalization of the concatenated fields; an average over positions called
without a mask, such as a multi-field layer's output averaged over its fields;
arithmetic with constants written as ops, `x * 0.5`, `keras.ops.sum(x, axis=1)`,
`_compat.is_arithmetic_op`)
make the Dense input an affine map `x @ L + c` of the kept values rather than a
placement: it is probed with a basis (`_affine_fold`: one example per kept
value, one all zeros, a random combination to check the map, and the batch
run again split in two to check that examples stay apart), and the Dense
serves `x_kept @ (L W) + (c W + b)`, or `(x_kept @ L) @ W + (c W + b)` where that
takes at most half the multiply-adds (many kept values averaged into few
columns: `_factorized`).

A single-field layer's sequence output `[batch, positions, D]` averaged or maxed
over its positions (`GlobalAveragePooling1D`, `GlobalMaxPooling1D`: each column
on its own, the layer's mask honoured) on its way to Dense layers is pooled on
the kept columns: the pooling layer itself runs on the folded lookup
`[batch, positions, K]` (`_pool`), so a bag of ids (a watch history, a title's
tokens) folds like a field, affine layers after the pooling included (a
normalization of the pooled history concatenated with the fields).

A Dense applied to a searched output `[batch, ..., D]` itself (each field, or
each position of a sequence, projected: a slot each) is computed from the kept
values: each slot's kept columns times their own kernel rows, one batched
product (`SlotDenseFold`, `slot_kernel`), where the widest slot keeps at most
half the columns (nearly as wide, the padded output's one matmul costs less).

Where a searched layer's output also has another use (an FM inner product,
max or masked pooling over fields, attention, a model output), the Dense layers
it reaches still fold, and that use reads the padded output placed from the same
lookup (one gather of the kept values; each table is read once per request);
with no foldable Dense, the layer serves its padded output (`lookup.padded`).
The plan records why (`FoldReport`). DCN cross layers on the way are computed on
the kept columns (`keras_embdim.export.cross`), and `FMInteraction` terms from
the kept values (`keras_embdim.export.fm`).

A field of fewer ids than kept columns whose layer only folded Dense layers
read is served in an orthonormal basis of its rows, the basis multiplied into
the kernel rows (`fold_ranks`): r columns of the matmul for that field instead
of its k kept ones, the same outputs to float32 rounding.

Only functional models (and Sequential, and functional models nested in them)
are planned: a subclassed model's `call` is opaque, so its layers serve padded.
A functional sub-model that a searched output reaches (an MLP written as a
`Sequential`, a tower) is planned as part of the outer graph: its calls are
inlined between boundary calls that pass the tensors on (`_graph_nodes`), so
the Dense layers inside fold like the model's own; one called more than once
(a tower shared by two inputs) is inlined as a copy per call, each folding
with its own input's kept rows (`_copied`); one called with a mask, or given
an input of another shape than it was built for, is not, and the outputs
reaching it serve padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from keras_embdim import _compat, _utils
from keras_embdim._compat import keras
from keras_embdim.export import compact as compact_lib
from keras_embdim.export import cross as cross_fold
from keras_embdim.export import fm as fm_fold
from keras_embdim.export.lookup import FieldLookup, placed
from keras_embdim.layers.fields import StackFields, field_columns, saturate_cast

_MAX_CODES = 2**24  # float32 represents every integer up to this exactly


#: layers that only move entries (at inference): folding looks through them
TRANSPARENT = _compat.layer_classes(
    "Flatten", "Reshape", "Concatenate", "Permute", "RepeatVector", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
    "GaussianNoise", "AlphaDropout", "Identity", "ActivityRegularization",
)


def _is_transparent(layer) -> bool:
    """`TRANSPARENT` layers (exact types: a subclass may compute), the ops that only move entries
    (`_compat.is_moving_op`: `keras.ops.reshape`, `tf.concat`, ...; the probes check that they keep
    the examples of a batch apart, `_run_codes`) and sub-model boundaries."""
    return type(layer) in TRANSPARENT or type(layer) is _Bridge or _compat.is_moving_op(layer)


class _Bridge:
    """Where an inlined sub-model's input or output tensor meets the outer graph's (`_graph_nodes`):
    its value passed on as it is."""

    name = "sub-model boundary"


def _graph_nodes(net: Any, sources: set, reached: set | None = None,
                 inlined: set | None = None) -> list[_compat.GraphNode]:
    """The calls of `net` in execution order, a functional sub-model (a tower, a `Sequential`
    MLP) that a call of a `sources` layer reaches inlined: its calls in its place, between
    `_Bridge` calls from the outer tensor to its input and from its output to the outer
    tensor, so that the Dense layers inside fold like the model's own. Inlined: sub-models of
    one input (of the shape the sub-model was built for: its call would otherwise adjust it)
    and one output, called without a mask (the sub-model's own calls would get it from its
    call, which its graph does not record: a masked average inside would be taken for an
    unmasked one), holding none of `sources` (a sub-model with a searched layer plans its own
    folds); recursively. A sub-model called more than once by `net` (a tower shared by two
    inputs), or inlined already elsewhere in the model (`inlined`: id() of those), is inlined
    as a copy per call (`_copied`), so each call's Dense layers fold with their own input's
    kept rows. `reached`: id() of the tensors of `net` reached already (an inlined
    sub-model's input)."""
    nodes = _compat.graph_nodes(net)
    calls: dict = {}
    for n in nodes:
        calls[id(n.layer)] = calls.get(id(n.layer), 0) + 1
    reached = set(reached or ()) | {id(t) for n in nodes if n.layer in sources for t in n.outputs}
    inlined = set() if inlined is None else inlined
    out = []
    for n in nodes:
        inner = _compat.graph_network(n.layer) if isinstance(n.layer, keras.Model) else None
        if (inner is not None and any(id(t) in reached for t in n.inputs)
                and len(n.inputs) == len(_compat.graph_inputs(inner)) == 1
                and len(n.outputs) == len(_compat.graph_outputs(inner)) == 1
                and tuple(n.inputs[0].shape)[1:] == tuple(_compat.graph_inputs(inner)[0].shape)[1:]
                and not _compat.call_has_mask(n) and not sources & _layers_of(n.layer)):
            shared = calls[id(n.layer)] > 1 or id(n.layer) in inlined
            inlined.add(id(n.layer))
            inner_nodes = _graph_nodes(inner, sources, {id(t) for t in _compat.graph_inputs(inner)}, inlined)
            block = [_compat.GraphNode(_Bridge(), list(n.inputs), list(_compat.graph_inputs(inner)), object()),
                     *inner_nodes,
                     _compat.GraphNode(_Bridge(), list(_compat.graph_outputs(inner)), list(n.outputs), object())]
            # a sub-model called more than once (a tower shared by two inputs): each call its own copy
            out += _copied(block, {id(t) for t in [*n.inputs, *n.outputs]}) if shared else block
        else:
            out.append(n)
        if any(id(t) in reached for t in n.inputs):
            reached.update(id(t) for t in n.outputs)
    return out


class _TensorCopy:
    """A symbolic tensor of a copied call (`_copied`): its own identity, the tensor's attributes."""

    def __init__(self, tensor):
        self._tensor = tensor

    def __getattr__(self, name):
        return getattr(self._tensor, name)


class _NodeCopy:
    """The Keras node of a copied call (`_copied`): its own identity, the node's arguments."""

    def __init__(self, node):
        self._node = node

    def __getattr__(self, name):
        return getattr(self._node, name)


def _copied(nodes: list, keep: set) -> list:
    """`nodes` (one call of a sub-model, inlined) as a copy of their own: every tensor but those
    of `keep` (id(): the outer graph's, where the copy is called) replaced by a `_TensorCopy`,
    every node by a `_NodeCopy`, so that two calls of one sub-model are planned apart (the
    planner keys on the identity of tensors and nodes); `renamed` leads the arguments Keras
    recorded to the copy's tensors (`_compat.node_arguments`)."""
    copies: dict = {}

    def copy(t):
        if id(t) in keep:
            return t
        if id(t) not in copies:
            copies[id(t)] = _TensorCopy(t)
        return copies[id(t)]

    out = []
    for n in nodes:
        renamed = ({k: copy(t) for k, t in n.renamed.items()} if n.renamed is not None
                   else {id(t): copy(t) for t in [*n.inputs, *n.outputs]})
        out.append(_compat.GraphNode(n.layer, [copy(t) for t in n.inputs], [copy(t) for t in n.outputs],
                                     _NodeCopy(n.raw), renamed))
    return out


def _call_node(node: _compat.GraphNode, values: dict) -> Any:
    """Run one call of `_graph_nodes` on `values` (id(tensor) -> value), in inference mode."""
    if type(node.layer) is _Bridge:
        return values[id(node.inputs[0])]
    args, kwargs = _compat.node_arguments(node, values)
    return _compat.call_for_inference(node.layer, args, kwargs)


#: layers that are affine at inference, each output entry an affine function of the input entries: a Dense
#: after them (and data-moving layers) folds by probing the map with a basis (`_affine_fold`)
AFFINE = _compat.layer_classes("Add", "Subtract", "Average", "BatchNormalization", "Rescaling")
#: averages over positions (fields, a sequence's ids): linear when called without a mask (a masked
#: average divides by how many entries the ids leave unmasked)
AVERAGE_POOLING = _compat.layer_classes("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D")


def _is_affine(node: _compat.GraphNode) -> bool:
    """`node`'s call is affine at inference: an `AFFINE` layer, an `AVERAGE_POOLING` one called
    without a mask (exact types: a subclass may compute), or arithmetic written as ops
    (`_compat.is_arithmetic_op`: `x * 0.5`, `keras.ops.sum(x, axis=1)`, ...; affine when its
    other operands are constants, which `_affine_fold` checks, as it checks that examples stay
    apart)."""
    kind = type(node.layer)
    return (kind in AFFINE or (kind in AVERAGE_POOLING and not _compat.call_has_mask(node))
            or _compat.is_arithmetic_op(node.layer))


#: layers that pool each column over the positions of a sequence on its own: they run on kept columns
COLUMN_POOLING = _compat.layer_classes("GlobalAveragePooling1D", "GlobalMaxPooling1D")
#: data-moving layers whose output is their input at inference (a pooling after them pools the searched output)
INFERENCE_IDENTITY = _compat.layer_classes(
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise",
    "AlphaDropout", "Identity", "ActivityRegularization",
)


def _foldable_pooling(node: _compat.GraphNode, searched: _compat.GraphNode, same: set) -> str | None:
    """None if `node` pools the sequence output `[batch, positions, D]` of the single-field
    searched call `searched` over its positions, column by column, else why not. `same`:
    id() of the tensors equal to that output at inference, its mask passed along
    (`INFERENCE_IDENTITY` calls that support masking)."""
    pool = node.layer
    name = f"'{pool.name}' ({type(pool).__name__})"
    if searched.layer.multi_field:
        return f"its output reaches {name}, which pools over fields"
    if pool.data_format != "channels_last":
        return f"its output reaches {name} with data_format={pool.data_format!r}"
    args, kwargs = _compat.node_argument_indices(node)
    if len(args) != 1 or not isinstance(args[0], int) or id(node.inputs[args[0]]) not in same or set(kwargs) - {"mask"}:
        return f"its output reaches {name}, called with arguments it does not fold"
    if len(tuple(searched.outputs[0].shape)) != 3:
        return f"its output reaches {name} with an input of shape {tuple(searched.outputs[0].shape)}"
    return None


def _pool_mask(node: _compat.GraphNode, searched: _compat.GraphNode, values: dict):
    """The mask a pooling call gets (`_compat.call_mask`); where it is implicit, the searched
    layer's `compute_mask` of its ids."""

    def implicit():
        args, _ = _compat.node_arguments(searched, values)
        return searched.layer.compute_mask(args[0])

    return _compat.call_mask(node, values, implicit)


def _foldable_dense(node: _compat.GraphNode) -> str | None:
    """None if `node` is a Dense call whose kernel rows can be selected, else why not."""
    layer = node.layer
    if type(layer) is not keras.layers.Dense:
        return f"its output reaches '{layer.name}' ({type(layer).__name__})"
    shape = tuple(node.inputs[0].shape)
    if len(shape) != 2:
        return f"it reaches Dense '{layer.name}' with an input of rank {len(shape)} (folding needs [batch, features])"
    return _kernel_replaceable(layer)


def _foldable_slot_dense(node: _compat.GraphNode) -> str | None:
    """None if `node` is a Dense call on a searched output `[batch, ..., D]` itself (each
    position's, or each field's, D columns multiplied by the kernel: `SlotDenseFold`) that can
    be computed from the kept values, else why not."""
    layer = node.layer
    if _compat.call_has_mask(node):  # its output would carry the mask on to the calls after it
        return f"it reaches Dense '{layer.name}' per position with a mask"
    return _kernel_replaceable(layer)


def _kernel_replaceable(layer) -> str | None:
    """None if a Dense layer's kernel may be served by other rows: a plain kernel, one call."""
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return f"Dense '{layer.name}' is LoRA-enabled or quantized"
    if len(getattr(layer, "_inbound_nodes", [])) != 1:
        return f"Dense '{layer.name}' is called more than once"
    return None


@dataclass
class DenseFold:
    """A Dense call computed from the kept values of its sources.

    The sources give pieces in x's order (a lookup its `folded_parts`, a tensor itself);
    `groups[i]` lists the pieces concatenated and multiplied by `kernels[i]` (their rows of
    the selected kernel), and the products are summed: the parts of a `SplitLookup` each
    have their own kernel, every other piece is concatenated into one group.
    """

    node: _compat.GraphNode
    sources: list  # ("lookup", search node) or ("tensor", symbolic tensor), in x's order
    kernels: list  # per group: the selected (and, for repeated entries, summed) kernel rows
    groups: list  # per group: indices of its pieces (in x's order)
    bias: Any = None  # the bias served (an affine region before the Dense moves it), or None: the layer's
    post: Any = None  # after an affine region, factorized: `kernels` hold L's rows, `post` the layer's kernel
    rows: Any = None  # the selected kernel rows `[sum of widths, units]` the kernels were grouped from (numpy)
    widths: list = field(default_factory=list)  # per source: the columns of each of its pieces (`kernel_groups`)


def _kernel_variables(dn: _compat.GraphNode, kernels: list) -> list:
    name = f"{dn.layer.name}_folded_kernel"
    return [_utils.plain_variable(k, name=name if len(kernels) == 1 else f"{name}_{i}") for i, k in enumerate(kernels)]


@dataclass
class SlotDenseFold:
    """A Dense call on a searched output `[batch, ..., D]` itself (per position of a sequence,
    per field of a multi-field layer: a slot each), computed from the kept values.

    The folded lookup's columns, side by side, are placed as `[batch, slots, width]` (each
    slot's kept columns first, zeros up to the widest slot's count; `place`, None where they
    are laid out so already) and multiplied slot by slot by `kernel` `[slots, width, units]`
    (each slot's kernel rows, zeros for its padding: `slot_kernel`; one `[width, units]` kernel
    and one matmul when every slot has the same rows, as a sequence of one field); the bias and
    activation follow. A slot without kept columns gets the bias alone.
    """

    node: _compat.GraphNode
    source: _compat.GraphNode  # the searched call
    place: np.ndarray | None  # position in `[slots * width]` of each folded column (-1: read by nothing)
    kernels: list  # [the `[slots, width, units]` kernel, or `[width, units]` when every slot's is the same]
    slots: int
    bias: Any = None  # none of its own: the layer's bias is served (`NetPlan.variables` reads `bias`)
    post: Any = None


@dataclass
class CrossFold:
    """A cross layer computed on the kept columns of its `x0` (`keras_embdim.export.cross`).

    `sources` give `x0`'s pieces (as `DenseFold.sources`; concatenated, they are the
    reduced `x0`), `cols[i]` the layer's input column of reduced entry i (-1: always
    zero), `x_from` the planned cross whose output is `x` (None: `x` is `x0`).
    """

    node: _compat.GraphNode
    x0: Any  # the symbolic x0 tensor
    sources: list
    cols: np.ndarray
    x_from: int | None
    weights: list  # `cross.reduced_weights`, as variables
    spec: cross_fold.CrossSpec


@dataclass
class FMFold:
    """An FM term computed from the kept values of its input's sources (`keras_embdim.export.fm`)."""

    node: _compat.GraphNode
    sources: list  # as DenseFold.sources: side by side, the kept values
    weights: list  # `fm.fm_weights`' M and w, as variables


@dataclass
class NetPlan:
    """The folds of one graph network (and of the graph networks nested in it)."""

    net: Any
    nodes: list  # the calls run, in execution order (`_graph_nodes`: sub-models reached inlined)
    skip: set = field(default_factory=set)  # id(raw node) of calls not run (folded)
    dense: dict = field(default_factory=dict)  # id(raw node) -> DenseFold
    nested: dict = field(default_factory=dict)  # id(raw node) -> NetPlan of a nested model
    lookups: dict = field(default_factory=dict)  # id(raw node) -> compacted layer's CompactLayer
    columns: dict = field(default_factory=dict)  # id(raw searched node) -> StackFields node of its per-field ids
    prechecked: set = field(default_factory=set)  # id(raw searched node) whose ids are in range by construction
    cross: dict = field(default_factory=dict)  # id(raw node) -> CrossFold
    placed: set = field(default_factory=set)  # id(raw searched node) also served padded, placed from its folded lookup
    fm: dict = field(default_factory=dict)  # id(raw node) -> FMFold
    pooled: dict = field(default_factory=dict)  # id(raw pooling node) -> the searched GraphNode it pools

    @property
    def active(self) -> bool:
        return bool(self.dense) or bool(self.fm) or any(p.active for p in self.nested.values())

    @property
    def variables(self) -> list:
        out = [k for f in self.dense.values() for k in f.kernels]
        out += [f.bias for f in self.dense.values() if f.bias is not None]
        out += [f.post for f in self.dense.values() if f.post is not None]
        out += [w for c in self.cross.values() for w in c.weights]
        out += [w for f in self.fm.values() for w in f.weights]
        for p in self.nested.values():
            out += p.variables
        return out


@dataclass
class FoldReport:
    """Per searched layer: the Dense (and cross, FM, pooling) layers it was folded into, or why it serves
    padded."""

    # layer name -> {"folded_into": [...], "padded": reason | None, "id_check": "on_invalid_id" | why it was left out,
    #                "rank_folded": {field: {"kept": k, "served": r}} (`fold_ranks`)}
    layers: dict = field(default_factory=dict)

    def add(self, layer_name: str, dense: str | None = None, reason: str | None = None) -> None:
        rec = self.layers.setdefault(layer_name, {"folded_into": [], "padded": None, "id_check": "on_invalid_id",
                                                  "rank_folded": {}})
        if dense and dense not in rec["folded_into"]:
            rec["folded_into"].append(dense)
        if reason and not rec["padded"]:
            rec["padded"] = reason

    def leave_out_id_check(self, layer_name: str, why: str) -> None:
        """No id check for the layer: its served ids are in range by construction (`_plan_prechecked`),
        or the export was asked for none (`on_invalid_id="unchecked"`)."""
        self.add(layer_name)
        self.layers[layer_name]["id_check"] = f"left out: {why}"

    def update(self, other: "FoldReport") -> None:
        """Add what `other` found, as `add` and `leave_out_id_check` would have."""
        for name, rec in other.layers.items():
            self.add(name)
            for dense in rec["folded_into"]:
                self.add(name, dense=dense)
            if rec["padded"]:
                self.add(name, reason=rec["padded"])
            if rec["id_check"] != "on_invalid_id":
                self.layers[name]["id_check"] = rec["id_check"]
            self.layers[name]["rank_folded"].update(rec["rank_folded"])

    def to_json(self) -> dict:
        return {k: dict(v) for k, v in self.layers.items()}


def plan(model: Any, compacted: dict, report: FoldReport | None = None) -> tuple[NetPlan | None, FoldReport]:
    """The folds of `model` given its compacted layers (`{layer: CompactLayer}`).

    Returns `(plan, report)`; `plan` is None when the model is not a graph
    network (its layers then all serve padded, as the report says).
    """
    report = report if report is not None else FoldReport()
    net = _compat.graph_network(model)
    if net is None:
        for layer in compacted:
            if layer in _layers_of(model):
                report.add(layer.name, reason=f"model '{model.name}' is subclassed: its call cannot be folded")
        return None, report
    return _plan_net(net, compacted, report), report


def _layers_of(model) -> set:
    return set(_utils.flatten_layers(model))


@dataclass
class _Reach:
    """What a searched call's output reaches (`_Graph.dense_reach`)."""

    why: str | None = None  # why nothing folds
    region: set = field(default_factory=set)  # id(raw) of the data-moving calls passed
    denses: list = field(default_factory=list)  # Dense calls reached
    crosses: list = field(default_factory=list)  # cross calls passed
    fms: list = field(default_factory=list)  # FM terms reached
    pools: list = field(default_factory=list)  # pooling calls passed (`_foldable_pooling`)
    slots: list = field(default_factory=list)  # Dense calls on the searched output itself, per slot (`SlotDenseFold`)
    others: list = field(default_factory=list)  # why each other use cannot fold

    def failed(self, why: str) -> "_Reach":
        self.why = why
        return self

    def other(self, why: str) -> None:
        if why not in self.others:
            self.others.append(why)


@dataclass
class _Graph:
    """The calls of a graph network and who produces and consumes each tensor."""

    nodes: list
    producer: dict  # id(tensor) -> node
    consumers: dict  # id(tensor) -> [node]
    outputs: set  # id(tensor) of the network's outputs
    order: dict  # id(raw node) -> execution order

    @classmethod
    def of(cls, net: Any, sources: set) -> "_Graph":
        """The graph of `net`'s calls, sub-models that `sources` reach inlined (`_graph_nodes`)."""
        nodes = _graph_nodes(net, sources)
        consumers: dict = {}
        for n in nodes:
            for t in n.inputs:
                consumers.setdefault(id(t), []).append(n)
        return cls(nodes, {id(t): n for n in nodes for t in n.outputs}, consumers,
                   {id(t) for t in _compat.graph_outputs(net)}, {id(n.raw): i for i, n in enumerate(nodes)})

    def dense_reach(self, node: _compat.GraphNode, through_cross: bool = False, shared: bool = False,
                    affine: bool | None = None) -> "_Reach":
        """Forward from `node` through data-moving layers (and, `through_cross`, DCN cross
        layers: `keras_embdim.export.cross`; with `affine`, default `shared`, `AFFINE` layers
        too: a Dense after them folds by `_affine_fold`) to the Dense layers it reaches. Without
        `shared`, any other use is the reason it cannot fold; with it, FM terms
        (`keras_embdim.export.fm`) are listed to be computed from the kept values, pooling calls
        that take the searched output itself (`_foldable_pooling`; also after a dropout, an
        identity at inference) are passed when all they reach folds, affine layers after them
        included (over fields, unmasked averages are affine layers of the region), and the other
        uses (a model output, max or masked pooling over fields, ...) each by why it cannot
        fold: they read the padded output. The reason is None when something folds."""
        affine = shared if affine is None else affine
        reach = _Reach()
        frontier = list(node.outputs)
        same = {id(t) for t in node.outputs}  # tensors equal to the searched output (`_foldable_pooling`)
        while frontier:
            t = frontier.pop()
            if id(t) in self.outputs:
                if not shared:
                    return reach.failed("its output is a model output")
                reach.other("its output is a model output")
            for c in self.consumers.get(id(t), []):
                if (shared and id(t) in same and type(c.layer) in COLUMN_POOLING
                        and not (node.layer.multi_field and _is_affine(c))):  # over fields: an affine map
                    why = _foldable_pooling(c, node, same)
                    if why is None:
                        after = self.dense_reach(c, through_cross, affine=True)
                        if after.why:
                            why = (f"its output reaches '{c.layer.name}' ({type(c.layer).__name__}), whose output "
                                   f"does not fold: {after.why}")
                    if why:
                        reach.other(why)
                    elif all(x is not c for x in reach.pools):
                        reach.pools.append(c)
                        reach.region |= after.region
                        reach.crosses += [x for x in after.crosses if all(y is not x for y in reach.crosses)]
                        reach.denses += [x for x in after.denses if all(y is not x for y in reach.denses)]
                    continue
                if _is_transparent(c.layer) or (affine and _is_affine(c)):
                    if id(c.raw) not in reach.region:
                        reach.region.add(id(c.raw))
                        frontier.extend(c.outputs)
                        if id(t) in same and type(c.layer) in INFERENCE_IDENTITY and c.layer.supports_masking:
                            same.update(id(o) for o in c.outputs)
                    continue
                if through_cross and cross_fold.is_cross(c.layer):
                    if all(x is not c for x in reach.crosses):
                        reach.crosses.append(c)
                        frontier.extend(c.outputs)
                    continue
                if shared and fm_fold.is_fm(c.layer):
                    if all(x is not c for x in reach.fms):
                        reach.fms.append(c)
                    continue
                if shared and id(t) in same and len(tuple(t.shape)) > 2 and type(c.layer) is keras.layers.Dense:
                    why = _foldable_slot_dense(c)
                    if why:
                        reach.other(why)
                    elif all(x is not c for x in reach.slots):
                        reach.slots.append(c)
                    continue
                why = _foldable_dense(c)
                if why and not shared:
                    return reach.failed(why)
                if why:
                    reach.other(why)
                elif all(d is not c for d in reach.denses):
                    reach.denses.append(c)
        if not reach.denses and not reach.fms and not reach.slots:
            reach.why = reach.others[0] if reach.others else "its output reaches no Dense layer"
        return reach

    def sources_of(self, tensor: Any, region_ids: set, searched: dict, crosses: dict,
                   pooled: dict | None = None) -> tuple[list, list]:
        """Back from `tensor` through the data-moving calls of `region_ids`: `(those calls, in
        execution order; the sources)`, each source `("lookup", searched call)`, `("cross",
        planned cross call)`, `("pooled", pooling call of `pooled`)` or `("tensor", symbolic
        tensor)`: tensors first, then the others in execution order."""
        region, sources, seen, stack = [], [], set(), [tensor]
        while stack:
            t = stack.pop()
            if id(t) in seen:
                continue
            seen.add(id(t))
            p = self.producer.get(id(t))
            if p is not None and pooled and id(p.raw) in pooled:
                sources.append(("pooled", p))
            elif p is not None and id(p.raw) in region_ids:
                region.append(p)
                stack.extend(p.inputs)
            elif p is not None and id(p.raw) in searched:
                sources.append(("lookup", p))
            elif p is not None and id(p.raw) in crosses:
                sources.append(("cross", p))
            else:
                sources.append(("tensor", t))
        sources.sort(key=lambda s: self.order[id(s[1].raw)] if s[0] != "tensor" else -1)
        region.sort(key=lambda r: self.order[id(r.raw)])
        return region, sources


def _run_region(region: list, values: dict, order: dict) -> None:
    """Run the data-moving calls of `region` in execution order on `values` (id(tensor) -> value),
    adding their outputs to it."""
    for r in sorted(region, key=lambda r: order[id(r.raw)]):
        out = _call_node(r, values)
        for t, v in zip(r.outputs, _compat.flatten(out)):
            values[id(t)] = v


def _run_codes(region: list, feeds: list, target: Any, order: dict) -> np.ndarray | None:
    """The codes `target` holds when the data-moving calls of `region` run on codes: `feeds`
    lists `(tensor, codes)`, each entry of one example a distinct positive integer (exact in
    float32). Two examples are run, the second's codes shifted past every code of the first;
    a region whose second example is not the first's shifted (an op that concatenates,
    transposes or slices along the batch axis) mixes the examples of a batch and is refused
    (`_NotFoldable`). None if the target is not reached."""
    shift = 1 + max((int(codes.max(initial=0)) for _, codes in feeds), default=0)
    if 2 * shift > _MAX_CODES:
        raise _NotFoldable(f"its sources have {shift - 1} entries, too many to probe")
    values = {}
    for t, codes in feeds:
        pair = np.stack([codes, np.where(codes > 0, codes + shift, 0)]).astype(np.float32)
        values[id(t)] = tf.constant(pair.reshape([2, *tuple(t.shape)[1:]]))
    _run_region(region, values, order)
    out = values.get(id(target))
    if out is None:
        return None
    out = np.rint(_utils.to_numpy(out)).astype(np.int64)
    if out.shape[0] != 2 or not np.array_equal(out[1], np.where(out[0] > 0, out[0] + shift, 0)):
        raise _NotFoldable("a call on its way mixes the examples of a batch")
    return out[0].reshape(-1)


class _CrossFallback(Exception):
    """A cross layer on the way to the Dense layers cannot be computed on kept columns: plan again
    without passing cross layers."""

    def __init__(self, reason: str, layers: list):
        super().__init__(reason)
        self.layers = layers  # names of the searched layers it concerns


def _plan_net(net: Any, compacted: dict, report: FoldReport) -> NetPlan:
    """The folds of one graph network: passing DCN cross layers if every cross layer met can run
    on kept columns (planned on a report of its own, kept if so), else without passing them, the
    reason added to the report of the searched layers concerned."""
    trial = FoldReport()
    try:
        result = _plan_graph(net, compacted, trial, through_cross=True)
    except _CrossFallback as e:
        for name in e.layers:
            report.add(name, reason=str(e))
        return _plan_graph(net, compacted, report, through_cross=False)
    report.update(trial)
    return result


def _plan_graph(net: Any, compacted: dict, report: FoldReport, through_cross: bool) -> NetPlan:
    graph = _Graph.of(net, set(compacted))
    nodes, order = graph.nodes, graph.order
    result = NetPlan(net, nodes)

    # nested graph networks plan their own folds
    for n in nodes:
        if n.layer in compacted:
            continue
        inner = _compat.graph_network(n.layer) if isinstance(n.layer, keras.Model) else None
        if inner is not None:
            sub = _plan_net(inner, compacted, report)
            if sub.active:
                result.nested[id(n.raw)] = sub
        elif isinstance(n.layer, keras.Model):
            for layer in compacted:
                if layer in _layers_of(n.layer):
                    report.add(layer.name, reason=f"model '{n.layer.name}' is subclassed: its call cannot be folded")

    # 1. forward from each searched call: only data-moving layers (and cross layers), then Dense layers
    searched, downstream, cross_nodes, shared, fm_nodes, fm_users, slot_nodes = {}, set(), {}, {}, {}, {}, {}
    for n in nodes:
        if n.layer not in compacted:
            continue
        reach = graph.dense_reach(n, through_cross, shared=True)
        if reach.why:
            report.add(n.layer.name, reason=reach.why)
            continue
        searched[id(n.raw)] = (n, reach.denses + reach.slots, reach.crosses)
        slot_nodes.update({id(c.raw): c for c in reach.slots})
        shared[id(n.raw)] = list(reach.others)
        fm_users[id(n.raw)] = reach.fms
        downstream |= reach.region
        for c in reach.pools:  # pooled on the kept columns; not run once all it reaches folds
            result.pooled[id(c.raw)] = n
            downstream.add(id(c.raw))
        cross_nodes.update({id(c.raw): c for c in reach.crosses})
        fm_nodes.update({id(c.raw): c for c in reach.fms})

    def folds_into(kind, src, into: str) -> None:
        """A folded call `into` reads source `(kind, src)`: its searched layer's lookup is served."""
        if kind == "pooled":
            n = result.pooled[id(src.raw)]
            result.lookups[id(n.raw)] = compacted[n.layer]
            report.add(n.layer.name, dense=src.layer.name)
            report.add(n.layer.name, dense=into)
        elif kind == "lookup":
            result.lookups[id(src.raw)] = compacted[src.layer]
            report.add(src.layer.name, dense=into)

    # 2. each cross layer passed, in execution order: computed on the kept columns of its x0
    for key in sorted(cross_nodes, key=order.get):
        cn = cross_nodes[key]
        try:
            result.cross[key] = _plan_cross(cn, graph, downstream, searched, result, compacted)
        except _NotFoldable as e:
            raise _CrossFallback(f"cross layer '{cn.layer.name}' cannot be computed on kept columns: {e}",
                                 [n.layer.name for n, _, cs in searched.values() if any(c is cn for c in cs)])
        for kind, src in result.cross[key].sources:
            folds_into(kind, src, cn.layer.name)

    # 3. each Dense reached: its sources (searched outputs and cross layers folded, other tensors as they are)
    dense_nodes = {id(d.raw): d for _, (_, ds, _) in searched.items() for d in ds}
    for key in sorted(dense_nodes, key=order.get):
        dn = dense_nodes[key]
        region, sources = graph.sources_of(dn.inputs[0], downstream, searched, result.cross, result.pooled)
        if key in slot_nodes:  # on the searched output itself (through identities at inference)
            (_, src), = sources
            try:
                result.dense[key] = _plan_slot_dense(dn, src, compacted)
            except _NotFoldable as e:  # another use: it reads the padded output, the layer's other folds stay
                n, denses, crosses = searched[id(src.raw)]
                searched[id(src.raw)] = (n, [d for d in denses if d is not dn], crosses)
                shared[id(src.raw)].append(f"Dense '{dn.layer.name}': {e}")
                continue
            folds_into("lookup", src, dn.layer.name)
            continue
        try:
            selected, widths, bias, post = _fold_kernel(dn, region, sources, compacted, result.cross,
                                                        result.pooled)
        except _NotFoldable as e:
            if any(kind == "cross" for kind, _ in sources):
                raise _CrossFallback(f"Dense '{dn.layer.name}' after cross layers cannot be folded: {e}",
                                     [n.layer.name for n, _, cs in searched.values() if cs])
            for kind, src in sources:
                src = result.pooled[id(src.raw)] if kind == "pooled" else src
                if kind in ("lookup", "pooled"):
                    report.add(src.layer.name, reason=str(e))
                    searched.pop(id(src.raw), None)
            continue
        groups, kernels = kernel_groups(selected, widths)
        result.dense[key] = DenseFold(dn, sources, _kernel_variables(dn, kernels),
            groups, None if bias is None else _utils.plain_variable(bias, name=f"{dn.layer.name}_folded_bias"),
            None if post is None else _utils.plain_variable(post, name=f"{dn.layer.name}_kernel"),
            rows=selected, widths=widths)
        for kind, src in sources:
            folds_into(kind, src, dn.layer.name)
            if kind == "cross":  # the searched layers under the cross stack fold into this Dense too
                for s_kind, s_src in result.cross[id(src.raw)].sources:
                    if s_kind in ("lookup", "pooled"):
                        s_src = result.pooled[id(s_src.raw)] if s_kind == "pooled" else s_src
                        report.add(s_src.layer.name, dense=dn.layer.name)
    # 4. each FM term reached: computed from the kept values of its input's sources
    for key in sorted(fm_nodes, key=order.get):
        fn = fm_nodes[key]
        region, sources = graph.sources_of(fn.inputs[0], downstream, searched, result.cross, result.pooled)
        try:
            result.fm[key] = _plan_fm(fn, region, sources, compacted, result.cross, result.pooled)
        except _NotFoldable as e:
            for k, fms in fm_users.items():
                if any(f is fn for f in fms):
                    shared[k].append(f"its output reaches '{fn.layer.name}' (FMInteraction): {e}")
            continue
        for kind, src in sources:
            folds_into(kind, src, fn.layer.name)
    # a searched call is skipped only if every Dense it reaches was folded (and FM term computed)
    for key, (n, denses, crosses) in list(searched.items()):
        if all(id(d.raw) in result.dense for d in denses) and shared[key] and key in result.lookups:
            # its other uses read the padded output, placed from the lookup the folded layers read
            result.placed.add(key)
            report.add(n.layer.name, reason="; ".join(shared[key]) + ": served there padded, placed from the same "
                                            "lookup")
        elif all(id(d.raw) in result.dense for d in denses) and shared[key]:  # nothing of it folded
            searched.pop(key)
            report.add(n.layer.name, reason="; ".join(shared[key]))
        elif all(id(d.raw) in result.dense for d in denses):
            result.skip.add(key)
        elif crosses:  # its cross layers read its folded lookup, and their outputs reach that Dense
            raise _CrossFallback(f"a Dense layer that '{n.layer.name}' reaches could not be folded", [n.layer.name])
        else:
            result.lookups.pop(key, None)
            report.add(n.layer.name, reason="a Dense layer it reaches could not be folded")
    # a planned cross's output is only ever read reduced: every call it reaches must be planned
    folded = set(result.dense) | set(result.cross) | set(result.fm)
    for key in result.cross:
        if not _feeds_only_folded(key, graph, folded, downstream):
            raise _CrossFallback(f"cross layer '{cross_nodes[key].layer.name}': its output is read whole (a model "
                                 "output, or a layer that does not fold)",
                                 [n.layer.name for n, _, cs in searched.values() if cs])
    for key in downstream:  # data-moving calls whose every path ends in a folded Dense are not run
        if _feeds_only_folded(key, graph, folded, downstream):
            result.skip.add(key)
    _plan_field_columns(graph, result)
    _plan_prechecked(graph, result, report)
    return result


def _cross_inputs(node: _compat.GraphNode) -> tuple[Any, Any]:
    """`(x0, x)` of a cross layer's call (`x` is `x0` when the call passes one tensor)."""
    args, kwargs = _compat.node_argument_indices(node)
    given = list(args) + [kwargs[k] for k in ("x0", "x") if k in kwargs]
    if not given or len(given) > 2 or not all(isinstance(g, int) for g in given):
        raise _NotFoldable(f"cross layer '{node.layer.name}' is called with arguments it does not fold")
    x0 = node.inputs[given[0]]
    return x0, (node.inputs[given[1]] if len(given) == 2 else x0)


def _plan_cross(cn, graph: "_Graph", downstream: set, searched: dict, result: NetPlan, compacted: dict) -> CrossFold:
    x0, x = _cross_inputs(cn)
    try:
        spec = cross_fold.cross_spec(cn.layer)
    except ValueError as e:
        raise _NotFoldable(str(e)) from None
    if not cross_fold.elementwise(spec.activation):
        raise _NotFoldable("its pre-activation does not act on each column alone")
    if len(tuple(x0.shape)) != 2 or _static_size(x0) != spec.input_dim:
        raise _NotFoldable(f"its input has shape {tuple(x0.shape)} (folding needs [batch, {spec.input_dim}])")
    if x is x0:
        region, sources = graph.sources_of(x0, downstream, searched, result.cross, result.pooled)
        if any(kind == "cross" for kind, _ in sources):
            raise _NotFoldable("its x0 holds another cross layer's output")
        if not any(kind in ("lookup", "pooled") for kind, _ in sources):
            raise _NotFoldable("its x0 holds no searched layer's output")
        cols = _cross_columns(x0, region, sources, compacted, result.pooled)
        x_from = None
    else:
        p = graph.producer.get(id(x))
        prev = result.cross.get(id(p.raw)) if p is not None else None
        if prev is None or prev.x0 is not x0:
            raise _NotFoldable("it crosses x0 with a tensor that is not an earlier cross layer's output over the "
                               "same x0")
        sources, cols, x_from = prev.sources, prev.cols, id(p.raw)
    weights = [_utils.plain_variable(w, name=f"{cn.layer.name}_folded_{i}")
               for i, w in enumerate(cross_fold.reduced_weights(spec, cols))]
    return CrossFold(cn, x0, sources, cols, x_from, weights, spec)


def _plan_fm(fn, region: list, sources: list, compacted: dict, crosses: dict, pooled: dict) -> FMFold:
    shape = tuple(fn.inputs[0].shape)
    if len(shape) != 3 or any(d is None for d in shape[1:]):
        raise _NotFoldable(f"its input has shape {shape} (folding needs [batch, fields, dims])")
    cols, x, _ = _probe(fn.inputs[0], region, sources, compacted, crosses, pooled)
    m, w = fm_fold.fm_weights(cols, int(shape[-1]), int(x.shape[0]))
    name = f"{fn.layer.name}_folded"
    return FMFold(fn, sources, [_utils.plain_variable(m, name=f"{name}_columns"),
                                _utils.plain_variable(w, name=f"{name}_places")])


def _plan_field_columns(graph: "_Graph", result: NetPlan) -> None:
    """Folded multi-field lookups whose ids a `StackFields` call stacks take its per-field inputs
    instead (`FieldLookup.folded_fields`: each width group stacks only its own fields); the
    `StackFields` call is then not run if nothing else uses its output."""
    searched = {id(n.raw): n for n in graph.nodes if id(n.raw) in result.lookups and id(n.raw) in result.skip}
    for key, n in searched.items():
        stack = graph.producer.get(id(n.inputs[0])) if n.inputs else None
        if (stack is None or type(stack.layer) is not StackFields or not n.layer.multi_field
                or len(stack.inputs) != n.layer.num_fields):
            continue
        result.columns[key] = stack
    for stack in {id(s.raw): s for s in result.columns.values()}.values():
        users = [c for t in stack.outputs for c in graph.consumers.get(id(t), [])]
        if all(id(c.raw) in result.columns for c in users) and not any(id(t) in graph.outputs for t in stack.outputs):
            result.skip.add(id(stack.raw))


def _id_bound(node) -> tuple[int, str] | None:
    """`(bound, name)` when the layer of `node` outputs integer ids in `[0, bound)` whatever its
    input: a `StringLookup` / `IntegerLookup` with integer output (its vocabulary size, OOV and
    mask tokens included) or a `Hashing` layer (its bins). None otherwise."""
    layer = node.layer if node is not None else None
    if isinstance(layer, (keras.layers.StringLookup, keras.layers.IntegerLookup)):
        if layer.output_mode == "int" and not layer.invert:
            return int(layer.vocabulary_size()), layer.name
    elif isinstance(layer, keras.layers.Hashing) and layer.output_mode == "int":
        return int(layer.num_bins), layer.name
    return None


def _plan_prechecked(graph: "_Graph", result: NetPlan, report: FoldReport) -> None:
    """Folded lookups whose every field's ids come straight from a layer that bounds them
    within the field's vocabulary (`_id_bound`), taken as they come (`serving_ids_unshifted`):
    their id check could never fail, so it is left out of the serving graph."""
    for n in graph.nodes:
        key = id(n.raw)
        if key not in result.lookups or key not in result.skip or not n.layer.serving_ids_unshifted:
            continue
        vocab = n.layer.field_vocab_sizes
        stack = result.columns.get(key)
        if stack is not None:
            bounds = [_id_bound(graph.producer.get(id(t))) for t in stack.inputs]
        elif n.inputs:
            bounds = [_id_bound(graph.producer.get(id(n.inputs[0])))] * len(vocab)
        else:
            continue
        if all(b is not None and b[0] <= v for b, v in zip(bounds, vocab)):
            result.prechecked.add(key)
            names = sorted({b[1] for b in bounds})
            report.leave_out_id_check(n.layer.name, f"its ids come from {', '.join(names)}, whose outputs fit the "
                                                    "fields' vocabularies")


def _plans(plan: NetPlan) -> list:
    """`plan` and the plans nested in it, outermost first."""
    return [plan] + [q for p in plan.nested.values() for q in _plans(p)]


def fold_ranks(plan: NetPlan | None, compacted: dict, report: FoldReport) -> None:
    """Rank-fold the per-field lookups that only folded Dense layers read.

    A field of n ids whose kept values span r < k of its k kept columns (always when n < k:
    a field of 3 ids keeping 16 columns has rank at most 3) is stored as its coordinates in an
    orthonormal basis of its rows (`keras_embdim.export.compact.rank_fold`); every folded Dense
    reading the lookup gets the basis multiplied into its kernel rows (`x W = z (B W)`, `z = x
    B'`), so a request computes r columns of the field instead of k: the same outputs to float32
    rounding, a narrower matmul. A parameter budget lets such fields keep every column, so the
    searched model's first Dense is wider than it needs to be (`docs/results/serving.md`).

    Only where every use of the lookup is a `DenseFold` (no padded output, no cross, FM,
    pooling or per-slot Dense reads it, whose results depend on the columns themselves) and the
    export stores float32. The fields folded are recorded in the report (`rank_folded`).
    """
    if plan is None:
        return
    plans = _plans(plan)
    readers, blocked = {}, set()
    for p in plans:
        for key, c in p.lookups.items():
            if key in p.placed or key not in p.skip:
                blocked.add(c.layer)
        blocked |= {n.layer for n in p.pooled.values()}
        for f in p.dense.values():
            if isinstance(f, SlotDenseFold):
                blocked.add(f.source.layer)
                continue
            for i, (kind, src) in enumerate(f.sources):
                if kind == "lookup":
                    readers.setdefault(src.layer, []).append((f, i))
        for f in list(p.cross.values()) + list(p.fm.values()):
            blocked |= {src.layer for kind, src in f.sources if kind == "lookup"}
    for layer, reads in readers.items():
        if layer in blocked or report.layers.get(layer.name, {}).get("padded") or layer not in compacted:
            continue
        old = compacted[layer].lookup
        if not isinstance(old, FieldLookup) or old.rank_folded or not old.kept_width:
            continue
        reads = sorted(reads, key=lambda r: -r[1])  # a Dense's later sources first: earlier offsets hold
        kept_width = old.kept_width
        old_codes = {}  # the plan's kernel rows are in the old lookup's column order
        for f, i in reads:
            positions = f.widths[i][0] // kept_width
            if positions not in old_codes:
                old_codes[positions] = old.folded_codes(positions)
        old = None  # `rank_fold` frees the old lookup's tables before it builds the new ones
        if not compact_lib.rank_fold(compacted[layer]):
            continue
        new = compacted[layer].lookup
        for f, i in reads:
            widths = [list(w) for w in f.widths]
            start, (width,) = sum(sum(w) for w in widths[:i]), widths[i]
            positions = width // kept_width
            codes = old_codes[positions]
            where = np.full(int(codes.max(initial=-1)) + 1, -1, np.int64)
            where[codes[codes >= 0]] = np.flatnonzero(codes >= 0)
            col, code, coef = new.folded_expansion(positions)
            if code.size and (code.max() >= where.size or (where[code] < 0).any()):  # same kept columns, always
                raise RuntimeError(f"layer '{layer.name}': its rank-folded lookup reads a column the plan has no "
                                   "kernel row for.")
            piece = f.rows[start:start + width].astype(np.float64)
            rows = np.zeros((positions * new.kept_width, f.rows.shape[1]))
            np.add.at(rows, col, coef[:, None] * piece[where[code]])
            f.rows = np.concatenate([f.rows[:start], rows.astype(f.rows.dtype), f.rows[start + width:]])
            widths[i] = [positions * new.kept_width]
            f.widths = widths
            f.groups, kernels = kernel_groups(f.rows, widths)
            f.kernels = _kernel_variables(f.node, kernels)
        compacted[layer].lookup = new
        mask = layer.dimension_mask()
        report.add(layer.name)
        report.layers[layer.name]["rank_folded"] = {
            mask.field_names[int(fi)]: {"kept": len(cols), "served": int(b.shape[0])}
            for g in new.groups for fi, cols, b in zip(g.fields, g.columns, g.basis or []) if b is not None}


def _feeds_only_folded(raw_id, graph: "_Graph", folded: set, downstream) -> bool:
    """Whether every path from this call (data-moving, or a planned cross) ends in a folded call
    (`folded`: id(raw) of the folded Dense and planned cross calls), none in a model output."""
    node = next(n for n in graph.nodes if id(n.raw) == raw_id)
    if any(id(t) in graph.outputs for t in node.outputs):
        return False
    for c in [c for t in node.outputs for c in graph.consumers.get(id(t), [])]:
        if id(c.raw) in folded:
            continue
        if id(c.raw) in downstream and _feeds_only_folded(id(c.raw), graph, folded, downstream):
            continue
        return False
    return True


class _NotFoldable(Exception):
    pass


def _static_size(t) -> int:
    shape = tuple(t.shape)[1:]
    if any(d is None for d in shape):
        raise _NotFoldable(f"an input of the folded Dense has an unknown shape {tuple(t.shape)}")
    return int(np.prod(shape, dtype=np.int64))


def kernel_groups(selected: np.ndarray, widths: list) -> tuple[list, list]:
    """`(groups, kernels)`: which pieces of a folded Dense input are concatenated and multiplied
    together, and their rows of the selected kernel `[sum of widths, units]`.

    `widths[s]` holds the columns of each piece of source `s` (in x's order). A source of
    several pieces (a `SplitLookup`'s parts) gives each non-empty piece a group of its own:
    its kernel rows are multiplied by it where it is computed, and the request pays no copy
    of every kept value into one tensor (`docs/results/serving.md`); every other piece joins
    one group, concatenated as before. Groups are in the order of their first piece.

    Example:

    >>> groups, kernels = kernel_groups(np.arange(12.0).reshape(6, 2), [[2], [1, 3]])
    >>> groups, [k[:, 0].tolist() for k in kernels]
    ([[0], [1], [2]], [[0.0, 2.0], [4.0], [6.0, 8.0, 10.0]])
    >>> kernel_groups(np.zeros((3, 1)), [[2], [1]])[0]
    [[0, 1]]
    """
    starts = np.cumsum([0] + [w for ws in widths for w in ws])
    groups, shared, piece = [], None, 0
    for ws in widths:
        for w in ws:
            if len(ws) > 1 and w:
                groups.append([piece])
            elif shared is None:
                shared = [piece]
                groups.append(shared)
            else:
                shared.append(piece)
            piece += 1
    kernels = [selected[np.concatenate([np.arange(starts[p], starts[p + 1]) for p in g])] for g in groups]
    return groups, kernels


def slot_kernel(codes: np.ndarray, kernel: np.ndarray, output_dim: int,
                slots: int) -> tuple[np.ndarray, np.ndarray]:
    """`(place, slot_kernel)` of a Dense applied to every slot (the `output_dim` columns of one
    position, or of one field at one position) of a searched output, from its folded lookup's
    `codes` (`folded_codes` of its parts side by side: each folded column's flat index in the
    padded output, -1 for a column that is always zero).

    A slot's run is its first kept column and the columns up to the next slot's first one
    (its other kept columns and its padding). `place[i]`: where folded column i goes in
    `[slots, width]` (`width` the longest run; -1 for columns before the first run, always
    zero); `slot_kernel[s, r]` the kernel row of slot s's r-th column (zeros for padding).

    Example: two fields of `output_dim` 3; field 0 keeps columns 0 and 2, field 1 column 1
    padded to width 2:

    >>> place, k = slot_kernel(np.array([0, 2, 4, -1]), np.arange(6.0).reshape(3, 2), 3, 2)
    >>> place.tolist(), k[:, :, 0].tolist()
    ([0, 1, 2, 3], [[0.0, 4.0], [2.0, 0.0]])
    """
    runs: list = []  # [slot, first column, columns]
    for i, code in enumerate(codes):
        if code >= 0 and (not runs or code // output_dim != runs[-1][0]):
            runs.append([int(code) // output_dim, i, 1])
        elif runs:
            runs[-1][2] += 1
    seen = [slot for slot, _, _ in runs]
    if len(set(seen)) != len(seen) or any(s >= slots for s in seen):
        raise _NotFoldable("a slot's kept columns are not side by side in its lookup")
    width = max((n for _, _, n in runs), default=0)
    place = np.full(len(codes), -1, np.int64)
    out = np.zeros((slots, width, kernel.shape[1]), kernel.dtype)
    for slot, at, n in runs:
        place[at:at + n] = slot * width + np.arange(n)
        cols = codes[at:at + n]
        out[slot, :n][cols >= 0] = kernel[cols[cols >= 0] % output_dim]
    return place, out


def pooled_codes(lookup) -> np.ndarray:
    """Codes (`folded_codes`) of a single-field lookup's folded columns at one position: the
    columns of its output pooled over positions (`_pool`), part by part.

    Pooling runs each part's folded output `[batch, positions * K_p]` as `[batch, positions,
    K_p]`; this holds when every position repeats the first one's columns, checked here on
    two positions. Raises `_NotFoldable` otherwise.
    """
    one, two = lookup.folded_codes(1), lookup.folded_codes(2)
    width = lookup.num_fields * lookup.output_dim
    expected, start = [], 0
    for w in lookup.folded_part_widths(1):
        part = one[start:start + w]
        expected += [part, np.where(part >= 0, part + width, -1)]
        start += w
    if lookup.multi_field or not np.array_equal(np.concatenate(expected + [np.zeros(0, np.int64)]), two):
        raise _NotFoldable("its lookup's folded columns are not laid out position by position")
    return one


def _source_entries(kind: str, src: Any, compacted: dict, crosses: dict, pooled: dict | None) -> tuple:
    """`(tensor, entries, widths)` of one source: the symbolic tensor it gives, the flat index
    in that tensor (per example) of every entry of its pieces side by side (-1: a lookup's
    padding column, always zero), and the columns of each piece (`kernel_groups`). A folded
    source's pieces hold only its kept entries; a tensor's, all of them."""
    t = src if kind == "tensor" else src.outputs[0]
    size = _static_size(t)
    if kind == "pooled":
        lookup = compacted[pooled[id(src.raw)].layer].lookup
        if size != lookup.output_dim:
            raise _NotFoldable(f"pooling '{src.layer.name}' has an output of unexpected shape {tuple(t.shape)}")
        return t, pooled_codes(lookup), lookup.folded_part_widths(1)
    if kind == "lookup":
        lookup = compacted[src.layer].lookup
        per_position = lookup.num_fields * lookup.output_dim if src.layer.multi_field else lookup.output_dim
        if size % per_position:
            raise _NotFoldable(f"layer '{src.layer.name}' has an output of unexpected shape {tuple(t.shape)}")
        return t, lookup.folded_codes(size // per_position), lookup.folded_part_widths(size // per_position)
    if kind == "cross":
        cols = crosses[id(src.raw)].cols
        return t, cols, [len(cols)]
    return t, np.arange(size, dtype=np.int64), [size]


def _probe(target: Any, region: list, sources: list, compacted: dict, crosses: dict,
           pooled: dict | None = None) -> tuple:
    """Feed every source entry a distinct integer code, run the data-moving calls of `region`
    and read `target`: `(cols, x, widths)`. `cols[i]`: the entry of the sources' pieces side
    by side that target entry i holds (-1: a removed column of a folded source, an exact
    zero); `x`: the code of every entry of those pieces (0 for a lookup's padding column,
    which is always zero); `widths`: the columns of each source's pieces (`kernel_groups`).
    The folded sources (lookups, pooled lookups, planned crosses) hold only their kept
    entries; `pooled` maps a pooling call to the searched call it pools."""
    if any(_is_affine(r) for r in region):
        raise _NotFoldable("an affine layer on the way (a Dense after it folds, `_affine_fold`; nothing else does)")
    feeds, x_codes, ranges, base, widths = [], [], [], 1, []
    for kind, src in sources:
        t, folded, source_widths = _source_entries(kind, src, compacted, crosses, pooled)
        size = _static_size(t)
        codes = np.arange(base, base + size, dtype=np.int64)
        feeds.append((t, codes))
        widths.append(source_widths)
        x_codes.append(np.where(folded >= 0, base + folded, 0))
        if kind != "tensor":
            ranges.append((base, base + size))
        base += size
    where = _run_codes(region, feeds, target, {id(r.raw): i for i, r in enumerate(region)})  # region: in order
    if where is None:
        raise _NotFoldable("its input could not be traced to its sources")
    x = np.concatenate(x_codes)
    column = np.full(base, -1, np.int64)
    column[x[x > 0]] = np.flatnonzero(x > 0)
    cols = column[np.clip(where, 0, base - 1)]
    removed = np.zeros(where.shape, bool)
    for lo, hi in ranges:
        removed |= (where >= lo) & (where < hi) & (cols < 0)  # a removed column of a folded source: exact zero
    unknown = (cols < 0) & ~removed
    if unknown.any():
        raise _NotFoldable(f"{int(unknown.sum())} of its inputs come from no known source")
    return cols, x, widths


def _fold_kernel(dn: _compat.GraphNode, region: list, sources: list, compacted: dict,
                 crosses: dict | None = None, pooled: dict | None = None) -> tuple:
    """`(kernel rows, widths, bias, post)`: the Dense kernel rows matching the folded sources
    (found by probing the layers between, `_probe`, or `_affine_fold` when an affine layer is
    among them), the columns of each source's pieces (`kernel_groups`), the bias to serve with
    them (None: the layer's own), and None; or, after an affine region that narrows its n kept
    entries to m Dense inputs (an average over fields), the rows of `L` and the layer's kernel
    as `post`, served as `(x_kept L) W` (`_factorized`)."""
    kernel = _utils.to_numpy(dn.layer.kernel)
    affine = any(_is_affine(r) for r in region)
    try:
        if affine:
            linear, offset, widths = _affine_fold(dn.inputs[0], region, sources, compacted, crosses or {}, pooled)
            inputs = linear.shape[1]
        else:
            cols, x, widths = _probe(dn.inputs[0], region, sources, compacted, crosses or {}, pooled)
            inputs = cols.shape[0]
    except _NotFoldable as e:
        raise _NotFoldable(f"Dense '{dn.layer.name}': {e}") from None
    if inputs != kernel.shape[0]:
        raise _NotFoldable(f"Dense '{dn.layer.name}' has {kernel.shape[0]} inputs, the probe {inputs}")
    if affine:
        bias = offset @ kernel.astype(np.float64)
        if dn.layer.bias is not None:
            bias = bias + _utils.to_numpy(dn.layer.bias)
        bias = bias.astype(kernel.dtype)
        if _factorized(*linear.shape, kernel.shape[1]):
            return linear.astype(kernel.dtype), widths, bias, kernel
        return (linear @ kernel.astype(np.float64)).astype(kernel.dtype), widths, bias, None
    selected = np.zeros((x.shape[0], kernel.shape[1]), kernel.dtype)
    used = cols >= 0
    np.add.at(selected, cols[used], kernel[used])  # an entry that reaches the Dense twice sums its rows
    return selected, widths, None, None


def _plan_slot_dense(dn: _compat.GraphNode, src: _compat.GraphNode, compacted: dict) -> SlotDenseFold:
    """The Dense call `dn` on the output of searched call `src`, per slot (`SlotDenseFold`)."""
    lookup = compacted[src.layer].lookup
    t, codes, _ = _source_entries("lookup", src, compacted, {}, None)
    kernel = _utils.to_numpy(dn.layer.kernel)
    if kernel.shape[0] != lookup.output_dim:
        raise _NotFoldable(f"it has {kernel.shape[0]} inputs per slot, the layer {lookup.output_dim} columns")
    slots = _static_size(t) // lookup.output_dim
    place, k = slot_kernel(codes, kernel, lookup.output_dim, slots)
    in_place = np.array_equal(place, np.arange(place.shape[0])) and place.shape[0] == k.shape[0] * k.shape[1]
    if (k == k[:1]).all():  # every slot the same rows (a sequence of one field): one `[width, units]` kernel
        k = k[0]
    elif 2 * k.shape[1] > lookup.output_dim:
        # measured (benchmarks/serving_models.py, "projected"): slots placed nearly as wide as the padded output
        # cost more in one batched product of per-slot kernels than the padded output in one matmul
        raise _NotFoldable(f"its widest slot keeps {k.shape[1]} of {lookup.output_dim} columns: one matmul of the "
                           "padded output costs less than a product per slot")
    return SlotDenseFold(dn, src, None if in_place else place,
                         [_utils.plain_variable(k, name=f"{dn.layer.name}_folded_kernel")], slots)


def _factorized(entries: int, inputs: int, units: int) -> bool:
    """Whether a Dense after an affine map `L [entries, inputs]` is served as `(x L) W` rather
    than `x (L W)`: when that takes at most half the multiply-adds per example (an average
    of many kept values into few columns; one matmul more per request otherwise costs more
    than it saves).

    Example:

    >>> _factorized(192, 16, 128), _factorized(26, 16, 128), _factorized(40, 54, 4)
    (True, False, False)
    """
    return entries * inputs + inputs * units <= entries * units / 2


_MAX_AFFINE_ENTRIES = 1 << 14  # basis rows probed at once


def _affine_fold(target: Any, region: list, sources: list, compacted: dict, crosses: dict,
                 pooled: dict | None) -> tuple[np.ndarray, np.ndarray, list]:
    """`(linear [n, m], offset [m], widths)`: the region between the sources and `target` (the
    Dense input, m entries) as the affine map `target = x @ linear + offset` of the n entries
    `x` of the sources' pieces side by side (a lookup's padding columns: zero rows).

    The region (data-moving layers and `AFFINE` ones, at inference) is run once on a batch
    whose first example is all zeros (the offset) and whose example i + 1 is entry i alone at
    one (its row plus the offset); removed columns of folded sources are zeros there, as they
    are when served. A random combination of the entries is checked against the map, so a
    layer that is not affine after all is refused rather than folded wrongly; and the batch is
    run again split in two (the basis, then the combination alone), which must give the same
    rows, so that a call mixing the examples of a batch (a transpose of the batch axis, a sum
    over it) is refused too, as `_run_codes` does for the probes.
    """
    entries = [_source_entries(kind, src, compacted, crosses, pooled) for kind, src in sources]
    n = sum(len(e) for _, e, _ in entries)
    if n + 2 > _MAX_AFFINE_ENTRIES:
        raise _NotFoldable(f"its sources have {n} entries, too many to probe")
    rng = np.random.default_rng(0)
    check = rng.standard_normal(n)
    values, start = {}, 0
    for t, positions, _ in entries:
        size = _static_size(t)
        batch = np.zeros((n + 2, size), np.float32)
        kept = positions >= 0
        rows = 1 + start + np.flatnonzero(kept)
        batch[rows, positions[kept]] = 1.0
        batch[n + 1, positions[kept]] = check[start:start + len(positions)][kept]
        values[id(t)] = tf.constant(batch.reshape([n + 2, *tuple(t.shape)[1:]]))
        start += len(positions)
    order = {id(r.raw): i for i, r in enumerate(region)}  # region: in execution order
    out = _run_affine(region, values, target, order)
    if out is None:
        raise _NotFoldable("its input could not be traced to its sources")
    # the batch run again as two batches (the basis; the random combination alone) must give the same rows
    parts = [_run_affine(region, {k: v[rows] for k, v in values.items()}, target, order)
             for rows in (slice(0, n + 1), slice(n + 1, n + 2))]
    apart = np.concatenate(parts) if all(p is not None and p.shape[1:] == out.shape[1:] for p in parts) else None
    if (out.shape[0] != n + 2 or apart is None or apart.shape != out.shape
            or not np.allclose(apart, out, rtol=1e-5, atol=1e-6 * (1 + np.abs(out[np.isfinite(out)]).max(initial=0)),
                               equal_nan=True)):
        raise _NotFoldable("a call on its way mixes the examples of a batch")
    out = out.reshape(n + 2, -1).astype(np.float64)
    offset, linear = out[0], out[1:n + 1] - out[0]  # a padding column's row: its example is all zeros too
    want = offset + check @ linear
    if not np.allclose(out[n + 1], want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max(initial=0))):
        raise _NotFoldable("the layers before it are not affine in its sources")
    return linear, offset, [w for _, _, w in entries]


def _run_affine(region: list, feeds: dict, target: Any, order: dict) -> np.ndarray | None:
    """`target`'s value (None: not reached) when the calls of `region` run on `feeds` (id(tensor) -> value)."""
    values = dict(feeds)
    _run_region(region, values, order)
    out = values.get(id(target))
    return None if out is None else _utils.to_numpy(out)


def _cross_columns(x0: Any, region: list, sources: list, compacted: dict, pooled: dict) -> np.ndarray:
    """`cols[i]`: the column of `x0` that entry i of its sources' pieces (side by side) lands in,
    -1 for a lookup's padding column (always zero). Every other entry must land exactly once."""
    cols, x, _ = _probe(x0, region, sources, compacted, {}, pooled)
    found = cols[cols >= 0]
    if np.bincount(found, minlength=x.shape[0]).max(initial=0) > 1:
        raise _NotFoldable("an entry of its x0 appears twice")
    out = np.full(x.shape[0], -1, np.int64)
    out[found] = np.flatnonzero(cols >= 0)
    if ((out < 0) & (x > 0)).any():
        raise _NotFoldable("an entry of its sources does not reach its x0")
    return out


def _takes_int64_ids(layer) -> bool:
    """Layers that take int64 ids exactly as int32 ones (no cast that could wrap)."""
    from keras_embdim.layers import FieldOffsets, MixedDimensionEmbedding, StackFields
    from keras_embdim.searchable import DimensionSearchable

    return isinstance(layer, (DimensionSearchable, StackFields, FieldOffsets, MixedDimensionEmbedding,
                              keras.layers.Embedding))


def run(plan: NetPlan, inputs: Any) -> Any:
    """Run the planned graph network on `inputs` (dict, list or tensor), in inference mode.

    Integer inputs arrive as served (int64 from `serving_default`); an input
    whose every consumer takes int64 ids is fed as it is, the others are
    converted to the model's dtype (saturating), so a request pays no per-input
    cast where none is needed.
    """
    net = plan.net
    flat = _compat.flat_graph_inputs(net, inputs)
    nodes = plan.nodes
    values = {}
    for t, v in zip(_compat.graph_inputs(net), flat):
        v = tf.convert_to_tensor(v)
        dtype = _utils.symbolic_dtype(t)
        if v.dtype != dtype:
            users = [n.layer for n in nodes if any(x is t for x in n.inputs)]
            if not (v.dtype.is_integer and dtype.is_integer and users and all(_takes_int64_ids(u) for u in users)):
                v = saturate_cast(v, dtype) if v.dtype.is_integer else tf.cast(v, dtype)
        values[id(t)] = v
    folded, reduced = {}, {}
    for node in nodes:
        key = id(node.raw)
        if key in plan.cross:
            reduced[key] = _run_cross(plan.cross[key], plan, values, folded, reduced)
            continue
        if key in plan.skip:
            continue
        if key in plan.placed:
            out = _run_placed(node, plan, values, folded, reduced)
        elif key in plan.fm:
            fold = plan.fm[key]
            dtype = tf.as_dtype(node.layer.compute_dtype)
            pieces = _pieces(fold.sources, plan, values, folded, reduced, dtype)
            x = pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=-1)
            out = fm_fold.fm(x, fold.weights[0], fold.weights[1], dtype)
        elif key in plan.dense and isinstance(plan.dense[key], SlotDenseFold):
            out = _run_slot_dense(plan.dense[key], plan, values, folded)
        elif key in plan.dense:
            out = _run_dense(plan.dense[key], plan, values, folded, reduced)
        elif key in plan.nested:
            args, _ = _compat.node_arguments(node, values)
            out = run(plan.nested[key], args[0])
        else:
            out = _call_node(node, values)
        for t, v in zip(node.outputs, _compat.flatten(out)):
            values[id(t)] = v
    return _compat.pack_graph_outputs(net, [values[id(t)] for t in _compat.graph_outputs(net)])


def _lookup_parts(node: _compat.GraphNode, plan: NetPlan, values: dict, folded: dict) -> list:
    """The folded parts of a searched call's lookup (looked up once however many calls read them)."""
    key = id(node.raw)
    if key not in folded:
        lookup = plan.lookups[key].lookup
        stack = plan.columns.get(key)
        if stack is not None:  # per-field ids, as the StackFields call takes them
            columns = field_columns([values[id(t)] for t in stack.inputs])
            folded[key] = lookup.folded_fields_parts(node.layer.serving_field_ids(columns),
                                                     checked=key in plan.prechecked)
        else:
            args, _ = _compat.node_arguments(node, values)
            folded[key] = lookup.folded_parts(node.layer.serving_ids(args[0]), checked=key in plan.prechecked)
    return folded[key]


def _pool(node: _compat.GraphNode, parts: list, widths: list, mask) -> list:
    """Each folded part `[batch, positions * K_p]` pooled over its positions by the pooling
    layer of `node` itself, with the searched layer's mask: `[batch, K_p]`."""
    out = []
    for part, width in zip(parts, widths):
        if not width:
            out.append(tf.zeros(tf.stack([tf.shape(part)[0], 0]), part.dtype))
            continue
        seq = tf.reshape(part, tf.stack([tf.shape(part)[0], -1, width]))
        pooled = _compat.call_for_inference(node.layer, (seq,), {"mask": mask} if mask is not None else {})
        out.append(tf.reshape(pooled, [-1, width]))
    return out


def _pieces(sources: list, plan: NetPlan, values: dict, folded: dict, reduced: dict, dtype) -> list:
    """The served pieces of folded sources, in order: a lookup's folded parts (looked up once
    however many calls read them), those parts pooled (`_pool`), a planned cross's reduced
    output, a tensor as `[batch, -1]`."""
    pieces = []
    for kind, src in sources:
        if kind == "lookup":
            pieces += [tf.cast(p, dtype) for p in _lookup_parts(src, plan, values, folded)]
        elif kind == "pooled":
            key = id(src.raw)
            if key not in folded:
                searched = plan.pooled[key]
                parts = _lookup_parts(searched, plan, values, folded)
                widths = plan.lookups[id(searched.raw)].lookup.folded_part_widths(1)
                folded[key] = _pool(src, parts, widths, _pool_mask(src, searched, values))
            pieces += [tf.cast(p, dtype) for p in folded[key]]
        elif kind == "cross":
            pieces.append(tf.cast(reduced[id(src.raw)], dtype))
        else:
            v = tf.convert_to_tensor(values[id(src)])
            pieces.append(tf.cast(tf.reshape(v, tf.stack([tf.shape(v)[0], -1])), dtype))
    return pieces


def _run_placed(node: _compat.GraphNode, plan: NetPlan, values: dict, folded: dict, reduced: dict) -> tf.Tensor:
    """A searched call's padded output `[batch, ..., F, D]`, placed from its folded lookup (the
    one its folded Dense layers read): each column from its kept value (`folded_codes`), the
    removed ones zeros, by one gather."""
    lookup = plan.lookups[id(node.raw)].lookup
    pieces = _pieces([("lookup", node)], plan, values, folded, reduced, tf.float32)
    kept = pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=-1)
    shape = tuple(node.outputs[0].shape)[1:]
    size = int(np.prod(shape, dtype=np.int64))
    codes = lookup.folded_codes(size // (lookup.num_fields * lookup.output_dim if node.layer.multi_field
                                         else lookup.output_dim))
    return tf.cast(tf.reshape(placed(kept, codes, size), [-1, *shape]), node.layer.compute_dtype)


def _run_cross(fold: CrossFold, plan: NetPlan, values: dict, folded: dict, reduced: dict) -> tf.Tensor:
    """A planned cross layer's output on the kept columns (`keras_embdim.export.cross`); the
    reduced x0 of a cross stack is put together once."""
    dtype = tf.as_dtype(fold.node.layer.compute_dtype)
    x0_key = ("x0", id(fold.x0))
    if x0_key not in reduced:
        pieces = _pieces(fold.sources, plan, values, folded, reduced, dtype)
        reduced[x0_key] = pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=-1)
    x0 = reduced[x0_key]
    x = x0 if fold.x_from is None else tf.cast(reduced[fold.x_from], dtype)
    return cross_fold.cross(x0, x, fold.weights, fold.spec, dtype)


def _run_dense(fold: DenseFold, plan: NetPlan, values: dict, folded: dict, reduced: dict) -> tf.Tensor:
    layer = fold.node.layer
    dtype = tf.as_dtype(layer.compute_dtype)
    pieces = _pieces(fold.sources, plan, values, folded, reduced, dtype)
    products = []
    for group, kernel in zip(fold.groups, fold.kernels):
        x = pieces[group[0]] if len(group) == 1 else tf.concat([pieces[i] for i in group], axis=-1)
        products.append(_utils.matmul(x, tf.cast(kernel, dtype)))  # zeros for a group that keeps nothing
    if fold.post is not None:  # (x_kept L) W: the affine region's inputs, then the layer's own kernel
        products = [_utils.matmul(products[0] if len(products) == 1 else tf.add_n(products), tf.cast(fold.post, dtype))]
    # the widest group's product takes the bias and the others' sum: Grappler fuses MatMul + BiasAdd
    # (+ Add) + activation into one op, as for Keras' Dense
    last = max(range(len(products)), key=lambda i: int(fold.kernels[i].shape[0]))
    y = products[last]
    bias = fold.bias if fold.bias is not None else layer.bias
    if bias is not None:
        y = tf.nn.bias_add(y, tf.cast(bias, dtype))
    others = products[:last] + products[last + 1:]
    if others:
        y = y + (others[0] if len(others) == 1 else tf.add_n(others))
    return layer.activation(y) if layer.activation is not None else y


def _run_slot_dense(fold: SlotDenseFold, plan: NetPlan, values: dict, folded: dict) -> tf.Tensor:
    """A Dense call per slot of a searched output (`SlotDenseFold`), from the kept values: one
    gather placing them by slot (none where they are in place), one batched product."""
    layer = fold.node.layer
    dtype = tf.as_dtype(layer.compute_dtype)
    parts = _lookup_parts(fold.source, plan, values, folded)
    x = tf.cast(parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1), dtype)
    kernel = fold.kernels[0]
    slots = fold.slots
    width, units = (int(d) for d in kernel.shape[-2:])
    if not width:  # no kept column at all: the bias alone
        y = tf.zeros(tf.stack([tf.shape(x)[0], slots, units]), dtype)
    else:
        if fold.place is not None:
            x = placed(x, fold.place, slots * width)
        if len(kernel.shape) == 2:  # one kernel for every slot: one matmul over all of them
            y = tf.reshape(tf.matmul(tf.reshape(x, [-1, width]), tf.cast(kernel, dtype)), [-1, slots, units])
        else:
            y = tf.einsum("bsw,swu->bsu", tf.reshape(x, [-1, slots, width]), tf.cast(kernel, dtype))
    if layer.bias is not None:
        y = tf.nn.bias_add(y, tf.cast(layer.bias, dtype))
    y = layer.activation(y) if layer.activation is not None else y
    return tf.reshape(y, [-1, *tuple(fold.node.outputs[0].shape)[1:]])


# ------------------------------------------------- where a layer's outputs enter Dense kernels
@dataclass
class KernelRows:
    """Where a searchable layer's output enters one Dense kernel: `rows[p, f, j]` is the
    kernel row that output entry (position `p`, field `f`, column `j`) multiplies (F = 1 for
    a single-field layer)."""

    dense: Any  # the keras.layers.Dense
    rows: np.ndarray  # int64 [positions, F, D]


def _calls(net: Any, counts: dict | None = None) -> dict:
    """id(layer) -> the calls of it that running `net` makes, those inside sub-models once per
    call of the sub-model (a layer of a tower called twice: 2)."""
    counts = {} if counts is None else counts
    for n in _compat.graph_nodes(net):
        counts[id(n.layer)] = counts.get(id(n.layer), 0) + 1
        inner = _compat.graph_network(n.layer) if isinstance(n.layer, keras.Model) else None
        if inner is not None:
            _calls(inner, counts)
    return counts


def kernel_rows(model: Any, layer: Any) -> tuple[list[KernelRows], str | None]:
    """The Dense kernel rows that `layer`'s output entries multiply, found as `plan` finds them
    (forward through data-moving layers only, then a probe of those layers).

    Returns `(kernel rows per Dense, None)` when every entry of the output reaches Dense
    layers only, each Dense exactly once, else `([], why not)`. Used to rotate a field's
    columns without changing the model's function (`keras_embdim.search.rotation`): the
    kernel rows of a field take the inverse rotation.
    """
    net = _compat.graph_network(model)
    if net is None:
        return [], f"model '{model.name}' is subclassed: its call cannot be analysed"
    graph = _Graph.of(net, {layer})
    calls = [n for n in graph.nodes if n.layer is layer]
    if len(calls) != 1:
        where = "is not called by the model's top-level graph" if not calls else "is called more than once"
        return [], f"layer '{layer.name}' {where}"
    node = calls[0]
    reach = graph.dense_reach(node)
    why, region, denses = reach.why, reach.region, reach.denses
    if why:
        return [], why
    calls = _calls(net)
    out = node.outputs[0]
    try:
        size = _static_size(out)
    except _NotFoldable as e:
        return [], str(e)
    per_position = layer.num_fields * layer.output_dim if layer.multi_field else layer.output_dim
    if size % per_position:
        return [], f"layer '{layer.name}' has an output of unexpected shape {tuple(out.shape)}"
    found = []
    for dn in sorted(denses, key=lambda d: graph.order[id(d.raw)]):
        if calls.get(id(dn.layer), 0) > 1:  # its kernel rows also take the sub-model's other inputs
            return [], f"Dense '{dn.layer.name}' is in a sub-model called more than once"
        # the data-moving calls between the sources and this Dense, and their other inputs
        steps, sources = graph.sources_of(dn.inputs[0], region, {id(node.raw): node}, {})
        feeds, base = [], size + 1
        for kind, src in sources:
            t = out if kind == "lookup" else src
            if kind == "lookup":  # ours: codes 1..size
                codes = np.arange(1, size + 1)
            else:  # another source: codes that are not ours
                try:
                    codes = np.arange(base, base + _static_size(t))
                except _NotFoldable as e:
                    return [], str(e)
                base += codes.size
            feeds.append((t, codes))
        try:
            where = _run_codes(steps, feeds, dn.inputs[0], graph.order)
        except _NotFoldable as e:
            return [], f"Dense '{dn.layer.name}': {e}"
        if where is None:
            return [], f"the input of Dense '{dn.layer.name}' could not be traced to its sources"
        ours = (where >= 1) & (where <= size)
        entry = where[ours] - 1
        if np.bincount(entry, minlength=size).max(initial=0) > 1 or entry.size not in (0, size):
            return [], f"entries of '{layer.name}' reach Dense '{dn.layer.name}' more than once or only in part"
        if entry.size == 0:
            continue
        rows = np.empty(size, np.int64)
        rows[entry] = np.flatnonzero(ours)
        fields = layer.num_fields if layer.multi_field else 1
        found.append(KernelRows(dn.layer, rows.reshape(size // per_position, fields, layer.output_dim)))
    if not found:
        return [], "its output reaches no Dense layer"
    return found, None
