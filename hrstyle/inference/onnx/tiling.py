"""Exact tiled inference on ONNX Runtime, with stage caching.

The same algorithm as ``tiling.py`` (read its docstring first): every instance norm's statistics are
accumulated exactly over the tiles' cores, pass by pass in dependency order, then every tile is
stylized with all statistics frozen and the tiles are blended. Here it runs on the exported graph
instead of the eager model, and each layer is computed about once instead of once per later pass:

* **Graph surgery, once per model.** In a copy of the exported graph every ``InstanceNormalization``
  becomes a ``BatchNormalization`` whose mean and variance are graph inputs (the frozen statistics),
  and each norm's input gets a small side branch that outputs the mean and the sum of squared
  deviations of the tile's core (``Slice`` by the core box, fed per tile). A norm's *level* is the
  pass that measures it: 1 + the highest level among the norms its input depends on.
* **Stage caching.** Pass ``p`` computes only what depends on the norms of level ``p - 1`` (its
  subgraph starts from the tensors that pass ``p - 1`` left for it, the *cut*) and leaves the cut for
  pass ``p + 1``: per tile, the tensors that are computable now and feed something that is not. Cuts
  are trimmed back through cheap ops (a bilinear upsampling is stored at its source resolution, a
  concatenation as its parts). So the statistics cost about one forward pass in all, and the final
  stylizing pass starts from the last cut (≈ 1.5× an untiled forward measured, against ≈ 7× eager).
* **The colour branch** (``hrstyle.models.color``), when the network has one, computes the RGB mean
  and covariance of its input: in the tiles' graph those two tensors become inputs too, fed with the
  whole image's moments (``whole_image_moments``), so every tile gets the whole photo's colour map.
* **Bounded memory.** Cuts are kept only within ``cache_bytes`` (``Stylizer`` sizes it from its memory
  budget, ``memory.plan_tiling``; called directly, 25% of the available memory; at 2048² in 1024 px
  tiles the largest pass needs 2.7 GiB, and a cache of 1 GiB made the tiling cost 7.2× an untiled
  forward, 2 GiB 3.0×, 3 GiB 2.7×). A tile whose cut does not fit
  continues from its last stored cut (or the image), recomputing what lies between: on a 24 MP photo with 1024 px tiles, most tiles recompute,
  and the peak stays that of one tile plus the image and the result.

Subgraphs are extracted from the one exported graph by name (no re-export) and their sessions kept
per (start cut, pass) for the life of the tiler.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrstyle.image.tiles import ALIGN, RECEPTIVE_RADIUS, RunningMoments, add_tile, make_tiles, min_tile_size
from hrstyle.inference.onnx.export import INPUT_NAME, OUTPUT_NAME
from hrstyle.inference.onnx.memory import available_memory
from hrstyle.inference.onnx.session import import_onnxruntime, make_session
from hrstyle.models.color import whole_image_moments

#: Ops whose output a cut may replace by their inputs (recomputed in the next pass, nearly free).
CHEAP_OPS = {"Resize", "Concat", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Split", "Identity"}
#: Probe size for shapes and strides (a multiple of 4: strides are exact).
_PROBE = 64
_STRIDES = (1, 2, 4)
#: Inputs of the tiles' graph that replace the colour branch's own per-tile moments.
COLOR_MEAN, COLOR_COV = "hrs_color_mean", "hrs_color_cov"


def default_cache_bytes() -> int:
    """25% of the available memory (512 MiB when it cannot be read); ``Stylizer`` plans its own."""
    available = available_memory()
    return available // 4 if available else 512 << 20


@dataclass
class _Norm:
    index: int
    node_name: str
    x: str  # the norm's input tensor
    channels: int
    stride: int
    level: int = 0


@dataclass
class _TileState:
    level: int = -1  # the pass whose cut is stored (-1: none, start from the image)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    nbytes: int = 0


class OrtTiler:
    """Exact tiled stylization of one (1, 3, H, W) image with the ONNX graph at ``onnx_path``."""

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None) -> None:
        import onnx
        from onnx import TensorProto, helper

        ort = import_onnxruntime()
        self.threads = threads
        # Constant folding and the like (portable, standard ops): weight slices become initializers.
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        base_path = Path(onnx_path)
        folded = base_path.with_name(f".{base_path.stem}.{os.getpid()}.basic.onnx")
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(base_path), options, providers=["CPUExecutionProvider"])
        try:
            model = onnx.load(str(folded))
        finally:
            folded.unlink(missing_ok=True)
        graph = model.graph
        self.opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

        # Shapes of every tensor on a probe image: channels, strides, dtypes of cut tensors.
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        known = {o.name for o in probe.graph.output}
        for node in probe.graph.node:
            probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in node.output
                                      if o and o not in known)
        session = make_session(probe.SerializeToString(), threads, arena=False)
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {INPUT_NAME: np.zeros((1, 3, _PROBE, _PROBE), np.float32)})
        self.shapes = {n: v.shape for n, v in zip(names, values)}
        self.dtypes = {n: v.dtype for n, v in zip(names, values)}
        self.shapes[INPUT_NAME], self.dtypes[INPUT_NAME] = (1, 3, _PROBE, _PROBE), np.dtype(np.float32)
        del session, values

        self.color_moments = _color_moments(graph.node)
        if self.color_moments is not None:
            for new_name, old_name in zip((COLOR_MEAN, COLOR_COV), self.color_moments):
                self.shapes[new_name], self.dtypes[new_name] = self.shapes[old_name], self.dtypes[old_name]
                for node in graph.node:
                    for k, name in enumerate(node.input):
                        if name == old_name:
                            node.input[k] = new_name
        self.initializers = {t.name for t in graph.initializer}
        producer = {o: n for n in graph.node for o in n.output}
        self.norms: list[_Norm] = []
        nodes = []
        extra_init = [
            helper.make_tensor("hrs_axes_hw", TensorProto.INT64, [2], [2, 3]),
            helper.make_tensor("hrs_axes_w", TensorProto.INT64, [1], [3]),
            helper.make_tensor("hrs_axes_nh", TensorProto.INT64, [2], [0, 2]),
        ]
        for node in graph.node:
            if node.op_type != "InstanceNormalization":
                nodes.append(node)
                continue
            i = len(self.norms)
            x = node.input[0]
            shape = self.shapes[x]
            norm = _Norm(i, node.name, x, int(shape[1]), _PROBE // int(shape[2]))
            if norm.stride not in _STRIDES or _PROBE % shape[2]:
                raise RuntimeError(f"unexpected feature-map size {shape} for norm {node.name}")
            self.norms.append(norm)
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            nodes.append(helper.make_node(
                "BatchNormalization", [x, node.input[1], node.input[2], f"hrs_mean_{i}", f"hrs_var_{i}"],
                list(node.output), name=f"hrs_bn_{i}", epsilon=eps))
            core = f"hrs_core_{i}"
            s = norm.stride
            nodes += [
                helper.make_node("Slice", [x, f"hrs_start_s{s}", f"hrs_end_s{s}", "hrs_axes_hw"], [core]),
                # Two-level sums (rows, then over rows): float32 sums over a whole map drift.
                helper.make_node("ReduceMean", [core, "hrs_axes_w"], [f"hrs_rmean_{i}"], keepdims=1),
                helper.make_node("ReduceMean", [f"hrs_rmean_{i}", "hrs_axes_nh"], [f"hrs_tmean_{i}"], keepdims=1),
                helper.make_node("Sub", [core, f"hrs_tmean_{i}"], [f"hrs_dev_{i}"]),
                helper.make_node("ReduceSumSquare", [f"hrs_dev_{i}", "hrs_axes_w"], [f"hrs_rssq_{i}"], keepdims=1),
                helper.make_node("ReduceSum", [f"hrs_rssq_{i}", "hrs_axes_nh"], [f"hrs_tssq_{i}"], keepdims=1),
            ]
        if not self.norms:
            raise RuntimeError("no InstanceNormalization in the exported graph")
        self.nodes = nodes
        self.node_inputs = {id(n): [t for t in n.input if t] for n in nodes}
        self.producer = {o: n for n in nodes for o in n.output}
        self.initializer_protos = {t.name: t for t in list(graph.initializer) + extra_init}
        self.input_names = {INPUT_NAME} | {f"hrs_{k}_s{s}" for k in ("start", "end") for s in _STRIDES} \
            | {f"hrs_{k}_{n.index}" for k in ("mean", "var") for n in self.norms} | {COLOR_MEAN, COLOR_COV}
        del producer

        # Levels: 1 + the highest level among the norms upstream of a norm's input.
        norm_of_node = {f"hrs_bn_{n.index}": n for n in self.norms}
        self._upstream: dict[str, frozenset[int]] = {}
        for n in self.norms:
            ups = self._upstream_norms(n.x, norm_of_node)
            n.level = 1 + max((self.norms[u].level for u in ups), default=-1)
        self.passes = 1 + max(n.level for n in self.norms)
        self._norm_of_node = norm_of_node
        # Node availability per pass: all norms upstream (inclusive) measured in earlier passes.
        self._node_level = {}
        for node in nodes:
            ups = set()
            for t in self.node_inputs[id(node)]:
                ups |= self._upstream_norms(t, norm_of_node)
            if node.name in norm_of_node:
                ups.add(norm_of_node[node.name].index)
            self._node_level[id(node)] = 1 + max((self.norms[u].level for u in ups), default=-1)
        self.cuts = [self._cut(p) for p in range(self.passes)]
        self._sessions: dict[tuple, Any] = {}
        self._helper, self._onnx, self._model = helper, onnx, model

    # ----------------------------------------------------------------- graph analysis
    def _upstream_norms(self, tensor: str, norm_of_node: dict[str, _Norm]) -> frozenset[int]:
        """Indices of the norms whose output ``tensor`` depends on (iterative DFS, memoized)."""
        if tensor in self._upstream:
            return self._upstream[tensor]
        stack = [tensor]
        while stack:
            t = stack[-1]
            if t in self._upstream:
                stack.pop()
                continue
            node = self.producer.get(t)
            if node is None:
                self._upstream[t] = frozenset()
                stack.pop()
                continue
            pending = [i for i in self.node_inputs[id(node)] if i not in self._upstream]
            if pending:
                stack.extend(pending)
                continue
            ups = set()
            for i in self.node_inputs[id(node)]:
                ups |= self._upstream[i]
            if node.name in norm_of_node:
                ups.add(norm_of_node[node.name].index)
            self._upstream[t] = frozenset(ups)
            stack.pop()
        return self._upstream[tensor]

    def _available(self, tensor: str, p: int) -> bool:
        """Whether ``tensor`` can be computed in pass ``p`` (it depends only on norms of level < p)."""
        node = self.producer.get(tensor)
        return node is None or self._node_level[id(node)] <= p

    def _bytes_per_pixel(self, tensor: str) -> float:
        shape = self.shapes.get(tensor)
        if shape is None or len(shape) != 4:
            return 0.0
        return float(np.prod(shape[1:])) * self.dtypes[tensor].itemsize / (_PROBE * _PROBE)

    def _cut(self, p: int) -> list[str]:
        """Tensors computable in pass p that feed nodes which are not: what pass p leaves for later."""
        cut = set()
        for node in self.nodes:
            if self._node_level[id(node)] <= p:
                continue
            for t in self.node_inputs[id(node)]:
                if t not in self.initializers and t != INPUT_NAME and t in self.producer and self._available(t, p):
                    cut.add(t)
        # Trim back through cheap ops where their inputs are smaller (e.g. store an upsampling's source).
        changed = True
        while changed:
            changed = False
            for t in sorted(cut):
                node = self.producer[t]
                if node.op_type not in CHEAP_OPS:
                    continue
                ins = [i for i in self.node_inputs[id(node)]
                       if i not in self.initializers and i != INPUT_NAME and i in self.producer]
                if sum(map(self._bytes_per_pixel, ins)) < self._bytes_per_pixel(t):
                    cut.discard(t)
                    cut.update(ins)
                    changed = True
        return sorted(cut)

    # ----------------------------------------------------------------- subgraphs
    def _session(self, start: int, p: int | None, store: bool) -> tuple[Any, list[str], list[str]]:
        """Session computing pass ``p`` (None: the final output) from the cut of pass ``start``."""
        key = (start, p, store)
        if key in self._sessions:
            return self._sessions[key]
        helper = self._helper
        if p is None:
            outputs = [OUTPUT_NAME]
        else:
            outputs = [f"hrs_{k}_{n.index}" for n in self.norms if n.level == p for k in ("tmean", "tssq")]
            if store:
                outputs += self.cuts[p]
        given = set(self.cuts[start]) if start >= 0 else set()
        # Nodes needed for the outputs, stopping at given tensors and graph inputs.
        needed, seen, stack = set(), set(), list(outputs)
        while stack:
            t = stack.pop()
            if t in seen or t in given:
                continue
            seen.add(t)
            node = self.producer.get(t)
            if node is None:
                continue
            needed.add(id(node))
            stack.extend(self.node_inputs[id(node)])
        nodes = [n for n in self.nodes if id(n) in needed]
        produced = {o for n in nodes for o in n.output}
        used = {t for n in nodes for t in self.node_inputs[id(n)]} | set(outputs)
        feeds = sorted(t for t in used if t not in produced and t not in self.initializer_protos)
        inputs = [self._value_info(t) for t in feeds]
        graph = helper.make_graph(nodes, f"hrstyle_tiles_{start}_{p}", inputs,
                                  [self._value_info(t) for t in outputs],
                                  [self.initializer_protos[t] for t in sorted(used) if t in self.initializer_protos])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = self._model.ir_version
        session = make_session(model.SerializeToString(), self.threads, arena=False)
        result = (session, feeds, outputs)
        self._sessions[key] = result
        return result

    def _value_info(self, name: str) -> Any:
        helper, onnx = self._helper, self._onnx
        if name.startswith(("hrs_start_", "hrs_end_")):
            return helper.make_tensor_value_info(name, onnx.TensorProto.INT64, [2])
        if name.startswith(("hrs_mean_", "hrs_var_")):
            return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [self.norms[int(name.rsplit("_", 1)[1])].channels])
        if name.startswith(("hrs_tmean_", "hrs_tssq_")):
            c = self.norms[int(name.rsplit("_", 1)[1])].channels
            return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, c, 1, 1])
        shape = self.shapes[name]
        dims: list[Any] = list(shape)
        if len(shape) == 4:
            dims = [shape[0], shape[1], f"{name}_h", f"{name}_w"]
        elem = helper.np_dtype_to_tensor_dtype(self.dtypes[name])
        return helper.make_tensor_value_info(name, elem, dims)

    def _cut_bytes(self, p: int, crop_pixels: int) -> int:
        return int(sum(self._bytes_per_pixel(t) for t in self.cuts[p]) * crop_pixels) + 4096

    # ----------------------------------------------------------------- running
    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, tile_size: int, margin: int = 32,
                 cache_bytes: int | None = None) -> torch.Tensor:
        """Stylize a (1, 3, H, W) image in [0, 1]; returns (1, 3, H, W) float32 on the CPU."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError("tiled inference takes one (1, 3, H, W) image")
        margin = -(-margin // ALIGN) * ALIGN
        if margin < RECEPTIVE_RADIUS + 4:
            raise ValueError(f"tile margin must be at least {RECEPTIVE_RADIUS + 4}px, got {margin}")
        if tile_size < min_tile_size(margin):
            raise ValueError(f"tile_size must be at least {min_tile_size(margin)} for a {margin}px margin, got {tile_size}")
        budget = default_cache_bytes() if cache_bytes is None else int(cache_bytes)
        pixels = np.ascontiguousarray(image.detach().to("cpu", torch.float32).numpy())
        _, _, h, w = pixels.shape
        padded_h, padded_w = h + (-h) % ALIGN, w + (-w) % ALIGN
        tiles = make_tiles(h, w, tile_size, margin)
        states = [_TileState() for _ in tiles]
        cached = 0  # bytes held by all tiles' cuts

        def boxes(t: Any) -> dict[str, np.ndarray]:
            y_end = padded_h if t.y1 == h else t.y1
            x_end = padded_w if t.x1 == w else t.x1
            feeds = {}
            for s in _STRIDES:
                feeds[f"hrs_start_s{s}"] = np.array([(t.y0 - t.cy0) // s, (t.x0 - t.cx0) // s], np.int64)
                feeds[f"hrs_end_s{s}"] = np.array([(y_end - t.cy0) // s, (x_end - t.cx0) // s], np.int64)
            return feeds

        frozen: dict[str, np.ndarray] = {}
        if self.color_moments is not None:
            mean, cov = whole_image_moments(image)
            frozen[COLOR_MEAN], frozen[COLOR_COV] = mean.numpy(), cov.numpy()

        def run(t: Any, state: _TileState, p: int | None, store: bool) -> dict[str, np.ndarray]:
            session, feeds, outputs = self._session(state.level, p, store)
            available = {INPUT_NAME: pixels[..., t.cy0:t.cy1, t.cx0:t.cx1]} | boxes(t) | frozen | state.tensors
            values = session.run(outputs, {name: np.ascontiguousarray(available[name]) for name in feeds})
            return dict(zip(outputs, values))

        for p in range(self.passes):
            level_norms = [n for n in self.norms if n.level == p]
            moments = {norm.index: RunningMoments() for norm in level_norms}
            for t, state in zip(tiles, states):
                crop = (t.cy1 - t.cy0 + 3) // 4 * 4 * ((t.cx1 - t.cx0 + 3) // 4 * 4)
                need = self._cut_bytes(p, crop)
                store = cached - state.nbytes + need <= budget
                result = run(t, state, p, store)
                if store:
                    cached -= state.nbytes
                    state.level, state.nbytes = p, need
                    state.tensors = {name: result[name] for name in self.cuts[p]}
                    cached += need
                # Each norm's per-tile mean and M2, merged across tiles in float64.
                y_end = (padded_h if t.y1 == h else t.y1) - t.y0
                x_end = (padded_w if t.x1 == w else t.x1) - t.x0
                n_b = y_end * x_end  # core pixels at full resolution; stride s has n_b / s² of them
                for norm in level_norms:
                    moments[norm.index].add(result[f"hrs_tmean_{norm.index}"].reshape(-1),
                                            result[f"hrs_tssq_{norm.index}"].reshape(-1),
                                            n_b // (norm.stride * norm.stride))
            for norm in level_norms:
                frozen[f"hrs_mean_{norm.index}"] = moments[norm.index].mean.astype(np.float32)
                frozen[f"hrs_var_{norm.index}"] = moments[norm.index].variance.astype(np.float32)

        half = margin - RECEPTIVE_RADIUS
        out = torch.zeros(1, 3, h, w)
        for t, state in zip(tiles, states):
            result = torch.from_numpy(run(t, state, None, False)[OUTPUT_NAME])
            state.tensors, state.nbytes = {}, 0
            add_tile(out, result, t, half)
        return out

    def cut_summary(self) -> list[tuple[int, int, float]]:
        """(pass, norms measured, cut size in float32 full-resolution channels): for the docs/benchmark."""
        per_level = defaultdict(int)
        for n in self.norms:
            per_level[n.level] += 1
        return [(p, per_level[p], sum(self._bytes_per_pixel(t) for t in self.cuts[p]) / 4) for p in range(self.passes)]


def _color_moments(nodes: Any) -> tuple[str, str] | None:
    """The colour branch's per-image RGB mean and covariance in the exported graph (``models.color._moments``:
    ``ReduceMean`` of the image reshaped to (N, 3, H·W), and the ``Div`` of the centred product), or None
    when the network has no colour branch."""
    views = {n.output[0] for n in nodes if n.op_type == "Reshape" and n.input[0] == INPUT_NAME}
    means = [n for n in nodes if n.op_type == "ReduceMean" and n.input[0] in views]
    if not means:
        return None
    centred = {n.output[0] for n in nodes if n.op_type == "Sub" and n.input[0] in {m.input[0] for m in means}}
    products = {n.output[0] for n in nodes if n.op_type == "MatMul" and n.input[0] in centred}
    covs = [n.output[0] for n in nodes if n.op_type == "Div" and n.input[0] in products]
    if len(means) != 1 or len(covs) != 1:
        raise RuntimeError(f"cannot find the colour branch's moments in the exported graph "
                           f"({len(means)} means, {len(covs)} covariances)")
    return means[0].output[0], covs[0]
