"""Reading and reshaping quantized graphs: dedicated Q/DQ pairs for onnxruntime's fusion, weight bytes
by element type."""

from __future__ import annotations

import numpy as np
import onnx


def dedicate_qdq_pairs(model: onnx.ModelProto) -> int:
    """Give every consumer of a shared activation Q→DQ its own pair (same scale, same zero point).

    ModelOpt quantizes an activation once when several GEMMs read it (w1 and w3 of the FFN share
    their input). TensorRT fuses that fine, but onnxruntime's CPU QDQ fusion then leaves those
    MatMuls unfused and dequantizes their INT8 weights on every call: 12 of the demo's 31 GEMMs, and
    a step 2.6x slower than FP32. Dedicated pairs let all of them become MatMulIntegerToFloat.
    Returns the number of pairs added."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    added = 0
    new_nodes = []
    for node in model.graph.node:
        new_nodes.append(node)
        if node.op_type != "DequantizeLinear" or len(consumers.get(node.output[0], [])) < 2:
            continue
        q = producers.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear" or list(q.input[1:]) != list(node.input[1:]) \
                or not all(name in inits for name in q.input[1:]):
            continue
        for k, user in enumerate(consumers[node.output[0]][1:], start=1):
            q_out, dq_out = f"{q.output[0]}_dedicated_{k}", f"{node.output[0]}_dedicated_{k}"
            # Own copies of the scale/zero point: with shared ones ORT's common-subexpression pass
            # merges the pairs straight back before its QDQ fusion sees them.
            params = []
            for name in q.input[1:]:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}_dedicated_{k}"
                model.graph.initializer.append(copy)
                params.append(copy.name)
            q2 = onnx.helper.make_node("QuantizeLinear", [q.input[0], *params], [q_out], name=f"{q.name}_dedicated_{k}")
            q2.attribute.extend(q.attribute)
            dq2 = onnx.helper.make_node("DequantizeLinear", [q_out, *params], [dq_out],
                                        name=f"{node.name}_dedicated_{k}")
            dq2.attribute.extend(node.attribute)
            new_nodes.extend([q2, dq2])
            for i, name in enumerate(user.input):
                if name == node.output[0]:
                    user.input[i] = dq_out
            added += 1
    if added:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return added


def weight_bytes(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer bytes by element type: what a memory-bound step reads. 4-bit types are packed two
    to a byte in the file and on the device (numpy's stand-in dtype for them takes a whole byte)."""
    packed = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, getattr(onnx.TensorProto, "FLOAT4E2M1", -1)}
    out: dict[str, int] = {}
    for init in model.graph.initializer:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        n = int(np.prod(init.dims)) if init.dims else 1
        key = np.dtype(dtype).name
        out[key] = out.get(key, 0) + ((n + 1) // 2 if init.data_type in packed else n * np.dtype(dtype).itemsize)
    return out


