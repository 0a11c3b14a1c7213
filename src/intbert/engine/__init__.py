"""The frozen integer I-BERT engine: ``freeze`` a calibrated simulation into int8/int32 tensors."""

from .backends import BACKENDS, Backend, ReferenceBackend, resolve_backend
from .freeze import freeze
from .frozen import FrozenIBert
from .model import IntegerIBertModel

__all__ = ["BACKENDS", "Backend", "FrozenIBert", "IntegerIBertModel", "ReferenceBackend", "freeze", "resolve_backend"]
