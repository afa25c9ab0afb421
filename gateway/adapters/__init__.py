"""Protocol adapters: the only place asyncua and pymodbus are imported.

Foreign exceptions are translated here into :mod:`gateway.adapters.base`'s short hierarchy.
"""
