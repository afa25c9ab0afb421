"""Incident drills: a simulated plant, the gateway and an AI controller in lockstep on loopback,
an injected attack or fault, and a scorecard taken from the plant's own record."""
