"""``safety-gateway``: the command line.

Exit codes (stable, documented in the README):

- 0: success;
- 1: the command ran and found a failure (a benchmark target missed when asked to enforce it);
- 2: bad input: usage, or an invalid site file (every problem is listed as file:line);
- 3: the environment cannot run the gateway (e.g. the compiled engine is required but missing).

No command prints a traceback for bad input; an unexpected internal error prints one line and
exits 70 (EX_SOFTWARE), with the traceback only under ``--debug``. If the reader of standard
output goes away (``safety-gateway check --json site.yaml | head -1``), the rest of the output is
dropped quietly and the exit code is 0: the reader chose to stop reading, and whether the pipe
broke before or after the last write depends only on buffering (``PYTHONUNBUFFERED``), so no
other code could be given consistently.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from gateway.config.schema import ActuatorLimits, Site, Tag

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INPUT = 2
EXIT_ENVIRONMENT = 3
EXIT_INTERNAL = 70


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_INPUT)


def _summary(site: Site, engine: str) -> dict[str, Any]:
    from gateway.envelope.compiled import compile_site
    from gateway.envelope.proof import prove_safe_state

    compiled = compile_site(site)
    limits = {lim.actuator: lim for lim in site.envelope.limits}
    env = site.envelope
    constraints: list[dict[str, Any]] = []
    for lim in env.limits:
        constraints.append({"name": lim.actuator, "kind": "limits", "policy": lim.policy.value})
    for con in env.constraints:
        constraints.append({"name": con.name, "kind": "linear", "expr": con.expr,
                            "policy": con.policy.value})
    for ilk in env.interlocks:
        constraints.append({"name": ilk.name, "kind": "interlock", "when": ilk.when,
                            "then": [f"{t.actuator} {'<=' if t.upper else '>='} {t.value}"
                                     for t in ilk.then], "policy": ilk.policy.value})
    if env.prediction is not None:
        pred = env.prediction
        for keep in pred.keep:
            constraints.append({"name": f"predict.{keep.sensor}", "kind": "prediction",
                                "min": keep.min, "max": keep.max,
                                "horizon_s": pred.step_s * pred.horizon_steps,
                                "policy": pred.policy.value})
    return {
        "ok": True,
        "file": str(site.source),
        "site": site.site.name,
        "engine": engine,
        "actuators": [_actuator(t, limits[t.name]) for t in site.actuators],
        "sensors": [
            {"name": t.name, "unit": t.unit, "min": t.range_min, "max": t.range_max,
             "device": t.device}
            for t in site.sensors
        ],
        "constraints": constraints,
        "constraint_slots": len(compiled.slot_names),
        # The safe state is proven at load (a refusal is a config error); what remains are
        # regions where a constraint cannot hold whatever is written.
        "safe_state_proven": True,
        "warnings": [f.message for f in prove_safe_state(site) if not f.refuse],
    }


def _actuator(tag: Tag, lim: ActuatorLimits) -> dict[str, Any]:
    return {"name": tag.name, "unit": tag.unit, "min": lim.min, "max": lim.max,
            "safe_value": tag.safe_value, "max_rate_per_s": lim.max_rate_per_s,
            "max_step": lim.max_step, "allowed": None if lim.allowed is None else list(lim.allowed),
            "policy": lim.policy.value, "device": tag.device}


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.config.loader import audit_environment
    from gateway.envelope import ENGINE

    status = EXIT_OK
    reports: list[dict[str, Any]] = []
    for path in args.config:
        try:
            site = load_config(path)
        except ConfigError as exc:
            status = EXIT_INPUT
            if args.json:
                reports.append({"ok": False, "file": path,
                                "errors": [str(i) for i in exc.issues]})
            else:
                print(str(exc), file=sys.stderr)
            continue
        summary = _summary(site, ENGINE)
        audit_issues = audit_environment(site)
        if audit_issues and site.audit.required:
            status = EXIT_INPUT
            if args.json:
                reports.append({"ok": False, "file": path,
                                "errors": [str(i) for i in audit_issues]})
            else:
                print("\n".join(str(i) for i in audit_issues), file=sys.stderr)
            continue
        summary["warnings"] = [*summary["warnings"], *(
            f"{i} (audit.required is false: the gateway would run WITHOUT an audit trail)"
            for i in audit_issues)]
        if args.json:
            reports.append(summary)
        else:
            for warning in summary["warnings"]:
                print(f"{path}: warning: {warning}", file=sys.stderr)
            n_con = len(site.envelope.constraints)
            n_ilk = len(site.envelope.interlocks)
            pred = site.envelope.prediction
            print(f"{path}: ok: site {site.site.name!r}, {len(site.sensors)} sensors, "
                  f"{len(site.actuators)} actuators, {n_con} linear constraints, "
                  f"{n_ilk} interlocks, prediction "
                  f"{'off' if pred is None else f'{pred.horizon_steps} x {pred.step_s} s'}, "
                  f"engine {ENGINE}")
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    return status


def wire_map(site: Site) -> dict[str, Any]:
    """The northbound Modbus map, the OPC UA variables and methods, and the southbound
    addresses of a site, as ``map --json`` prints them: ``opcua`` lists the variables (tag,
    nodeid, writable), ``opcua_methods`` the methods (name, nodeid, inputs, outputs, roles,
    does), ``modbus_codes`` and ``opcua_refusals`` what the status codes mean."""
    from gateway.adapters.modbus.map import NorthboundMap, status_codes
    from gateway.adapters.opcua.server import opcua_methods, opcua_nodes, refusal_statuses
    from gateway.config.schema import ModbusRef

    nmap = NorthboundMap.from_site(site)
    southbound = []
    for tag in site.tags:
        ref = tag.ref
        southbound.append({
            "tag": tag.name, "device": tag.device,
            "table": ref.table.value if isinstance(ref, ModbusRef) else "opcua",
            "address": ref.address if isinstance(ref, ModbusRef) else ref.node,
            "type": tag.wire_type.value, "word_order": tag.word_order.value,
            "byte_order": tag.byte_order.value, "scale": tag.scale, "offset": tag.offset,
            "kind": tag.kind.value})
    return {"unit": nmap.unit, "modbus": nmap.entries(), "modbus_codes": status_codes(),
            "opcua": [{k: n[k] for k in ("tag", "nodeid", "writable")}
                      for n in opcua_nodes(site) if n["kind"] != "method"],
            "opcua_methods": opcua_methods(),
            "opcua_refusals": refusal_statuses(),
            "southbound": southbound}


# What the columns and codes of `map` mean, printed after the map (a reader of the map is
# configuring a SCADA or a PLC and should not need the source to read it).
MAP_LEGEND = """\
legend:
  access       r  read only; rw  a client may write it. A write is a request: it is checked
               against the safety envelope, after encoding, before anything reaches the
               equipment, and reading returns the value applied, not the value written.
  Modbus       float32 values take two registers, big-endian (ABCD), engineering units.
               Addresses are 0-based (input register 0 is 30001, holding register 0 is 40001
               in 1-based tools). Writes come from northbound.modbus.allow; addresses in
               ai_clients propose as the AI, the others write operator setpoints (MANUAL
               only). A refused write gets exception 1 (function not supported), 2 (address
               not mapped, not writable, or role not allowed), 3 (outside the envelope, or a
               bad quantity), 4 (anything else), 6 (busy: retry) or 11 (unknown unit id),
               and status.rejection says why (codes above). status.latched and
               status.incident are 1 (yes) or 0; status.heartbeat counts cycles (alarm when it
               stops changing).
  OPC UA       writes need role ai, operator or admin; a refused write gets the status above
               for that node alone, and Status.LastRejection says why.
  methods      call them on the Gateway object; each answers Accepted (Boolean) and Message
               (String): the gateway's real outcome. A caller whose role is not listed gets
               BadUserAccessDenied; wrong arguments get BadInvalidArgument.
  southbound   xS+O: engineering value = wire value x S + O.
"""


def cmd_map(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config

    try:
        site = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INPUT
    result = wire_map(site)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"northbound Modbus (unit {result['unit']}):")
    print(f"  {'table':<17} {'addr':>5}  {'access':<6}  {'type':<8} tag")
    for e in result["modbus"]:
        rw = "rw" if e["writable"] else "r"
        print(f"  {e['table']:<17} {e['address']:>5}  {rw:<6}  {e['type']:<8} {e['tag']}")
    for register, codes in result["modbus_codes"].items():
        print(f"  {register}:")
        for code, text in codes.items():
            print(f"    {code:>2}  {text}")
    print("northbound OPC UA variables:")
    print(f"  {'node id':<45} {'access':<6}  tag")
    for n in result["opcua"]:
        print(f"  {n['nodeid']:<45} {'rw' if n['writable'] else 'r':<6}  {n['tag']}")
    print("  a refused write gets:")
    for kind, status in result["opcua_refusals"].items():
        print(f"    {status:<24} {kind}")
    print("northbound OPC UA methods (outputs: Accepted Boolean, Message String):")
    for m in result["opcua_methods"]:
        inputs = ", ".join(f"{a['name']}: {a['type']}" for a in m["inputs"])
        print(f"  {m['name']}({inputs})")
        print(f"      node {m['nodeid']}; may call: {', '.join(m['roles'])}")
        print(f"      {m['does']}")
    print("southbound:")
    for s in result["southbound"]:
        print(f"  {s['device']:<12} {s['table']:<17} {s['address']!s:<28} {s['type']:<8} "
              f"x{s['scale']:g}{s['offset']:+g}  {s['tag']} ({s['kind']})")
    print(MAP_LEGEND, end="")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from gateway.config import ConfigError, load_config
    from gateway.runtime import logs
    from gateway.runtime.signals import SignalWatch

    logs.configure(logging.DEBUG if args.debug else logging.INFO)
    try:
        site = load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INPUT
    if not args.no_audit:
        from gateway.config.loader import audit_environment

        issues = audit_environment(site)
        if issues and site.audit.required:
            more = f" (and {len(issues) - 1} more: run `safety-gateway check`)" if (
                len(issues) > 1) else ""
            print(f"safety-gateway run: not controlling without an audit log: {issues[0]}"
                  f"{more}", file=sys.stderr)
            return EXIT_ENVIRONMENT
        for issue in issues:
            logging.getLogger("gateway.runtime").warning(
                "AUDIT NOT REQUIRED (audit.required: false) and unusable: %s; the gateway "
                "runs WITHOUT a complete audit trail", issue)
    from gateway.incident.playbook import DEFAULT_PLAYBOOK, load_playbook
    from gateway.runtime.gateway import Gateway
    from gateway.runtime.heap import GcPauses, freeze_startup_heap
    from gateway.runtime.reloader import SIGHUP_USER
    from gateway.runtime.sdnotify import ServiceNotifier

    playbook = Path(args.playbook) if args.playbook else DEFAULT_PLAYBOOK
    try:
        load_playbook(playbook)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INPUT

    site_path = Path(args.config).resolve()  # the communications process loads it too

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        # Signals (gateway/runtime/signals.py): the handler records, this loop acts. SIGHUP
        # reloads the site file (as `ctl reload`); a stopping signal applies the shutdown
        # policy first.
        watch = SignalWatch(stop)
        watch.install()
        watcher = asyncio.create_task(watch.run(), name="signals")
        # The northbound servers run in the communications process (gateway.comms), which
        # reads the mirror and sends requests over a bounded channel: nothing a northbound
        # peer does can delay the cycle.
        link = None
        nb = site.northbound
        # A site in a fleet (fleet:) publishes its audit chain from that process too.
        if (nb.modbus is not None or nb.opcua is not None or nb.http is not None
                or site.fleet is not None):
            from gateway.comms.link import CommsLink, comms_recorder

            link = CommsLink(site, site_path,
                             on_event=comms_recorder(lambda event: gw.records.comms(event)),
                             log_level="DEBUG" if args.debug else "INFO")
        gw = Gateway(site, audit_path=None if args.no_audit else site.audit.path,
                     audit_process=True, playbook=playbook, servers=False, northbound=link,
                     service=ServiceNotifier.from_environment())  # systemd, if it asks
        if link is not None:
            link.handler = gw
        watch.on_stop = gw.stopped_by
        watch.on_reload = lambda: gw.reload(SIGHUP_USER)
        pauses = GcPauses()

        def opened() -> None:  # just before the first cycle: start-up's pauses do not count
            freeze_startup_heap()
            pauses.install()

        try:
            await gw.run(stop, on_open=opened)
        finally:
            pauses.uninstall()
            watcher.cancel()
            await asyncio.wait([watcher])
            watch.uninstall()
        return {**gw.stats(), **pauses.stats()}

    from gateway.audit import AuditError
    from gateway.comms.ports import check_free

    try:
        check_free(site)  # a taken northbound port is a setup error: say so before control
        stats = asyncio.run(main())
    except AuditError as exc:
        # audit.required: the audit log could not be opened at start (not an audit
        # database, a broken tail, another writer): no control without it.
        print(f"safety-gateway run: not controlling without an audit log: {exc}",
              file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as exc:
        # Typically a northbound port that cannot be bound.
        print(f"safety-gateway run: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats, indent=2))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks import BENCHES

    bench = BENCHES.get(args.what)
    if bench is None:
        print(f"unknown bench {args.what!r}; one of: {', '.join(sorted(BENCHES))}",
              file=sys.stderr)
        return EXIT_INPUT
    from benchmarks.errors import BenchUnavailable
    from gateway.config import ConfigError

    options = {key: getattr(args, key) for key in ("sites", "rate")
               if getattr(args, key, None) is not None}
    if options and args.what != "fleet":
        print(f"--sites and --rate apply to bench fleet only, not {args.what!r}",
              file=sys.stderr)
        return EXIT_INPUT
    try:
        result = bench.run(quick=args.quick, **options)
    except ValueError as exc:  # an option out of range
        print(f"safety-gateway bench {args.what}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ConfigError as exc:
        # The benches use the example sites of a source checkout (configs/).
        print(f"safety-gateway bench {args.what}: needs the example sites of a source "
              f"checkout:\n{exc}", file=sys.stderr)
        return EXIT_INPUT
    except BenchUnavailable as exc:  # a benchmark's own dependency is not installed
        print(f"safety-gateway bench {args.what}: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(bench.format_text(result))
    return EXIT_OK


def package_version() -> str:
    """The installed distribution's version (pyproject's ``version``), or ``unknown`` when
    the package runs from a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("safety-gateway")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="safety-gateway", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="print tracebacks of internal errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the installed package's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="validate site files and summarise their envelope")
    check.add_argument("config", nargs="+", help="site YAML file(s)")
    check.add_argument("--json", action="store_true", help="machine-readable summary")
    check.set_defaults(func=cmd_check)

    wmap = sub.add_parser("map", help="print the northbound maps and southbound addresses")
    wmap.add_argument("config", help="site YAML file")
    wmap.add_argument("--json", action="store_true", help="machine-readable map")
    wmap.set_defaults(func=cmd_map)

    run = sub.add_parser("run", help="run the gateway (SIGINT/SIGTERM stop it cleanly)")
    run.add_argument("config", help="site YAML file")
    run.add_argument("--stats-json", metavar="PATH",
                     help="at shutdown, write cycle statistics here (lateness percentiles, "
                          "and each cycle's start and lateness)")
    run.add_argument("--playbook", metavar="PATH",
                     help="incident playbook (default: configs/playbooks/default.yaml)")
    run.add_argument("--no-audit", action="store_true",
                     help="run without the audit log (benchmarks; not for production)")
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="measure performance figures")
    bench.add_argument("what", help="which bench: envelope, supervisor, wire, audit, replay, "
                                    "startup, interference, learn, fleet, mcp, reload")
    bench.add_argument("--json", action="store_true", help="print one JSON object of figures")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    bench.add_argument("--sites", type=int, help="bench fleet: simulated sites (default 100)")
    bench.add_argument("--rate", type=float,
                       help="bench fleet: audit records per second per site (default 50)")
    bench.set_defaults(func=cmd_bench)

    # Commands that live with their own subsystem register themselves.
    from gateway.audit.cli import add_parser as add_audit
    from gateway.certs import add_parser as add_certs
    from gateway.ctl import add_parser as add_ctl
    from gateway.forensics.cli import add_parser as add_forensics
    from gateway.incident.cli import add_parser as add_incidents
    from gateway.mcp.stdio import add_parser as add_mcp_stdio
    from gateway.registry.cli import add_parser as add_model
    from simulators.drill.cli import add_parser as add_drill
    from simulators.simulate_args import add_parser as add_simulate

    add_audit(sub)
    add_ctl(sub)
    add_incidents(sub)
    add_model(sub)
    add_forensics(sub)
    add_simulate(sub)
    add_drill(sub)
    add_certs(sub)
    add_mcp_stdio(sub)
    from gateway.commissioning.cli import add_parser as add_commissioning

    add_commissioning(sub)  # learn, prove (issue 20)
    from gateway.fleet.cli import add_parser as add_fleet

    # fleet init, verify, nats-config; status, dashboard, incident (gateway.fleet.view_cli)
    # join through gateway.fleet.cli.EXTENSIONS (issue 21)
    add_fleet(sub)
    _plain_help(parser)
    return parser


# A reST role with its target (:func:`add_parser`, :class:`~gateway.audit.log.AuditLog`).
_ROLE = re.compile(r":[a-z]+:`(~?)([^`]*)`")


def plain_text(text: str) -> str:
    """``text`` without reStructuredText markup: a role keeps its target (the last dotted
    part after ``~``, as Sphinx shows it), ``literals`` and `interpreted text` lose their
    backticks, **strong** its asterisks. Descriptions are taken from module docstrings,
    written for developers; a user reading ``--help`` should see plain text."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2),
                     text)
    return text.replace("``", "").replace("`", "").replace("**", "")


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Make every description, epilog and argument help of ``parser`` and its subcommands
    plain text (:func:`plain_text`), wherever each subcommand's module wrote it."""
    for attr in ("description", "epilog"):
        value = getattr(parser, attr)
        if isinstance(value, str):
            setattr(parser, attr, plain_text(value))
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = plain_text(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # the subcommands' one-line summaries
                if isinstance(choice.help, str):
                    choice.help = plain_text(choice.help)
            for sub in set(action.choices.values()):
                _plain_help(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        status = func(args)
        # Flush here rather than at interpreter exit, so that a closed pipe is handled below.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from gateway.envelope.engine import EngineUnavailable

        if isinstance(exc, EngineUnavailable):
            print(f"safety-gateway: {exc}", file=sys.stderr)
            return EXIT_ENVIRONMENT
        if args.debug:
            traceback.print_exc()
        print(f"safety-gateway: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for details; please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _drop_stdout() -> None:
    """Point stdout at /dev/null after its reader went away.

    What the Python documentation recommends (signal module, "Note on SIGPIPE"): without it,
    the interpreter's final flush of the unwritten buffer raises BrokenPipeError again and
    prints "Exception ignored ..." on stderr.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        # stdout is not a real file (replaced by a test harness, or already closed): there is
        # no descriptor to redirect, and no final flush to a pipe that could fail.
        return
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
