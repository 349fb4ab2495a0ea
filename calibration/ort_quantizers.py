"""onnxruntime's own quantizers: static Q/DQ (``qdq-ort``), dynamic (``dynamic``) and 8-bit weight-only
MatMulNBits (``weight-only``), each on a staged copy (see `dartrt.calibration.quantize` for the formats)."""

from __future__ import annotations

from pathlib import Path

import onnx

from .graphinfo import GEMM_OPS
from .recipe import WO_BLOCK, QuantizeConfig
from .staging import quiet, write_external
from .traceset import TraceSet


def run_ort_static(src: Path, dst: Path, traces: TraceSet, cfg: QuantizeConfig, quantize: list[str],
                    excluded: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax}[cfg.method]
    with quiet():
        quantize_static(str(src), str(dst), traces.reader(cfg.samples), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(GEMM_OPS), per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=quantize, nodes_to_exclude=excluded,
                        calibrate_method=method, use_external_data_format=write_external(src),
                        extra_options={"WeightSymmetric": True,
                                       # ORT also Q/DQs GEMM *outputs* by default (then SiLU's Sigmoid and
                                       # the residual Add would read INT8-rounded values): inputs only.
                                       "OpTypesToExcludeOutputQuantization": list(GEMM_OPS)})


def run_ort_dynamic(src: Path, dst: Path, quantize: list[str], excluded: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_quantize=quantize, nodes_to_exclude=excluded,
                         use_external_data_format=write_external(src))


def run_weight_only(src: Path, dst: Path, quantize: list[str], excluded: list[str]) -> None:
    model = onnx.load(str(src))
    with quiet():  # importing it calls logging.basicConfig(level=INFO): import under quiet(), which restores
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quant = MatMulNBitsQuantizer(model, bits=8, block_size=WO_BLOCK, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=excluded, nodes_to_include=quantize,
                                     op_types_to_quantize=("MatMul",))
        quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=write_external(src))


