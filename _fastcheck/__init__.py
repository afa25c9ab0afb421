"""Compiled kernels of the safety gateway. Only thin wrappers live here; semantics are
specified by the pure-Python references in ``gateway/`` and tested for equality."""
