"""The ``northbound.http`` section: the dashboard's host, port and optional HTTPS files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.comms.ports import northbound_addresses
from gateway.config import load_config
from tests.config.test_loader import BASE, assert_issue, edit, issues_of, line_of, write

if TYPE_CHECKING:
    from pathlib import Path

NB = "    allow_anonymous: true\n"


def with_http(section: str) -> str:
    return edit(BASE, NB, NB + "  http:\n" + section)


def test_no_section_no_dashboard(tmp_path: Path) -> None:
    site = load_config(write(tmp_path, BASE))
    assert site.northbound.http is None


def test_host_port_and_https_files_relative_to_the_site(tmp_path: Path) -> None:
    text = with_http("    host: 0.0.0.0\n    port: 8443\n"
                     "    certificate: pki/web.pem\n    private_key: pki/web.key\n")
    site = load_config(write(tmp_path, text))
    http = site.northbound.http
    assert http is not None
    assert (http.host, http.port) == ("0.0.0.0", 8443)
    assert http.certificate == tmp_path / "pki/web.pem"
    assert http.private_key == tmp_path / "pki/web.key"
    # `run` checks the dashboard's port free with the others before it starts.
    assert ("dashboard (HTTP)", "0.0.0.0", 8443) in northbound_addresses(site)


def test_defaults_are_loopback(tmp_path: Path) -> None:
    site = load_config(write(tmp_path, with_http("    port: 8080\n")))
    assert site.northbound.http is not None
    assert site.northbound.http.host == "127.0.0.1"
    assert site.northbound.http.certificate is None


def test_port_out_of_range_names_line_and_key(tmp_path: Path) -> None:
    text = with_http("    port: 70000\n")
    path = write(tmp_path, text)
    assert_issue(path, issues_of(path), line_of(text, "port: 70000"), "northbound.http.port",
                 "1..65535")


def test_port_as_text(tmp_path: Path) -> None:
    text = with_http("    port: eighty\n")
    path = write(tmp_path, text)
    assert_issue(path, issues_of(path), line_of(text, "port: eighty"), "northbound.http.port",
                 "whole number")


def test_certificate_without_key(tmp_path: Path) -> None:
    text = with_http("    port: 8443\n    certificate: web.pem\n")
    path = write(tmp_path, text)
    # The key that is missing is named; the error points at the section's line.
    issues = issues_of(path)
    assert any(i.path == "northbound.http.private_key" and "both" in i.message
               for i in issues), issues


def test_unknown_key(tmp_path: Path) -> None:
    text = with_http("    port: 8080\n    tls: yes\n")
    path = write(tmp_path, text)
    assert_issue(path, issues_of(path), line_of(text, "tls: yes"), "northbound.http.tls",
                 "unknown key")
