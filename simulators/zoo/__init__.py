"""Model zoo: ONNX policies built by code (see :mod:`simulators.zoo.graphs`), no training framework.

Used by the tests and by the simulators to stand in for good and compromised AI policies.
"""
