"""Conversion passes: each maps an ONNX model to an ONNX model (see base.py for the API)."""
from .add_delays import AddDelays, add_delays
from .base import Pass, PassContext, PassLike, copy_model
from .calibrate import ActivationStats, Calibrate
from .fold_batchnorm import FoldBatchNorm
from .init_membrane import InitMembrane
from .maxpool_to_avgpool import MaxPoolToAvgPool
from .normalize_thresholds import NormalizeThresholds
from .optimize_init import OptimizeInit
from .pipeline import V_INIT_MODES, Pipeline, default_pipeline
from .replace_neurons import ReplaceNeurons

__all__ = ["ActivationStats", "AddDelays", "add_delays", "Calibrate", "FoldBatchNorm", "InitMembrane", "MaxPoolToAvgPool", "NormalizeThresholds",
           "OptimizeInit", "Pass", "PassContext", "PassLike", "Pipeline", "ReplaceNeurons",
           "V_INIT_MODES", "copy_model", "default_pipeline"]
