"""`cachebench transports`: warm block reads per transport vs a raw TCP socket, in one run."""

from __future__ import annotations

import click

from . import rounds
from .probe import run_probe
from .testbed import testbed

SHM_TLS = "sm,cma,tcp"


def run_transports(size: int, block_size: str, workdir: str | None, repeat: int = 3) -> dict:
    import cachenode

    with testbed(workdir, "cachebench-tr-") as bed:
        token = bed.token
        _, nbytes = bed.checkpoint(size, "t/m.safetensors", name="m.safetensors")
        url = bed.url("t/m.safetensors")
        args = ("--ucx", "--block-size", block_size, "--memory", "8GiB")
        shm = bed.cluster(1, *args, name="shm", env={"UCX_TLS": SHM_TLS})
        tcp = bed.cluster(1, *args, name="tcp", env={"UCX_TLS": "tcp"})
        for c in (shm, tcp):
            cachenode.warm(url, nodes=c.urls, token=token)
        click.echo(f"{nbytes / 2**30:.2f} GiB warm on the node(s); every block read in each probe "
                   f"(best of 3 passes), {repeat} rounds")
        wire = {"kind": "wire", "token": token, "url": url}
        runs = []

        def one_round(i: int) -> None:
            # one probe of each wire per round, in a fresh process each
            raw = {"kind": "raw_tcp", "bytes": nbytes}
            r = {"raw_tcp": run_probe(raw, 900),  # sender in its own process, like iperf3
                 "raw_tcp_same_process": run_probe({**raw, "same_process": True}, 900),
                 "tcp": run_probe({**wire, "node": shm.urls[0], "transport": "tcp"}, 900),
                 "ucx": run_probe({**wire, "node": shm.urls[0], "transport": "ucx"}, 900),
                 "ucx_tcp": run_probe({**wire, "node": tcp.urls[0], "transport": "ucx", "env": {"UCX_TLS": "tcp"}},
                                      900)}
            click.echo("  " + ", ".join(f"{k} {v['gb_per_s']:.2f}" for k, v in r.items()) + " GB/s")
            runs.append(r)

        rounds.run_rounds(repeat, one_round, click.echo)

    per = {k: rounds.summarize([r[k] for r in runs]) for k in runs[0]}
    medians, ranges = rounds.summarize_ratios([_ratios(r) for r in runs])
    return {"raw_tcp_gb_per_s": per["raw_tcp"]["gb_per_s"],
            "raw_tcp_same_process_gb_per_s": per["raw_tcp_same_process"]["gb_per_s"],
            "raw_tcp": per["raw_tcp"], "raw_tcp_same_process": per["raw_tcp_same_process"],
            "transports": {k: per[k] for k in ("tcp", "ucx", "ucx_tcp")},
            "ucx_tls": {"ucx": SHM_TLS, "ucx_tcp": "tcp"},
            "block_size": block_size, "bytes": nbytes, "repeat": repeat,
            "ratios": medians, "ratios_range": ranges}


def _ratios(r: dict) -> dict:
    """One round's ratios between wires."""
    gb = {k: v["gb_per_s"] for k, v in r.items()}
    return {"tcp_over_raw_tcp": gb["tcp"] / gb["raw_tcp"],
            "tcp_over_raw_tcp_same_process": gb["tcp"] / gb["raw_tcp_same_process"],
            "ucx_over_tcp": gb["ucx"] / gb["tcp"],
            "ucx_tcp_over_tcp": gb["ucx_tcp"] / gb["tcp"]}


def command(size: int, block_size: str, workdir: str | None, json_path: str | None, repeat: int) -> None:
    """`cachebench transports`: the rounds, then each wire's median and range and the targets."""
    from .output import write_results
    from .rounds import fmt_range

    result = run_transports(size, block_size, workdir, repeat)
    r, q = result["ratios"], result["ratios_range"]

    def gb(entry: dict) -> str:
        return fmt_range(entry["gb_per_s"], *entry["range"]["gb_per_s"], unit=" GB/s")

    click.echo(f"\n{repeat} rounds: medians (min-max)")
    click.echo(f"raw TCP socket, 2 processes    {gb(result['raw_tcp'])}  (1 MiB writes)")
    click.echo(f"raw TCP socket, 1 process      {gb(result['raw_tcp_same_process'])}  "
               f"(sender thread; HTTP is {fmt_range(r['tcp_over_raw_tcp_same_process'], *q['tcp_over_raw_tcp_same_process'])}x this)")
    for name, t in result["transports"].items():
        click.echo(f"{name:<30} {gb(t)}  ({t['channel']})")
    click.echo(f"\ntargets: HTTP >= 0.7x raw TCP: {fmt_range(r['tcp_over_raw_tcp'], *q['tcp_over_raw_tcp'])} "
               f"[{'met' if r['tcp_over_raw_tcp'] >= 0.7 else 'NOT met'}]; "
               f"UCX (shm) >= 1.5x HTTP: {fmt_range(r['ucx_over_tcp'], *q['ucx_over_tcp'])} "
               f"[{'met' if r['ucx_over_tcp'] >= 1.5 else 'NOT met'}]")
    write_results(result, json_path, None, "")
