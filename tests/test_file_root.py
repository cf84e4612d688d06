"""file:// sources stay inside their allowed directory: links, FIFOs and listings."""

from __future__ import annotations

import os
import stat
import time
from urllib.parse import urlencode

import pytest

import cachenode
from helpers import BS, TOKEN, http_get


@pytest.fixture
def tree(tmp_path, nodes):
    """root/ (allowed) with honest files and every kind of escape; outside/ and root2/ beside it."""
    root, outside, sibling = tmp_path / "shared", tmp_path / "outside", tmp_path / "shared2"
    for d in (root, outside, sibling, root / "sub"):
        d.mkdir()
    (outside / "secret.bin").write_bytes(b"SECRET")
    (sibling / "leak.bin").write_bytes(b"SIBLING")
    data = os.urandom(2 * BS + 5)
    (root / "m.bin").write_bytes(data)
    (root / "sub" / "n.bin").write_bytes(b"nested")
    (root / "alias.bin").symlink_to("m.bin")  # a link that stays inside: fine
    (root / "abs.bin").symlink_to(outside / "secret.bin")
    (root / "rel.bin").symlink_to("../outside/secret.bin")
    (root / "dir").symlink_to(outside)
    (root / "sub" / "up.bin").symlink_to("../../outside/secret.bin")
    os.mkfifo(root / "pipe")
    os.mknod(root / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero: endless
    node = nodes.start("--block-size", str(BS), "--allow", f"file://{root}")
    return node, root, data


@pytest.mark.parametrize("name", ["abs.bin", "rel.bin", "dir/secret.bin", "sub/up.bin"])
def test_symlinks_out_of_the_root_are_refused(tree, name):
    node, root, _ = tree
    with pytest.raises(cachenode.Forbidden, match="outside its allowed directory"):
        cachenode.open(f"file://{root}/{name}", nodes=[node.url], token=TOKEN)


def test_links_inside_the_root_still_work(tree):
    node, root, data = tree
    with cachenode.open(f"file://{root}/alias.bin", nodes=[node.url], token=TOKEN) as f:
        assert f.read() == data


@pytest.mark.parametrize("special", ["pipe", "zero"])
def test_a_fifo_or_device_gets_a_4xx_at_once_and_the_node_keeps_serving(tree, special):
    node, root, data = tree
    t0 = time.monotonic()
    with pytest.raises(cachenode.SourceNotFound, match="not a regular file"):
        cachenode.open(f"file://{root}/{special}", nodes=[node.url], token=TOKEN)
    # a block request made up by hand never reaches an open() that would wait for a writer
    q = {"kind": "file", "path": f"{root}/{special}", "etag": '"1-2-3"', "size": "10", "bs": str(BS), "index": "0"}
    for _ in range(3):  # more than one: each would have blocked a worker thread
        status, body = http_get(f"{node.url}/v1/block?{urlencode(q)}", timeout=5)
        assert 400 <= status < 500, body
    assert time.monotonic() - t0 < 5
    with cachenode.open(f"file://{root}/m.bin", nodes=[node.url], token=TOKEN) as f:
        assert f.read() == data


@pytest.mark.parametrize("suffix", ["", "/"])
def test_listing_stays_inside_the_root(tree, suffix):
    node, root, _ = tree
    status, body = http_get(f"{node.url}/v1/list?{urlencode({'kind': 'file', 'path': f'{root}{suffix}'})}")
    assert status == 200, body
    paths = sorted(o["path"] for o in body["objects"])
    assert paths == [f"{root}/alias.bin", f"{root}/m.bin", f"{root}/sub/n.bin"]


def test_listing_a_name_prefix_in_the_parent_of_the_root_is_refused(tree):
    node, root, _ = tree
    status, body = http_get(f"{node.url}/v1/list?{urlencode({'kind': 'file', 'path': str(root)[:-1]})}")
    assert status == 403, body
