"""What crosses between the safety core and the communications process.

- :mod:`gateway.link.mirror`: the core's values and status in shared memory, written by the
  core every cycle, read by the communications process without the core's help.
- :mod:`gateway.link.channel`: the bounded request channel (a Unix socketpair) on which the
  communications process asks for writes and operator requests, and the core answers each with
  its real outcome.

Neither module imports a protocol library: the core imports them without pulling in asyncua or
pymodbus.
"""
