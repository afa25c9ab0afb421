"""The communications process: everything that talks to people and other systems.

``python -m gateway.comms --site SITE.yaml --mirror NAME --channel-fd FD`` is started (and
restarted with backoff) by the safety core's :class:`gateway.comms.supervisor.CommsSupervisor`.
It hosts the northbound Modbus server(s) and the OPC UA server; their writes and operator
requests go to the core over the request channel (:mod:`gateway.link.channel`), and what they
show comes from the core's mirror (:mod:`gateway.link.mirror`). It never decides anything about
the plant: a crash, a hang or a flood here costs the core nothing but this process.

- :mod:`gateway.comms.process`: the process itself (servers, mirror pump, shutdown).
- :mod:`gateway.comms.pump`: the mirror, copied into the servers each cycle.
- :mod:`gateway.comms.supervisor`: runs in the core; starts, watches and restarts the process.
"""
