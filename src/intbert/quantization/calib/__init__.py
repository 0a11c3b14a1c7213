"""Calibrators: collect statistics of a quantizer's inputs, then compute its ``amax``."""

from .base import Calibrator
from .histogram import HISTOGRAM_METHODS, HistogramCalibrator
from .max import MaxCalibrator, amax_per_axis, reduce_amax

__all__ = ["Calibrator", "MaxCalibrator", "HistogramCalibrator", "HISTOGRAM_METHODS", "amax_per_axis", "reduce_amax"]
