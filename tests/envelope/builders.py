"""Build envelopes in code for tests (no YAML)."""

from __future__ import annotations

from gateway.config import schema as s
from gateway.envelope.compiled import CompiledEnvelope, compile_envelope
from gateway.envelope.engine import Envelope


def build(
    actuators: list[s.ActuatorLimits],
    sensors: tuple[str, ...] = (),
    constraints: tuple[s.LinearConstraint, ...] = (),
    interlocks: tuple[s.Interlock, ...] = (),
    prediction: s.Prediction | None = None,
    nonfinite_policy: s.Policy = s.Policy.TRIP,
    safe_values: tuple[float, ...] | None = None,
    safe_cases: tuple[s.SafeCase, ...] = (),
) -> CompiledEnvelope:
    names = tuple(a.actuator for a in actuators)
    a_index = {n: i for i, n in enumerate(names)}
    s_index = {n: i for i, n in enumerate(sensors)}
    x_index = {**a_index, **{n: len(names) + i for n, i in s_index.items()}}
    env = s.Envelope(limits=tuple(actuators), constraints=constraints, interlocks=interlocks,
                     prediction=prediction, nonfinite_policy=nonfinite_policy,
                     safe_cases=safe_cases)
    return compile_envelope(env, names, sensors, a_index, s_index, x_index, safe_values)


def envelope(engine: str, *args: object, **kwargs: object) -> Envelope:
    return Envelope(build(*args, **kwargs), engine)  # type: ignore[arg-type]


def lim(name: str, lo: float, hi: float, **kw: object) -> s.ActuatorLimits:
    return s.ActuatorLimits(actuator=name, min=lo, max=hi, **kw)  # type: ignore[arg-type]


def linear(name: str, terms: dict[str, float], rhs: float,
           policy: s.Policy = s.Policy.REJECT) -> s.LinearConstraint:
    return s.LinearConstraint(name=name, expr="(built in code)", terms=tuple(terms.items()),
                              rhs=rhs, policy=policy)


def interlock(name: str, cond: dict[str, float], op: str, rhs: float,
              then: list[tuple[str, bool, float]],
              policy: s.Policy = s.Policy.CLAMP) -> s.Interlock:
    return s.Interlock(name=name, when="(built in code)", condition=tuple(cond.items()),
                       op=s.ConditionOp(op), rhs=rhs,
                       then=tuple(s.Tightening(a, up, v) for a, up, v in then), policy=policy)


def safe_case(actuator: str, cond: dict[str, float], op: str, rhs: float,
              value: float) -> s.SafeCase:
    return s.SafeCase(actuator=actuator, when="(built in code)", condition=tuple(cond.items()),
                      op=s.ConditionOp(op), rhs=rhs, value=value)
