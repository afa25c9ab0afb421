"""Sans-IO supervisor core: the mode machine, detectors and the events they emit.

Submodules are imported explicitly (``from gateway.supervisor.modes import ModeMachine``);
this package deliberately imports nothing so that importing one piece never pulls in the rest.
"""
