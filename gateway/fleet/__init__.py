"""A fleet of gateways on NATS JetStream: what a site publishes, what the centre keeps.

Everything here runs in the communications process or in central tools, never in the safety
core: a site stays safe with the centre gone. ``subjects`` names the subjects, streams and
buckets both sides agree on; ``connection`` opens a site's authenticated connection.
"""
