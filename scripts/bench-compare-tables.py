#!/usr/bin/env python3
"""The tables of scripts/bench-compare.

usage: bench-compare-tables.py RESULTS NATS_VERSION NATS_HAS_SYNC

RESULTS has one line per run: a name, a space, and the JSON report `shardmq-bench --json`
printed. Prints the two tables ("acknowledged after a flush", "acknowledged before a
flush") with absolute figures, device flushes, CPU µs per message of the server process
("srv us/m") and of the load generator ("gen us/m"), and the ratios ours / ceiling and
ours / peer, then the other figures of the benchmark issue with their targets. Runs missing
from RESULTS show as "(not run)"; CPU figures missing from a report (no server pid, or a
report from before they existed) show as "-".
"""
import json
import re
import sys

runs = {}
for line in open(sys.argv[1]):
    name, js = line.split(' ', 1)
    runs[name] = json.loads(js)
nats_version, nats_has_sync = sys.argv[2], sys.argv[3] == '1'


def get(name, key):
    r = runs.get(name)
    return None if r is None else r.get(key)


def fmt(v, spec):
    """v formatted by spec; a missing v is '-', in the same width so that columns stay put."""
    return format('-', re.sub(r'(\.\d+)?f$', '', spec)) if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or not b else a / b


def verdict(value, floor=None, aim=None, below=False):
    """'met'/'missed' against a floor (and aim); below=True when smaller is better."""
    if value is None:
        return 'not measured'
    ok = (lambda v, t: v <= t) if below else (lambda v, t: v >= t)
    words = []
    if floor is not None:
        words.append(f"floor {floor:g}: {'met' if ok(value, floor) else 'MISSED'}")
    if aim is not None:
        words.append(f"aim {aim:g}: {'met' if ok(value, aim) else 'missed'}")
    return ', '.join(words)


def cpu(r):
    """The server's and the load generator's CPU µs per message, formatted."""
    return (f"{fmt(r.get('server_cpu_us_per_msg'), '>8.2f')} "
            f"{fmt(r.get('bench_cpu_us_per_msg'), '>8.2f')}")


HEAD = (f"{'run':<34} {'msgs/s':>10} {'MB/s':>8} {'p50 us':>8} {'p99 us':>8} "
        f"{'p99.9 us':>9} {'flushes':>8} {'msgs/flush':>10} {'ours/this':>9} "
        f"{'srv us/m':>8} {'gen us/m':>8}")


def row(label, name, ours=None):
    r = runs.get(name)
    if r is None:
        print(f"{label:<34} {'(not run)':>10}")
        return
    flushes = r.get('device_flushes')
    per_flush = r['messages'] / flushes if flushes else None
    lat = r['p50_us'] or r['p99_us']
    mine = ratio(get(ours, 'msgs_per_s'), r['msgs_per_s']) if ours and ours != name else None
    print(f"{label:<34} {r['msgs_per_s']:>10.0f} {r['mb_per_s']:>8.1f} "
          f"{fmt(r['p50_us'] if lat else None, '>8')} {fmt(r['p99_us'] if lat else None, '>8')} "
          f"{fmt(r['p999_us'] if lat else None, '>9')} {fmt(flushes, '>8')} "
          f"{fmt(per_flush, '>10.1f')} {fmt(mine, '>9.2f')} {cpu(r)}")


def ceiling_row(label, name):
    r = runs.get(name)
    mb = fmt(r and r['mb_per_s'], '>8.1f')
    print(f"{label:<34} {'':>10} {mb} {'':>8} {'':>8} {'':>9} "
          f"{fmt(r and r.get('device_flushes'), '>8')}")


def table(title, ours, peers, disk, note):
    print(f"\n{title}\n{note}\n{HEAD}")
    ceiling_row(f"ceiling: {disk}", disk)
    ceiling_row("ceiling: net (loopback TCP)", 'net')
    row(f"ShardMQ ({ours.split('-')[0].upper()}_FLUSH)", ours)
    for label, name in peers:
        row(label, name, ours)
    ceil = min(x for x in [get(disk, 'mb_per_s'), get('net', 'mb_per_s'), float('inf')] if x)
    c = ratio(get(ours, 'mb_per_s'), ceil if ceil != float('inf') else None)
    print(f"ShardMQ / min({disk}, net) = {fmt(c, '.3f')} (MB/s)")
    return c


sync_peers = [("Redis Streams, appendfsync always", 'sync-redis')]
if nats_has_sync:
    sync_peers.append(("NATS JetStream, sync_interval always", 'sync-nats'))
c_sync = table("== acknowledged after a flush ==", 'sync-shardmq', sync_peers, 'disk-sync',
               "1 KiB, 64 producers x 1 in flight; ceiling disk-sync = 64 KiB write + fdatasync")
if not nats_has_sync:
    print(f"NATS JetStream: not in this class: nats-server {nats_version} has no per-write sync "
          "(sync_interval arrived in 2.10; 2.9 syncs its file store on a timer)")
r = ratio(get('sync-shardmq', 'msgs_per_s'), get('sync-redis', 'msgs_per_s'))
print(f"ShardMQ SYNC / Redis always = {fmt(r, '.2f')} x msgs/s  ({verdict(r, floor=1.0, aim=2.0)})")

c_async = table("== acknowledged before a flush ==", 'async-shardmq',
                [("Redis Streams, appendfsync everysec", 'async-redis'),
                 ("NATS JetStream (file store, default)", 'async-nats')], 'disk',
                "1 KiB, 2 producers x 512 in flight (as fast as possible)")
print(f"ShardMQ ASYNC / min(disk, net)  {verdict(c_async, floor=0.5, aim=0.8)}")
best = max([x for x in [get('async-redis', 'msgs_per_s'), get('async-nats', 'msgs_per_s')] if x],
           default=None)
r = ratio(get('async-shardmq', 'msgs_per_s'), best)
print(f"ShardMQ ASYNC / best peer = {fmt(r, '.2f')} x msgs/s  ({verdict(r, floor=2)})")

print("\n== consume: a consumer group reading back what was sent first (1 KiB) ==")
print(f"{'system':<34} {'msgs/s':>10} {'MB/s':>8} {'consumers':>9} {'sent msgs/s':>11} {'ours/this':>9} "
      f"{'srv us/m':>8} {'gen us/m':>8}")
for label, name in [("ShardMQ (pull consumers)", 'consume-shardmq'),
                    ("Redis Streams (XREADGROUP + XACK)", 'consume-redis'),
                    ("NATS JetStream (durable pull)", 'consume-nats')]:
    r = runs.get(name)
    if r is None:
        print(f"{label:<34} {'(not run)':>10}")
        continue
    mine = ratio(get('consume-shardmq', 'msgs_per_s'), r['msgs_per_s']) if name != 'consume-shardmq' else None
    print(f"{label:<34} {r['msgs_per_s']:>10.0f} {r['mb_per_s']:>8.1f} {r['params'].get('consumers', 0):>9} "
          f"{r['params'].get('prefill_msgs_per_s', 0):>11.0f} {fmt(mine, '>9.2f')} {cpu(r)}")

ceil = min(x for x in [get('disk', 'mb_per_s'), get('net', 'mb_per_s'), float('inf')] if x)
ceil = None if ceil == float('inf') else ceil
r = ratio(get('consume-shardmq', 'mb_per_s'), ceil)
print(f"ShardMQ read back / min(disk, net) = {fmt(r, '.3f')} (MB/s)  ({verdict(r, floor=0.3, aim=0.6)})")

print("\n== 64 x 1 and one sender against Redis ==")
print(HEAD)
for label, name, ours in [
        ("ShardMQ ASYNC, 64 x 1", 'async-shardmq-64x1', None),
        ("ShardMQ ASYNC appended, 64 x 1", 'async-shardmq-64x1-appended', None),
        ("Redis everysec, 64 x 1", 'async-redis-64x1', 'async-shardmq-64x1'),
        ("ShardMQ ASYNC, 1 x 1", 'async-shardmq-1x1', None),
        ("ShardMQ ASYNC appended, 1 x 1", 'async-shardmq-1x1-appended', None),
        ("Redis everysec, 1 x 1", 'async-redis-1x1', 'async-shardmq-1x1'),
        ("ShardMQ SYNC, 1 x 1", 'sync-shardmq-1x1', None),
        ("Redis always, 1 x 1", 'sync-redis-1x1', 'sync-shardmq-1x1')]:
    row(label, name, ours)
for ack, suffix in [('written', ''), ('appended', '-appended')]:
    ours = 'async-shardmq-64x1' + suffix
    r = ratio(get(ours, 'server_cpu_us_per_msg'), get('async-redis-64x1', 'server_cpu_us_per_msg'))
    print(f"ASYNC ({ack}) 64 x 1, server CPU per message ShardMQ / Redis = {fmt(r, '.2f')}  "
          f"({verdict(r, floor=1.0, aim=0.5, below=True)})")
    r = ratio(get(ours, 'msgs_per_s'), get('async-redis-64x1', 'msgs_per_s'))
    print(f"ASYNC ({ack}) 64 x 1, msgs/s ShardMQ / Redis = {fmt(r, '.2f')}  "
          f"({verdict(r, floor=1.0, aim=2.0)})")
    ours = 'async-shardmq-1x1' + suffix
    r = ratio(get(ours, 'msgs_per_s'), get('async-redis-1x1', 'msgs_per_s'))
    print(f"one sender ASYNC ({ack}) / Redis everysec = {fmt(r, '.2f')} x msgs/s  "
          f"({verdict(r, floor=1.0)}); p50 {fmt(get(ours, 'p50_us'), '')} us "
          f"({verdict(get(ours, 'p50_us'), aim=300, below=True)})")
r = ratio(get('sync-shardmq-1x1', 'msgs_per_s'), get('sync-redis-1x1', 'msgs_per_s'))
print(f"one sender SYNC / Redis always = {fmt(r, '.2f')} x msgs/s  ({verdict(r, floor=1.0)})")
for name in ['async-shardmq-64x1', 'async-shardmq']:
    g, s = get(name, 'bench_cpu_us_per_msg'), get(name, 'server_cpu_us_per_msg')
    r = ratio(g, s)
    print(f"load generator / broker CPU per message, {name}: {fmt(r, '.2f')}  "
          f"({verdict(r, floor=1.0, aim=0.5, below=True)})")
r = ratio(get('batch-1k', 'mb_per_s'), ceil)
print(f"1 KiB in batches of 1 000: {fmt(get('batch-1k', 'msgs_per_s'), '.0f')} msgs/s, "
      f"{fmt(get('batch-1k', 'mb_per_s'), '.1f')} MB/s = {fmt(r, '.3f')} x min(disk, net)  "
      f"({verdict(r, floor=0.5, aim=0.8)}); CPU us/msg server "
      f"{fmt(get('batch-1k', 'server_cpu_us_per_msg'), '.2f')} bench "
      f"{fmt(get('batch-1k', 'bench_cpu_us_per_msg'), '.2f')}")

print("\n== other figures ==")
r = ratio(get('sync-shardmq', 'msgs_per_s'), get('async-shardmq-64x1', 'msgs_per_s'))
print(f"SYNC / ASYNC at 64 x 1 in flight = {fmt(r, '.2f')}  ({verdict(r, aim=0.5)}); "
      f"ASYNC 64x1: {fmt(get('async-shardmq-64x1', 'msgs_per_s'), '.0f')} msgs/s, "
      f"CPU us/msg server {fmt(get('async-shardmq-64x1', 'server_cpu_us_per_msg'), '.2f')} "
      f"bench {fmt(get('async-shardmq-64x1', 'bench_cpu_us_per_msg'), '.2f')}")
e = runs.get('e2e-half')
if e:
    p99, p9999 = e['p99_us'], e['p9999_us']
    print(f"e2e at {e['params'].get('rate') or 0:.0f} msgs/s (half the ASYNC rate): "
          f"p50 {e['p50_us']} us, p99 {p99} us ({verdict(p99, floor=5000, aim=1000, below=True)}), "
          f"p99.99 {p9999} us = {p9999 / max(p99, 1):.1f} x p99 (aim <= 5), lost {e['params'].get('lost')}; "
          f"CPU us/msg server {fmt(e.get('server_cpu_us_per_msg'), '.2f')} "
          f"bench {fmt(e.get('bench_cpu_us_per_msg'), '.2f')}")
r = get('batch-128', 'msgs_per_s')
print(f"128 B in batches of 256: {fmt(r, '.0f')} msgs/s  ({verdict(r, floor=600_000, aim=1_000_000)}); "
      f"CPU us/msg server {fmt(get('batch-128', 'server_cpu_us_per_msg'), '.2f')} "
      f"bench {fmt(get('batch-128', 'bench_cpu_us_per_msg'), '.2f')}")
s1, s2 = get('engine-shards-1', 'msgs_per_s'), get('engine-shards-2', 'msgs_per_s')
r = ratio(s2, s1)
print(f"engine 128 B: --shards 1 {fmt(s1, '.0f')}, --shards 2 {fmt(s2, '.0f')} msgs/s: "
      f"{fmt(r, '.2f')} x  ({verdict(r, floor=1.6, aim=1.9)})")
KEYS = ('msgs_per_s', 'mb_per_s', 'p99_us', 'device_flushes', 'errors',
        'server_cpu_us_per_msg', 'bench_cpu_us_per_msg')
print("\nper run (JSON): " + json.dumps({k: {x: v.get(x) for x in KEYS} for k, v in runs.items()}))
