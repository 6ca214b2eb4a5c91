#!/usr/bin/env bash
# The fault drills, one after another, then docs/RELIABILITY.md from what
# they measured. Each drill floods a sale, injects its fault, and checks in
# the database itself that no unit is oversold, nobody holds more than the
# limit, every 201 is stored exactly once and leaked stock came back
# (tests/api/faults.rs, durability.rs, distributed.rs; tests/api/kit/drill.rs).
#
#   ./scripts/drills.sh
#
# The drills stop the machine's RabbitMQ, PostgreSQL and Redis (each is
# started again) and mount a small tmpfs (root): run it alone. CI runs the
# same tests in scripts/test.sh's serial phase.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
OUT="$TARGET/drills"
rm -rf "$OUT"
mkdir -p "$OUT"
./scripts/services.sh check postgres redis rabbitmq
DRILLS='test(/^faults::/) | test(=durability::kill_9_mid_flood_loses_no_accepted_order)'
DRILLS="$DRILLS | test(=distributed::kill_9_of_a_node_mid_flood_loses_no_accepted_order_and_oversells_nothing)"
status=0
FLASHSALE_DRILL_DIR="$PWD/$OUT" cargo nextest run --workspace --no-fail-fast -j 1 -E "$DRILLS" || status=$?
./scripts/services.sh check postgres redis rabbitmq
python3 - "$OUT" docs/RELIABILITY.md "$status" <<'PY'
import json, os, pathlib, platform, subprocess, sys, datetime
out, doc, status = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
order = ["node_killed_embedded", "disk_full_embedded", "node_killed_distributed",
         "writer_killed_with_unacked", "redis_stopped_10_s", "rabbitmq_stopped_10_s",
         "postgres_stopped_10_s"]
reports = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
missing = [d for d in order if d not in reports]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
def ms(v):
    return "—" if v is None else (f"{v/1000:.1f} s" if v >= 1000 else f"{v} ms")
lines = [
    "# Reliability: the fault drills",
    "",
    "<!-- Written by ./scripts/drills.sh; edit the script, not this file. -->",
    "",
    f"Run `./scripts/drills.sh` on {now}: {os.cpu_count()} × {cpu}, Linux {platform.release()},",
    "the machine's own PostgreSQL, Redis and RabbitMQ. Each drill floods one sale (steady buyers,",
    "one unit each), injects its fault, ends the fault, and then reads **the database itself** (the",
    "PostgreSQL schema, or the embedded store's SQLite file) to check the promises: no unit oversold,",
    "nobody over the per-user limit, every `201` stored exactly once, and the stock's count of sold",
    "units equal to the units the database holds (stock taken for an order that was never stored has",
    "come back). A drill that breaks a promise fails — its row is then missing here and the script",
    "exits non-zero.",
    "",
    "| Fault | Mode | Accepted (`201`) | Accepted during the fault | Refused during it (`503` / no answer) | Time to recover | Stored | Lost | Stored twice | Oversold | Over the limit | Leaked units |",
    "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
]
for d in order + sorted(set(reports) - set(order)):
    r = reports.get(d)
    if r is None:
        continue
    leaked = "—" if r["leaked"] is None else r["leaked"]
    lines.append(f"| {r['fault']} | {r['mode']} | {r['accepted']} | {r['accepted_during']} | {r['refused_during']} | "
                 f"{ms(r['recovered_ms'])} | {r['stored']} | **{r['lost']}** | {r['duplicated']} | **{r['oversold']}** | "
                 f"{r['over_limit']} | {leaked} |")
lines += [
    "",
    "How to read it:",
    "",
    "- *Stored* can exceed *Accepted*: an order stored whose `201` never reached the buyer (the",
    "  connection died with the node) is kept — the buyer sees it when they look — and counts against",
    "  the stock; what may never happen is the reverse (*Lost*).",
    "- A fault lasts from its stop command's return to the service answering again (the disk: from",
    "  full to the filler's removal). *Time to recover*: from the end of the fault to the first `201`",
    "  after it; for a killed node, from the kill to the restarted node serving",
    "  (embedded) or from the end of the flood to every `201` stored and Redis agreeing with the",
    "  database (distributed: the survivors' writers and relays take over the victim's work); for the",
    "  killed writer, from the database's release to every `201` stored. PostgreSQL stopped shows no",
    "  time: purchases never needed the database, sales went on through the outage. Redis back",
    "  empty takes longest by design: a node re-seeds a lost sale only after `RESEED_SETTLE` (6 s,",
    "  longer than a publish may wait for its confirm) and a second of a still queue and database.",
    "- Answers are counted by when they arrived: a few purchases decided just before the fault",
    "  began are answered just after, and count as *accepted during* it (each is stored).",
    "- *Refused during the fault*: while Redis or RabbitMQ is down a purchase cannot be decided or",
    "  handed off durably, so it is answered `503` and takes nothing; with the data disk full the",
    "  embedded store cannot commit, so the orders of the failed group commit are refused and their",
    "  units returned (the few accepted during it fitted in the WAL's pre-allocated space: they are",
    "  durable). Redis stopped comes back empty (the machine's Redis keeps nothing on disk): the",
    "  nodes re-seed the sale from the database before they sell again.",
    "- The writer drill locks the orders table so both nodes' writers hold deliveries unacked, kills",
    "  one node with `kill -9`, then releases the table: RabbitMQ hands the dead writer's deliveries to",
    "  the survivor, whose idempotent batch insert stores each once.",
    "",
    "Where the drills live: `tests/api/faults.rs` (services stopped, the disk full, the writer),",
    "`tests/api/durability.rs` (`kill_9_mid_flood_loses_no_accepted_order`) and",
    "`tests/api/distributed.rs` (`kill_9_of_a_node_mid_flood_…`); the figures come from",
    "`tests/api/kit/drill.rs`. `scripts/test.sh` runs the same drills in CI, the service faults in",
    "its serial phase. The crash matrix behind them is [CRASH_MATRIX.md](CRASH_MATRIX.md).",
]
if missing:
    lines += ["", f"Not reported in this run (failed or not run): {', '.join(missing)}."]
doc.write_text("\n".join(lines) + "\n")
print(f"drills.sh: wrote {doc} ({len(reports)} drills)")
PY
exit "$status"
