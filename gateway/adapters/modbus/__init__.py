"""Modbus TCP: the southbound client (pymodbus), the northbound server (our own framing), the
register map, Modbus/TCP Security (TLS) and read planning."""
