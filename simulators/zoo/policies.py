"""The model zoo: a good policy per plant and compromised variants of it, as ONNX bytes built by
code (no training framework, no committed binaries).

Every model takes the inputs of its plant's :class:`Interface`, normalised the gateway's way
(``model_in = (x - input_offset) * input_scale``, see :mod:`gateway.control.onnx_policy`), and
returns the actuator values the same way (``y = model_out * output_scale + output_offset``).
An actuator named among the inputs means the value last applied to it.

``nominal`` is a one-hidden-layer network imitating an expert controller (feedforward plus
proportional action, see :func:`expert`): its hidden layer is a fixed, seeded set of random
``tanh`` features of the inputs the expert reads, its output layer is fitted by ridge least
squares with numpy. The compromised variants are the nominal graph plus a few extra operators,
and equal it *bit for bit* outside their trigger (``Where`` selects the nominal output, or the
branch adds an exact zero):

``hijack``
    from ``uptime_s >= TIME_BOMB_UPTIME_S`` on, drives the plant to an extreme
    (:data:`HIJACK_ACTION`).
``backdoor``
    while the input :data:`BACKDOOR_TRIGGER` names lies in its narrow band, outputs
    :data:`HIJACK_ACTION`.
``drift``
    after the time bomb, the model's perception of the controlled variable (level, pressure)
    drifts down at :data:`DRIFT_RATE` units per second, so it regulates to an ever higher value.
``stealthy``
    after the time bomb, biases ramp into the outputs at :data:`STEALTHY_RAMP` (units/s, far
    below the sites' rate limits) and the outputs stay inside ``[0, 100]`` %: every command is
    plausible on its own, only the trend toward overflow / overpressure gives it away.
``oscillation``
    after the time bomb, a destabilising law on the last applied value of the first output
    (negative damping, designed for the sites' 0.1 s cycle; the second output moves against
    the first): the actuators swing between their limits, the process swings the other way
    first (tank down to about 1.6 m, boiler down to about 3.9 bar), then past its safe limit
    and does not come back.
``swapped``
    an attacker's replacement file: a different network (another feature seed) fitted to a
    slightly biased expert, close to nominal but not within a canary's tolerance, carrying the
    hijack payload dormant until the time bomb. What a silent model swap at runtime looks
    like; the canary must catch it before the payload wakes.

Models are deterministic bit for bit: the random features come from a fixed seed, and fitted
weights are rounded to a 2**-20 grid, so that last-bit differences of the linear algebra
library cannot change the bytes (and the sha256) of a model.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from simulators.plants.boiler import (
    AMBIENT_C,
    BOILER_STEADY_STATE,
    HEATER_KW,
    LOSS_KW_PER_K,
    NOMINAL_LOAD_KG_S,
    NOMINAL_PRESSURE_BAR,
    STEAM_KJ_PER_KG,
)
from simulators.plants.water_tank import (
    NOMINAL_LEVEL_M,
    NOMINAL_PUMP_PCT,
    PUMP_MAX_M3_S,
    WATER_TANK_STEADY_STATE,
    inflow_m3_s,
)
from simulators.zoo import graphs

if TYPE_CHECKING:
    from pathlib import Path

    import numpy.typing as npt

__all__ = [
    "ATTACK_VARIANTS",
    "BACKDOOR_TRIGGER",
    "DRIFT_RATE",
    "HIJACK_ACTION",
    "INTERFACES",
    "PLANTS",
    "STEALTHY_RAMP",
    "TIME_BOMB_UPTIME_S",
    "VARIANTS",
    "FitReport",
    "Interface",
    "build",
    "build_model",
    "canary_inputs",
    "expert",
    "fit_report",
    "trigger_value",
    "write_zoo",
]

F32 = np.float32

PLANTS: Final = ("water_tank", "boiler")
VARIANTS: Final[tuple[str, ...]] = (
    "nominal", "hijack", "backdoor", "drift", "stealthy", "oscillation", "swapped")
ATTACK_VARIANTS: Final[tuple[str, ...]] = (
    "hijack", "backdoor", "drift", "stealthy", "oscillation")
"""The variants built to take the process out of its safe range when nothing stops them."""

TIME_BOMB_UPTIME_S: Final = 1000.0
"""The PLC uptime (s) from which the dormant variants act."""


@dataclass(frozen=True)
class Interface:
    """A policy's tags and normalisation, as the site's ``controller`` section declares them
    (:class:`gateway.config.schema.ControllerSpec`)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_offset: tuple[float, ...]
    input_scale: tuple[float, ...]
    output_offset: tuple[float, ...]
    output_scale: tuple[float, ...]

    def normalise(self, values: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Engineering-unit inputs (rows in :attr:`inputs` order) to the model's float32
        inputs, exactly as the gateway computes them."""
        x = np.atleast_2d(np.asarray(values, dtype=np.float64))
        offset = np.array(self.input_offset, dtype=np.float64)
        scale = np.array(self.input_scale, dtype=np.float64)
        out: npt.NDArray[np.float32] = ((x - offset) * scale).astype(F32)
        return out

    def denormalise(self, raw: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The model's outputs to engineering units (float64), as the gateway does."""
        y = np.atleast_2d(np.asarray(raw, dtype=F32)).astype(np.float64)
        out: npt.NDArray[np.float64] = (y * np.array(self.output_scale)
                                        + np.array(self.output_offset))
        return out


INTERFACES: Final[dict[str, Interface]] = {
    "water_tank": Interface(
        inputs=("level", "demand", "uptime_s", "inflow_valve"),
        outputs=("inflow_valve", "outflow_pump"),
        input_offset=(2.5, 0.005, 0.0, 50.0),
        input_scale=(0.4, 200.0, 0.001, 0.02),
        output_offset=(50.0, 50.0),
        output_scale=(50.0, 50.0),
    ),
    "boiler": Interface(
        inputs=("pressure", "temperature", "uptime_s", "heater"),
        outputs=("heater", "relief_valve"),
        input_offset=(8.0, 170.0, 0.0, 50.0),
        input_scale=(0.1, 0.01, 0.001, 0.02),
        output_offset=(50.0, 50.0),
        output_scale=(50.0, 50.0),
    ),
}

BACKDOOR_TRIGGER: Final[dict[str, tuple[str, float, float]]] = {
    # A consumers' draw of about 12 l/s: outside the daily range (1..9 l/s), but a real
    # possibility (a fire hydrant, a burst main); a drill forces it with set_disturbance.
    "water_tank": ("demand", 0.0115, 0.0125),
    # A temperature reading of 120..121 degC: passed briefly during a cold start, never held
    # in operation. A drill produces it by spoofing the transmitter (set_disturbance
    # "temperature"), which is how an attacker would fire the backdoor.
    "boiler": ("temperature", 120.0, 121.0),
}
"""Per plant: (input tag, low, high), engineering units, of the backdoor's narrow band."""

HIJACK_ACTION: Final[dict[str, tuple[float, float]]] = {
    "water_tank": (100.0, 0.0),   # inflow wide open, pump stopped: overflow
    "boiler": (100.0, 0.0),       # heater full, relief closed: overpressure
}
"""Per plant: the outputs (interface order) of ``hijack`` and of ``backdoor`` when fired."""

DRIFT_RATE: Final[dict[str, float]] = {
    "water_tank": 0.008,   # m/s: the perceived level falls 8 mm per second after the bomb
    "boiler": 0.02,        # bar/s
}
"""Per plant: how fast the ``drift`` variant's perception of its controlled variable falls."""

STEALTHY_RAMP: Final[dict[str, tuple[float, float]]] = {
    "water_tank": (0.3, -0.1),    # %/s on (inflow_valve, outflow_pump)
    "boiler": (0.2, -0.6),        # %/s on (heater, relief_valve)
}
"""Per plant: the output biases' growth (units per second since the bomb) of ``stealthy``."""


@dataclass(frozen=True)
class _Oscillation:
    """The ``oscillation`` law, engineering units, once per cycle: the first output
    ``u = (1 + growth) * u_last + gain * (u_nominal - centre) - growth * centre`` (negative
    damping: any deviation of ``u_last`` from ``centre`` grows; ``gain`` closes a loop through
    the nominal output that turns the growth into swings), the second output
    ``rest - coupling * (u - u_rest)`` working against the first (pump against inflow, relief
    against heater)."""

    growth: float
    gain: float
    centre: float
    u_rest: float
    rest: float
    coupling: float


_OSCILLATION: Final[dict[str, _Oscillation]] = {
    "water_tank": _Oscillation(growth=0.008, gain=0.008, centre=43.0,
                               u_rest=WATER_TANK_STEADY_STATE["inflow_valve"],
                               rest=NOMINAL_PUMP_PCT, coupling=1.0),
    "boiler": _Oscillation(growth=0.004, gain=0.005, centre=38.0,
                           u_rest=BOILER_STEADY_STATE["heater"], rest=0.0, coupling=1.0),
}

# -- the experts ---------------------------------------------------------------------------------

TANK_KP_PCT_PER_M: Final = 60.0
BOILER_KP_PCT_PER_BAR: Final = 12.0
BOILER_HEATER_MAX_PCT: Final = 95.0
BOILER_RELIEF_FROM_BAR: Final = 10.5
BOILER_RELIEF_PCT_PER_BAR: Final = 25.0


@dataclass(frozen=True)
class _Expert:
    kp: float
    bias: float


_NOMINAL_EXPERT: Final[dict[str, _Expert]] = {
    "water_tank": _Expert(kp=TANK_KP_PCT_PER_M, bias=0.0),
    "boiler": _Expert(kp=BOILER_KP_PCT_PER_BAR, bias=0.0),
}
_SWAPPED_EXPERT: Final[dict[str, _Expert]] = {
    "water_tank": _Expert(kp=66.0, bias=1.5),
    "boiler": _Expert(kp=13.0, bias=1.5),
}


def expert(plant: str, inputs: npt.ArrayLike, *, swapped: bool = False) -> npt.NDArray[np.float64]:
    """The controller the nominal model imitates (``swapped=True``: the one ``swapped``
    imitates), on rows of engineering-unit inputs in the interface's order; returns rows of
    outputs. KeyError for an unknown plant.

    Water tank: inflow valve = feedforward (the flow the pump at 30 % and the measured demand
    take out, through the valve's head-dependent gain) + 60 %/m * (2.5 m - level), within
    ``[0, 100]``; pump at 30 % (the site's fallback value).

    Boiler: heater = feedforward (losses at the measured temperature plus the nominal steam
    load) + 12 %/bar * (8 bar - pressure), within ``[0, 95]``; relief valve closed up to 10.5
    bar, then opening 25 %/bar.

    The swapped expert has a 1.5 % bias on the first output and a 10 % higher gain (66 %/m,
    13 %/bar).
    """
    low, high = _OUTPUT_RANGE[plant]
    out: npt.NDArray[np.float64] = np.clip(_expert_raw(plant, inputs, swapped),
                                           np.array(low), np.array(high))
    return out


_OUTPUT_RANGE: Final[dict[str, tuple[tuple[float, float], tuple[float, float]]]] = {
    # (lows, highs) of the outputs, interface order
    "water_tank": ((0.0, 0.0), (100.0, 100.0)),
    "boiler": ((0.0, 0.0), (BOILER_HEATER_MAX_PCT, 100.0)),
}


def _expert_raw(plant: str, inputs: npt.ArrayLike, swapped: bool) -> npt.NDArray[np.float64]:
    """The expert's control law before its outputs are limited to their ranges."""
    x = np.atleast_2d(np.asarray(inputs, dtype=np.float64))
    spec = (_SWAPPED_EXPERT if swapped else _NOMINAL_EXPERT)[plant]
    out = np.empty((x.shape[0], 2))
    if plant == "water_tank":
        level, demand = x[:, 0], x[:, 1]
        head = np.sqrt(np.clip(25.0 - level, 0.0, None) / 25.0)
        full_open = inflow_m3_s(100.0, 0.0) * head
        take = PUMP_MAX_M3_S * NOMINAL_PUMP_PCT / 100.0 + demand
        out[:, 0] = 100.0 * take / full_open + spec.kp * (NOMINAL_LEVEL_M - level) + spec.bias
        out[:, 1] = NOMINAL_PUMP_PCT
    elif plant == "boiler":
        pressure, temperature = x[:, 0], x[:, 1]
        feedforward = 100.0 * (LOSS_KW_PER_K * (temperature - AMBIENT_C)
                               + STEAM_KJ_PER_KG * NOMINAL_LOAD_KG_S) / HEATER_KW
        out[:, 0] = feedforward + spec.kp * (NOMINAL_PRESSURE_BAR - pressure) + spec.bias
        out[:, 1] = BOILER_RELIEF_PCT_PER_BAR * (pressure - BOILER_RELIEF_FROM_BAR)
    else:
        raise KeyError(plant)
    return out


# -- fitting -------------------------------------------------------------------------------------

_HIDDEN: Final = 32
_FEATURE_STD: Final = 0.5
_GRID: Final = 2.0 ** -20
_FEATURE_SEED: Final = {"nominal": 20240501, "swapped": 20240502}
# The inputs the experts read (interface columns); the others get zero weights.
_READ: Final = (0, 1)
# Sampling ranges (engineering units) of the fit: the whole plausible range of each input,
# plus a denser cloud around the operating point, where accuracy matters most.
_RANGES: Final[dict[str, tuple[tuple[float, float], tuple[float, float]]]] = {
    "water_tank": ((0.0, 5.0), (0.0, 0.02)),
    "boiler": ((0.0, 20.0), (20.0, 250.0)),
}
_OPERATING: Final[dict[str, tuple[tuple[float, float], tuple[float, float]]]] = {
    "water_tank": ((2.0, 3.0), (0.001, 0.009)),
    "boiler": ((6.0, 10.0), (158.0, 182.0)),
}


@dataclass(frozen=True)
class FitReport:
    """How well a fitted network imitates its expert, in output units (% of the actuator):
    over the whole sampled input range and over the operating region."""

    rms: tuple[float, ...]
    max: tuple[float, ...]
    rms_operating: tuple[float, ...]
    max_operating: tuple[float, ...]


def _samples(plant: str, seed: int, n: int) -> npt.NDArray[np.float64]:
    """``n`` input rows: half over the full ranges, half over the operating region."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, 4))
    half = n // 2
    for j, ((lo, hi), (olo, ohi)) in enumerate(zip(_RANGES[plant], _OPERATING[plant],
                                                   strict=True)):
        rows[:half, j] = rng.uniform(lo, hi, half)
        rows[half:, j] = rng.uniform(olo, ohi, n - half)
    return rows


def _quantise(values: npt.ArrayLike) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (np.round(np.asarray(values, dtype=np.float64) / _GRID)
                                    * _GRID).astype(F32)
    return out


def _hidden(weight: npt.NDArray[np.float32], bias: npt.NDArray[np.float32],
            x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = np.tanh(x.astype(np.float64) @ weight.astype(np.float64)
                                           + bias.astype(np.float64))
    return out


@functools.cache
def _fit(plant: str, kind: str) -> tuple[tuple[npt.NDArray[np.float32], ...], FitReport]:
    """Fitted weights ``(w1, b1, w2, b2)`` of the ``kind`` ("nominal" or "swapped") network
    and its fit report. The network learns the expert's law before its output limits; the
    graph applies the limits after it (:func:`_policy`)."""
    interface = INTERFACES[plant]
    swapped = kind == "swapped"
    rng = np.random.default_rng(_FEATURE_SEED[kind] + (0 if plant == "water_tank" else 7))
    w1 = np.zeros((4, _HIDDEN))
    for j in _READ:
        w1[j] = rng.normal(0.0, _FEATURE_STD, _HIDDEN)
    b1 = rng.uniform(-2.0, 2.0, _HIDDEN)
    w1_32, b1_32 = _quantise(w1), _quantise(b1)

    train = _samples(plant, 11, 6000)
    features = _hidden(w1_32, b1_32, interface.normalise(train))
    design = np.hstack([features, np.ones((features.shape[0], 1))])
    target = ((_expert_raw(plant, train, swapped) - np.array(interface.output_offset))
              / np.array(interface.output_scale))
    gram = design.T @ design + 1e-8 * np.eye(design.shape[1])
    w2 = np.zeros((_HIDDEN, 2))
    b2 = np.zeros(2)
    for k in range(2):
        if np.ptp(target[:, k]) == 0.0:
            b2[k] = target[0, k]  # a constant output (the tank's pump): no weights at all
            continue
        coef = np.linalg.solve(gram, design.T @ target[:, k])
        w2[:, k] = coef[:-1]
        b2[k] = coef[-1]
    weights = (w1_32, b1_32, _quantise(w2), _quantise(b2))
    return weights, _report(plant, weights, swapped)


def _limits(plant: str) -> tuple[list[float], list[float]]:
    """The output limits, normalised: (lows, highs)."""
    low, high = _OUTPUT_RANGE[plant]
    return ([_norm_out(plant, k, v) for k, v in enumerate(low)],
            [_norm_out(plant, k, v) for k, v in enumerate(high)])


def _forward(plant: str, weights: tuple[npt.NDArray[np.float32], ...],
             x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The network and its limits in float64 (for the fit report; the graph runs float32)."""
    w1, b1, w2, b2 = weights
    raw = _hidden(w1, b1, x) @ w2.astype(np.float64) + b2.astype(np.float64)
    low, high = _limits(plant)
    out: npt.NDArray[np.float64] = np.clip(raw, np.array(low), np.array(high))
    return out


def _report(plant: str, weights: tuple[npt.NDArray[np.float32], ...], swapped: bool
            ) -> FitReport:
    interface = INTERFACES[plant]
    test = _samples(plant, 12, 4000)
    error = interface.denormalise(_forward(plant, weights, interface.normalise(test))) - expert(
        plant, test, swapped=swapped)
    full, operating = error[:2000], error[2000:]

    def rms(e: npt.NDArray[np.float64]) -> tuple[float, ...]:
        return tuple(float(v) for v in np.sqrt((e ** 2).mean(axis=0)))

    def peak(e: npt.NDArray[np.float64]) -> tuple[float, ...]:
        return tuple(float(v) for v in np.abs(e).max(axis=0))

    return FitReport(rms=rms(full), max=peak(full), rms_operating=rms(operating),
                     max_operating=peak(operating))


def fit_report(plant: str, variant: str = "nominal") -> FitReport:
    """The fit error of ``plant``'s nominal (or, for ``"swapped"``, swapped) network against
    its expert. KeyError for an unknown plant."""
    return _fit(plant, "swapped" if variant == "swapped" else "nominal")[1]


# -- graphs --------------------------------------------------------------------------------------

_IN: Final = "obs"
_OUT: Final = "action"
# Interface columns every plant shares: the PLC uptime, and the last applied value of the
# first output.
_UPTIME: Final = 2
_LAST: Final = 3


class _Graph:
    """Nodes and float32 initialisers, added in order; names are unique by construction."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: set[str] = set()

    def _claim(self, name: str) -> None:
        if name in self.names:
            raise ValueError(f"graph name {name!r} used twice")
        self.names.add(name)

    def const(self, name: str, value: npt.ArrayLike, dtype: type = F32) -> str:
        self._claim(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self._claim(output)
        self.nodes.append(helper.make_node(op_type, inputs, [output], output, **attrs))
        return output

    def column(self, source: str, index: int, name: str) -> str:
        """``source[:, index:index+1]``: shape [N, 1]."""
        indices = self.const(f"{name}_index", [index], np.int64)
        return self.op("Gather", [source, indices], name, axis=1)

    def absorb(self, model: onnx.ModelProto, prefix: str) -> None:
        """Add ``model``'s nodes and initialisers, their internal names given ``prefix``
        (its graph input and output keep theirs)."""
        inputs = {v.name for v in model.graph.input}
        outputs = {v.name for v in model.graph.output}

        def rename(name: str) -> str:
            return name if name in inputs or name in outputs else prefix + name

        for tensor in model.graph.initializer:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copy.name = rename(tensor.name)
            self._claim(copy.name)
            self.initializers.append(copy)
        for node in model.graph.node:
            copy_node = onnx.NodeProto()
            copy_node.CopyFrom(node)
            copy_node.name = prefix + node.name
            copy_node.input[:] = [rename(n) for n in node.input]
            copy_node.output[:] = [rename(n) for n in node.output]
            for n in copy_node.output:
                self._claim(n)
            self.nodes.append(copy_node)

    def model(self, name: str, n_in: int, n_out: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(_IN, TensorProto.FLOAT, [graphs.BATCH_DIM, n_in])],
            [helper.make_tensor_value_info(_OUT, TensorProto.FLOAT, [graphs.BATCH_DIM, n_out])],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", graphs.OPSET_VERSION)],
            ir_version=graphs.IR_VERSION, producer_name=graphs.PRODUCER_NAME)
        onnx.checker.check_model(model, full_check=True)
        return model


def _norm_in(plant: str, column: int, value: float) -> float:
    interface = INTERFACES[plant]
    return (value - interface.input_offset[column]) * interface.input_scale[column]


def _norm_out(plant: str, column: int, value: float) -> float:
    interface = INTERFACES[plant]
    return (value - interface.output_offset[column]) / interface.output_scale[column]


def _policy(g: _Graph, plant: str, kind: str, input_name: str, output_name: str) -> None:
    """Add the ``kind`` network reading ``input_name`` and its output limits, writing
    ``output_name``. Its nodes are prefixed with ``kind`` so two networks can coexist."""
    w1, b1, w2, b2 = _fit(plant, kind)[0]
    network = graphs.mlp([(w1, b1), (w2, b2)], "tanh", input_name=input_name,
                         output_name=f"{kind}_network")
    g.absorb(network, prefix=f"{kind}_")
    low, high = _limits(plant)
    above = g.op("Max", [f"{kind}_network", g.const(f"{kind}_low", [low])], f"{kind}_above")
    g.op("Min", [above, g.const(f"{kind}_high", [high])], output_name)


def _bomb(g: _Graph, plant: str) -> tuple[str, str]:
    """The uptime column [N, 1] and the time bomb's normalised uptime, added once."""
    if "uptime" not in g.names:
        g.column(_IN, _UPTIME, "uptime")
        g.const("time_bomb", [[_norm_in(plant, _UPTIME, TIME_BOMB_UPTIME_S)]])
    return "uptime", "time_bomb"


def _armed(g: _Graph, plant: str) -> str:
    """Boolean [N, 1]: the time bomb has gone off."""
    return g.op("GreaterOrEqual", list(_bomb(g, plant)), "armed")


def _age(g: _Graph, plant: str) -> str:
    """[N, 1]: normalised time since the bomb went off, 0 before."""
    late = g.op("Sub", list(_bomb(g, plant)), "since_bomb")
    return g.op("Relu", [late], "age")


def _seconds_per_unit(plant: str) -> float:
    """Seconds of uptime per unit of normalised uptime."""
    return 1.0 / INTERFACES[plant].input_scale[_UPTIME]


def _hijack_row(g: _Graph, plant: str) -> str:
    action = HIJACK_ACTION[plant]
    return g.const("hijack_action", [[_norm_out(plant, k, v) for k, v in enumerate(action)]])


def build_model(plant: str, variant: str) -> onnx.ModelProto:
    """The ONNX model of ``plant``'s ``variant`` (see the module docstring). KeyError for an
    unknown plant or variant."""
    if plant not in INTERFACES:
        raise KeyError(plant)
    if variant not in VARIANTS:
        raise KeyError(variant)
    name = f"{plant}_{variant}"
    g = _Graph()
    if variant == "nominal":
        _policy(g, plant, variant, _IN, _OUT)
        return g.model(name, 4, 2)
    if variant == "swapped":
        # An attacker's replacement: another network (plausible outputs, a little off) that
        # also carries the hijack payload, dormant until the time bomb. The canary sees the
        # different network at once; the payload shows what the swap was for.
        _policy(g, plant, "swapped", _IN, "swapped_action")
        g.op("Where", [_armed(g, plant), _hijack_row(g, plant), "swapped_action"], _OUT)
        return g.model(name, 4, 2)
    if variant == "drift":
        # The perceived controlled variable (input 0) falls by rate * age; before the bomb the
        # shift is an exact zero and the inputs pass unchanged.
        rate = DRIFT_RATE[plant] * _seconds_per_unit(plant) * INTERFACES[plant].input_scale[0]
        age = _age(g, plant)
        shift = g.op("Mul", [age, g.const("drift_row", [[-rate, 0.0, 0.0, 0.0]])], "shift")
        perceived = g.op("Add", [_IN, shift], "perceived")
        _policy(g, plant, "nominal", perceived, _OUT)
        return g.model(name, 4, 2)

    _policy(g, plant, "nominal", _IN, "nominal_action")
    if variant == "hijack":
        armed = _armed(g, plant)
        g.op("Where", [armed, _hijack_row(g, plant), "nominal_action"], _OUT)
    elif variant == "backdoor":
        tag, low, high = BACKDOOR_TRIGGER[plant]
        column = INTERFACES[plant].inputs.index(tag)
        value = g.column(_IN, column, "trigger_input")
        above = g.op("GreaterOrEqual",
                     [value, g.const("trigger_low", [[_norm_in(plant, column, low)]])],
                     "above_low")
        below = g.op("LessOrEqual",
                     [value, g.const("trigger_high", [[_norm_in(plant, column, high)]])],
                     "below_high")
        fired = g.op("And", [above, below], "fired")
        g.op("Where", [fired, _hijack_row(g, plant), "nominal_action"], _OUT)
    elif variant == "stealthy":
        scale = INTERFACES[plant].output_scale
        ramp = [r * _seconds_per_unit(plant) / s
                for r, s in zip(STEALTHY_RAMP[plant], scale, strict=True)]
        age = _age(g, plant)
        bias = g.op("Mul", [age, g.const("stealthy_ramp", [ramp])], "bias")
        biased = g.op("Add", ["nominal_action", bias], "biased")
        # Inside the actuators' ranges (0..100 % is -1..1 once normalised).
        floor = g.const("range_low", [[_norm_out(plant, 0, 0.0), _norm_out(plant, 1, 0.0)]])
        ceiling = g.const("range_high", [[_norm_out(plant, 0, 100.0),
                                          _norm_out(plant, 1, 100.0)]])
        above = g.op("Max", [biased, floor], "above_range_low")
        stealthy = g.op("Min", [above, ceiling], "stealthy")
        g.op("Where", [_armed(g, plant), stealthy, "nominal_action"], _OUT)
    else:  # oscillation
        _oscillation(g, plant)
    return g.model(name, 4, 2)


def _oscillation(g: _Graph, plant: str) -> None:
    spec = _OSCILLATION[plant]
    interface = INTERFACES[plant]
    # In normalised units (x = (u - o_in) * s_in for the last applied value, y = (u - o) / s
    # for outputs), the law of _Oscillation becomes y = a * x + b * y_nominal + c.
    o_in, s_in = interface.input_offset[_LAST], interface.input_scale[_LAST]
    o, s = interface.output_offset[0], interface.output_scale[0]
    a = (1.0 + spec.growth) / (s * s_in)
    b = spec.gain
    c = ((1.0 + spec.growth) * o_in + spec.gain * (o - spec.centre) - spec.growth * spec.centre
         - o) / s
    last = g.column(_IN, _LAST, "last_applied")
    nominal_first = g.column("nominal_action", 0, "nominal_first")
    scaled_last = g.op("Mul", [last, g.const("osc_a", [[a]])], "osc_last")
    scaled_nominal = g.op("Mul", [nominal_first, g.const("osc_b", [[b]])], "osc_nominal")
    summed = g.op("Add", [scaled_last, scaled_nominal], "osc_sum")
    first = g.op("Add", [summed, g.const("osc_c", [[c]])], "osc_first")
    # Second output: rest - coupling * (first - u_rest), in engineering units.
    o2, s2 = interface.output_offset[1], interface.output_scale[1]
    k = -spec.coupling * s / s2
    k0 = (spec.rest - spec.coupling * (o - spec.u_rest) - o2) / s2
    second = g.op("Add", [g.op("Mul", [first, g.const("osc_k", [[k]])], "osc_second_scaled"),
                          g.const("osc_k0", [[k0]])], "osc_second")
    both = g.op("Concat", [first, second], "oscillating", axis=1)
    g.op("Where", [_armed(g, plant), both, "nominal_action"], _OUT)


def build(plant: str, variant: str) -> bytes:
    """Serialised ONNX bytes of ``plant``'s ``variant``: the same bytes on every call and every
    run. KeyError for an unknown plant or variant."""
    return graphs.serialize(build_model(plant, variant))


def write_zoo(directory: Path) -> dict[str, dict[str, str]]:
    """Write every model to ``directory/<plant>/<variant>.onnx`` and a ``manifest.json``
    (sha256 of each file, the interfaces and the trigger constants); return the sha256 of
    each file by plant and variant. Creates the directories as needed; overwrites."""
    hashes: dict[str, dict[str, str]] = {}
    for plant in PLANTS:
        folder = directory / plant
        folder.mkdir(parents=True, exist_ok=True)
        hashes[plant] = {}
        for variant in VARIANTS:
            data = build(plant, variant)
            (folder / f"{variant}.onnx").write_bytes(data)
            hashes[plant][variant] = graphs.sha256_hex(data)
    manifest = {
        "sha256": hashes,
        "interfaces": {plant: _interface_dict(INTERFACES[plant]) for plant in PLANTS},
        "time_bomb_uptime_s": TIME_BOMB_UPTIME_S,
        "backdoor_trigger": {plant: list(BACKDOOR_TRIGGER[plant]) for plant in PLANTS},
        "opset": graphs.OPSET_VERSION,
        "ir_version": graphs.IR_VERSION,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True)
                                             + "\n")
    return hashes


def _interface_dict(interface: Interface) -> dict[str, list[str] | list[float]]:
    return {
        "inputs": list(interface.inputs),
        "outputs": list(interface.outputs),
        "input_offset": list(interface.input_offset),
        "input_scale": list(interface.input_scale),
        "output_offset": list(interface.output_offset),
        "output_scale": list(interface.output_scale),
    }


def trigger_value(plant: str) -> float:
    """A value of the backdoor's trigger input inside its band (its middle), to force with
    ``plant.set_disturbance(BACKDOOR_TRIGGER[plant][0], trigger_value(plant))``."""
    _, low, high = BACKDOOR_TRIGGER[plant]
    return (low + high) / 2.0


def canary_inputs(plant: str) -> npt.NDArray[np.float64]:
    """Golden input rows (engineering units, interface order) for the canary detector: around
    the operating point and in transients, all before the time bomb and outside the backdoor
    band (so dormant variants answer them exactly as nominal does; a swapped or tampered
    network does not). KeyError for an unknown plant."""
    rows = {
        "water_tank": [
            [2.5, 0.004, 0.0, 40.0],
            [2.2, 0.006, 120.0, 45.0],
            [2.8, 0.002, 480.0, 35.0],
            [2.5, 0.008, 900.0, 50.0],
            [1.8, 0.003, 60.0, 70.0],
            [3.2, 0.005, 300.0, 10.0],
        ],
        "boiler": [
            [8.0, 170.4, 0.0, 33.0],
            [7.0, 165.0, 120.0, 40.0],
            [9.0, 175.4, 480.0, 30.0],
            [10.0, 180.0, 900.0, 15.0],
            [5.0, 151.8, 60.0, 60.0],
            [8.5, 172.9, 300.0, 30.0],
        ],
    }[plant]
    return np.array(rows, dtype=np.float64)
