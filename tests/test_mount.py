"""`cachenode mount` for real (FUSE): Hugging Face, safetensors mmap, torch.load mmap and shell tools
read a model from Azurite through the cluster, byte-exact; replaced blobs, kills and page-cache sharing."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch

from cachenode.client.mount.run import mount_at
from cachenode.testing.cluster import LocalCluster
from cachenode.testing.mount import MountProcess
from helpers import BS, TOKEN, metric

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse: FUSE unavailable")
MiB = 1 << 20
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cache", "node", "mount", "reads",
         "model", "weights", "fast"]
TEXT = "the cache node mount reads fast model weights"


def _build_model(root) -> None:
    """A random-init tiny BERT in 2+ safetensors shards with an index, its tokenizer, a .pt and
    a 4 MiB single-file checkpoint (64 KiB blocks: many blocks per file)."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel, BertTokenizer

    model_dir = root / "models" / "tiny-bert"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(model_dir, max_shard_size="40KB")
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(model_dir)
    torch.save({"w": torch.randn(300, 1000), "step": torch.tensor(7)}, model_dir / "extra.pt")
    (root / "ckpt").mkdir()
    save_file({f"t{i}": torch.randn(256, 1024) for i in range(4)}, root / "ckpt" / "big.safetensors")


def _wait_listed(path, timeout: float = 10.0) -> None:
    """Wait for a blob uploaded during the test to show (the mount's listing TTL is 0.5 s)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared in the mount"
        time.sleep(0.1)


def _local_files(root) -> dict[str, int]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, blob_service, azurite):
    """(local tree, its copy under the mount, the cluster, the mount, the container): one mount
    for the module.

    The nodes read Azurite directly, not through the counting proxy: that proxy runs on a thread
    of this process, and a page fault on an mmap of the mount (safe_open, torch.load) holds the
    GIL while the kernel waits for the mount, which waits for a node, which waits for the proxy.
    """
    base = tmp_path_factory.mktemp("mount")
    local = base / "local"
    local.mkdir()
    _build_model(local)
    container = f"m{uuid.uuid4().hex[:12]}"
    blob_service.create_container(container)
    for rel in _local_files(local):
        blob_service.get_blob_client(container, rel).upload_blob((local / rel).read_bytes())
    mp = base / "mnt"
    with LocalCluster(base / "cluster", 2, token=TOKEN, conn_str=azurite.connection_string,
                      args=("--block-size", f"{BS}", "--local-socket", "local.sock")) as cluster, \
            MountProcess(mp, [f"az://{container}"], cluster.urls, token=TOKEN,
                         args=("--listing-ttl", "0.5")) as m:
        yield local, mp / container, cluster, m, container
        code = m.stop()
    assert code == 0 and mount_at(str(mp)) is None and os.listdir(mp) == []


def test_shell_tools_see_the_local_tree(world):
    local, mnt, *_ = world
    files = _local_files(local)
    assert _local_files(mnt) == files  # names and sizes, from the listing
    listing = subprocess.run(["ls", "-R", str(mnt)], capture_output=True, text=True, check=True).stdout
    assert all(os.path.basename(rel) in listing for rel in files)
    for rel in files:
        st = os.stat(mnt / rel)
        assert st.st_size == files[rel] and st.st_mtime > 0 and not st.st_mode & 0o222
        assert subprocess.run(["cmp", str(local / rel), str(mnt / rel)]).returncode == 0, rel
    cat = subprocess.run(["cat", str(mnt / "models/tiny-bert/config.json")], capture_output=True, check=True)
    assert cat.stdout == (local / "models/tiny-bert/config.json").read_bytes()
    with pytest.raises(OSError) as exc:
        open(mnt / "models/tiny-bert/config.json", "r+b")
    assert exc.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "models/nope")


def test_xattrs_name_url_and_etag(world, blob_service):
    local, mnt, _, _, container = world
    p = mnt / "models/tiny-bert/config.json"
    assert os.getxattr(p, "user.cachenode.url") == f"az://{container}/models/tiny-bert/config.json".encode()
    etag = blob_service.get_blob_client(container, "models/tiny-bert/config.json").get_blob_properties().etag
    assert os.getxattr(p, "user.cachenode.etag").decode() == etag
    assert set(os.listxattr(p)) == {"user.cachenode.url", "user.cachenode.etag"}


def test_hugging_face_loads_from_the_mount(world):
    from transformers import AutoModel, AutoTokenizer

    local, mnt, *_ = world
    shards = [f for f in os.listdir(mnt / "models/tiny-bert") if f.endswith(".safetensors")]
    assert len(shards) >= 2 and (mnt / "models/tiny-bert/model.safetensors.index.json").exists()
    ours, theirs = (AutoModel.from_pretrained(str(d / "models/tiny-bert")).eval() for d in (mnt, local))
    tok_ours, tok_theirs = (AutoTokenizer.from_pretrained(str(d / "models/tiny-bert")) for d in (mnt, local))
    ids = tok_ours(TEXT, return_tensors="pt")
    assert ids["input_ids"].tolist() == tok_theirs(TEXT, return_tensors="pt")["input_ids"].tolist()
    assert 1 not in ids["input_ids"].tolist()[0]  # no [UNK]: the vocabulary came through
    with torch.no_grad():
        assert torch.equal(ours(**ids).last_hidden_state, theirs(**ids).last_hidden_state)


def test_mmap_loaders_are_byte_exact(world):
    from safetensors import safe_open

    local, mnt, *_ = world
    with safe_open(str(mnt / "ckpt/big.safetensors"), "pt") as ours, \
            safe_open(str(local / "ckpt/big.safetensors"), "pt") as theirs:
        assert list(ours.keys()) == list(theirs.keys())
        for k in ours.keys():
            assert torch.equal(ours.get_tensor(k), theirs.get_tensor(k)), k
    ours = torch.load(mnt / "models/tiny-bert/extra.pt", mmap=True)
    theirs = torch.load(local / "models/tiny-bert/extra.pt")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert ours["w"].numpy().tobytes() == theirs["w"].numpy().tobytes()


READER = """
import hashlib, os, sys, time
from safetensors.numpy import load_file  # numpy, not torch: four torch imports take seconds
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
t = load_file(sys.argv[1])
print(hashlib.sha256(t["x"].tobytes()).hexdigest())  # touches every byte
"""


def test_four_processes_pull_a_checkpoint_from_the_cluster_once(world, blob_service):
    """Four readers at once through one mount: the kernel page cache shares one pull of the file."""
    local, mnt, cluster, _, container = world
    data = os.urandom(3 * MiB + 12345)  # a file no test has read: nothing of it is cached anywhere
    from safetensors.torch import save

    blob = save({"x": torch.frombuffer(bytearray(data), dtype=torch.uint8)})
    blob_service.get_blob_client(container, "ckpt/fresh.safetensors").upload_blob(blob)
    path = mnt / "ckpt/fresh.safetensors"
    _wait_listed(path)
    served = lambda: sum(metric(p, "cachenode_served_bytes_total") for p in cluster.procs)
    before = served()
    go = mnt.parent.parent / f"go-{uuid.uuid4().hex[:6]}"
    procs = [subprocess.Popen([sys.executable, "-c", READER, str(path), str(go)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    go.touch()
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs) and {o.strip() for o in outs} == {hashlib.sha256(data).hexdigest()}
    assert served() - before == len(blob)  # once, not 4 times


def test_a_mount_beside_a_node_maps_that_nodes_blocks_and_reads_byte_exact(world, tmp_path, azurite):
    local, _, _, _, container = world
    want = (local / "ckpt" / "big.safetensors").read_bytes()
    # Blocks of 1 MiB: the kernel's requests (up to 1 MiB) each fall in one block, which the
    # mount keeps whole and answers views of (smaller blocks are read into the request's buffer).
    with LocalCluster(tmp_path / "cluster", 1, token=TOKEN, conn_str=azurite.connection_string,
                      args=("--block-size", "1MiB", "--local-socket", "local.sock")) as cluster, \
            MountProcess(tmp_path / "mnt", [f"az://{container}"], cluster.urls, token=TOKEN,
                         local_socket=cluster.procs[0].cache_dir / "local.sock") as m:
        with open(tmp_path / "mnt" / container / "ckpt" / "big.safetensors", "rb") as f:
            head = f.read(4096)
            # While the file is open its cached blocks are the node's memfds, mapped read-only:
            # the mount copies nothing itself (the kernel copies its replies into the page cache).
            with open(f"/proc/{m.proc.pid}/maps") as maps:
                assert "/memfd:cachenode-block" in maps.read()
            assert head + f.read() == want
        # Every block came by descriptor through the node's one door.
        assert metric(cluster.procs[0], "cachenode_served_bytes_total") >= len(want)


def test_blob_replaced_under_an_open_file_gives_eio_then_the_new_version(world, blob_service):
    local, mnt, _, m, container = world
    old, new = os.urandom(4 * MiB), os.urandom(4 * MiB)
    bc = blob_service.get_blob_client(container, "ckpt/replaced.bin")
    bc.upload_blob(old)
    path = mnt / "ckpt/replaced.bin"
    _wait_listed(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == old[:4096]
        bc.upload_blob(new, overwrite=True)
        with pytest.raises(OSError) as exc:
            os.pread(fd, 4096, 3 * MiB)  # far past any readahead: fetched now, at the pinned ETag
        assert exc.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert path.read_bytes() == new  # a new open pins the new ETag; no old page survives
    assert os.getxattr(path, "user.cachenode.etag").decode() == bc.get_blob_properties().etag
    assert "was replaced while open" in m.log_path.read_text()


@pytest.fixture
def scratch_mountpoint(tmp_path):
    """A mountpoint that is unmounted afterwards whatever the test left there."""
    mp = tmp_path / "mnt"
    yield mp
    if mount_at(str(mp)) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)])


def test_unmount_leaves_nothing_after_sigterm_or_sigkill(world, scratch_mountpoint):
    _, _, cluster, _, container = world
    mp = scratch_mountpoint

    def mount() -> MountProcess:
        return MountProcess(mp, [f"az://{container}"], cluster.urls, token=TOKEN).start()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cachenode", *args], capture_output=True, text=True,
                              env={**os.environ, "CACHENODE_TOKEN": TOKEN, "AZURE_STORAGE_ACCOUNT_NAME": "devstoreaccount1"})

    m = mount()
    busy = cli("mount", str(mp), "--source", f"az://{container}", "--node", cluster.urls[0])
    assert busy.returncode != 0 and "busy" in busy.stderr and str(mp) in busy.stderr
    assert m.stop(signal.SIGTERM) == 0
    assert mount_at(str(mp)) is None and os.listdir(mp) == []

    m = mount()
    assert os.listdir(mp) == [container]
    m.stop(signal.SIGKILL)
    with pytest.raises(OSError) as exc:
        os.listdir(mp)
    assert exc.value.errno == errno.ENOTCONN
    stale = cli("mount", str(mp), "--source", f"az://{container}", "--node", cluster.urls[0])
    assert stale.returncode != 0 and "stale" in stale.stderr and "cachenode unmount" in stale.stderr
    done = cli("unmount", str(mp))  # the documented recovery (fusermount3 -u underneath)
    assert done.returncode == 0, done.stderr
    assert mount_at(str(mp)) is None and os.listdir(mp) == []
    again = cli("unmount", str(mp))
    assert again.returncode != 0 and "nothing is mounted" in again.stderr


def test_daemon_mode_returns_once_mounted_and_unmount_ends_it(world, scratch_mountpoint):
    _, _, cluster, _, container = world
    mp = scratch_mountpoint
    mp.mkdir()
    env = {**os.environ, "CACHENODE_TOKEN": TOKEN, "AZURE_STORAGE_ACCOUNT_NAME": "devstoreaccount1"}
    log = mp.parent / "daemon.log"
    r = subprocess.run([sys.executable, "-m", "cachenode", "mount", str(mp), "--source", f"az://{container}",
                        "--node", cluster.urls[0], "--daemon", "--log-file", str(log)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.split("by process ")[1].split()[0])
    assert os.listdir(mp) == [container]  # mounted when the command returned
    assert subprocess.run([sys.executable, "-m", "cachenode", "unmount", str(mp)]).returncode == 0
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "the daemon outlived its unmount"
        time.sleep(0.05)
    assert mount_at(str(mp)) is None and os.listdir(mp) == []
