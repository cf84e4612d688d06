"""Engine KV plug-in options: plug-in config over CACHENODE_* environment, strings as engines pass them."""

from __future__ import annotations

from cachenode.client.engines.kvstore import KVStoreOptions
from cachenode.env import read_env


def test_config_over_environment(tmp_path):
    env = read_env({"CACHENODE_NODES": "http://n1,http://n2", "CACHENODE_TOKEN": "t",
                    "CACHENODE_KV_NAMESPACE": "kv-env", "CACHENODE_KV_WRITER_TOKEN": "w-env"})
    o = KVStoreOptions.resolve({}, env)
    assert (o.nodes, o.token, o.namespace, o.writer_token, o.writes) == (("http://n1", "http://n2"), "t", "kv-env",
                                                                          "w-env", True)
    secret = tmp_path / "writer"
    secret.write_text("w-file\n")
    o = KVStoreOptions.resolve({"nodes": "http://a, http://b", "namespace": "kv2", "writer_token_file": str(secret),
                                "save": "false", "load": "1"}, env)
    assert (o.nodes, o.namespace, o.writer_token, o.save, o.load, o.writes) == (("http://a", "http://b"), "kv2",
                                                                                "w-file", False, True, False)


def test_without_a_writer_credential_a_plug_in_only_reads():
    o = KVStoreOptions.resolve({"nodes": ["http://a"]}, read_env({}))
    assert o.namespace == "kv" and o.writer_token is None and not o.writes
