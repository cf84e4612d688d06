"""The daemon's command line refuses unsafe or malformed settings with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cachenode.units import parse_size


def _serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    e = {k: v for k, v in os.environ.items() if not k.startswith(("CACHENODE_", "AZURE_STORAGE_"))}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "cachenode", "serve", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60, env=e)


def test_serve_requires_a_token():
    r = _serve()
    assert r.returncode == 2
    assert "no cluster token" in r.stderr


def test_no_auth_only_on_loopback():
    r = _serve("--no-auth", "--host", "0.0.0.0")
    assert r.returncode == 2
    assert "refused on non-loopback address 0.0.0.0" in r.stderr


def test_bad_sizes_and_allow_entries_are_named(tmp_path):
    r = _serve("--token", "t", "--memory", "lots")
    assert r.returncode == 2 and "cannot parse size 'lots'" in r.stderr
    r = _serve("--token", "t", "--block-size", "1KiB")
    assert r.returncode == 2 and "block size 1024 out of range" in r.stderr
    r = _serve("--token", "t", "--allow", "justaccount")
    assert r.returncode == 2 and "'justaccount'" in r.stderr
    empty = tmp_path / "tok"
    empty.write_text("")
    r = _serve("--token-file", str(empty))
    assert r.returncode == 2 and "is empty" in r.stderr


def test_help_explains():
    r = subprocess.run([sys.executable, "-m", "cachenode", "serve", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    for flag in ("--memory", "--disk", "--block-size", "--allow", "--token", "CACHENODE_TOKEN"):
        assert flag in r.stdout


def test_flags_left_out_mean_the_config_defaults():
    """serve's and mount's options are made from the config fields: a flag not given is the field's
    default (fields whose flag an env var stands in for have none of their own)."""
    from dataclasses import MISSING, fields

    from cachenode.cli import mount, serve
    from cachenode.client.mount.config import MountConfig
    from cachenode.node.config import NodeConfig
    from cachenode.node.qos import QosConfig

    given = {**serve.make_context("serve", []).params,
             **mount.make_context("mount", ["/mnt/x", "--source", "az://a/b"]).params}
    checked = 0
    for cls in (NodeConfig, QosConfig, MountConfig):
        for f in fields(cls):
            if "option" in f.metadata and "env" not in f.metadata and f.default is not MISSING:
                assert given[f.name] == f.default, f.name
                checked += 1
    assert checked >= 20


@pytest.mark.parametrize("text, value", [("8MiB", 8 << 20), ("4GiB", 4 << 30), ("1.5GB", 1_500_000_000),
                                         ("0", 0), ("512 kib", 512 << 10)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["-1", "1XB", "", "GiB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size(text)


def test_admin_commands_report_errors_without_tracebacks():
    r = subprocess.run([sys.executable, "-m", "cachenode", "stat", "s3://bucket/key"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert "Error: unsupported URL scheme in 's3://bucket/key'" in r.stderr
    assert "Traceback" not in r.stderr


def test_ucx_that_cannot_start_is_one_clear_error_and_nothing_left_open(tmp_path):
    """A UCX misconfiguration (here a network device that does not exist) ends the node with one
    line naming UCX and the setting to check: no traceback, no unclosed session."""
    r = _serve("--no-auth", "--ucx", "--cache-dir", str(tmp_path),
               env={"UCX_TLS": "tcp", "UCX_NET_DEVICES": "nosuchdev0"})
    assert r.returncode == 1
    assert "Error: cannot start UCX" in r.stderr and "UCX_NET_DEVICES=nosuchdev0" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Unclosed" not in r.stderr, r.stderr
