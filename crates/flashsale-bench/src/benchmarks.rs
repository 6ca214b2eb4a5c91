//! The generated performance report: `scripts/bench-report.sh` runs every
//! benchmark of docs/BENCHMARKS.md in one go and appends each run's JSON
//! summary to a results file (JSON Lines, [`Record`]); this module turns
//! that file into the report — the machine, the date, tables of throughput,
//! ratios and latency percentiles — and splices it into docs/BENCHMARKS.md
//! between [`BEGIN`] and [`END`], leaving the hand-written history below
//! untouched. The plots are [`crate::plots`]'.
//!
//! Nothing here runs a benchmark, so the writer is tested on a fixed results
//! file (`testdata/report-results.jsonl`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::report::Latency;

/// Opens the generated section of docs/BENCHMARKS.md.
pub const BEGIN: &str = "<!-- report:begin -->";
/// Closes it.
pub const END: &str = "<!-- report:end -->";

/// One line of the results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Where, when and how the runs were made (one per file).
    Meta(Meta),
    /// One run of the load tool.
    Run(Run),
}

/// Where, when and how the report was measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// UTC time the report started, `YYYY-MM-DD HH:MM UTC`.
    pub date: String,
    /// The command that produced the report.
    pub command: String,
    /// The commit measured (`git rev-parse --short HEAD`).
    pub commit: String,
    /// True for the short smoke-test floods of `QUICK=1`.
    pub quick: bool,
    /// The durations and sizes used, in a sentence.
    pub method: String,
    /// The machine.
    pub machine: Machine,
}

/// The machine the report ran on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: String,
    /// Cores the processes may use.
    pub cores: usize,
    /// Memory in GiB (`/proc/meminfo`).
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// Operating system (`/etc/os-release`).
    pub os: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `/proc/loadavg` before the first run.
    pub load_before: String,
}

impl Machine {
    /// Reads this machine's description from `/proc`, `/etc/os-release` and
    /// `rustc --version`; what cannot be read is `unknown`.
    pub fn probe() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map_or_else(|| "unknown".to_owned(), |v| v.trim_matches('"').to_owned());
        let rustc =
            std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned());
        let or_unknown = |s: String| {
            let s = s.trim().to_owned();
            if s.is_empty() {
                "unknown".to_owned()
            } else {
                s
            }
        };
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: or_unknown(read("/proc/sys/kernel/osrelease")),
            os,
            rustc,
            load_before: or_unknown(
                read("/proc/loadavg")
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        }
    }
}

/// The benchmarks of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Each design at several concurrencies.
    Sweep,
    /// The sold-out flood in every request shape against `/healthz`.
    Shapes,
    /// Group commit against one commit per order.
    Commit,
    /// One distributed node against three.
    Nodes,
}

/// Which rate a run is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Orders accepted per second.
    Orders,
    /// Requests answered per second.
    Requests,
}

/// One run of the load tool as the results file records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// The benchmark it belongs to.
    pub group: Group,
    /// What ran (`healthz`, `pg-row-lock`, …; see [`label`]).
    pub series: String,
    /// Which round of an alternating benchmark.
    #[serde(default)]
    pub round: u32,
    /// The rate that counts.
    pub measure: Measure,
    /// The load tool's `--json` summary.
    pub summary: Measured,
}

/// The fields of the load tool's JSON summary ([`crate::Summary`]) the
/// report reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    /// Connections (or buyers) at once.
    pub concurrency: u32,
    /// Requests sent.
    pub requests: u64,
    /// Requests per second.
    pub throughput_rps: f64,
    /// Orders accepted.
    pub accepted: u64,
    /// Orders accepted per second.
    pub accepted_per_sec: f64,
    /// Latency percentiles.
    pub latency_ms: Latency,
    /// Every invariant check held.
    pub ok: bool,
    /// CPU µs the measured server (`--server-pid`) used per accepted order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_accept: Option<f64>,
}

/// Runs that ran at once (the nodes of a multi-node run) folded into one:
/// rates and connections add up, latencies are the worst node's.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The benchmark.
    pub group: Group,
    /// What ran.
    pub series: String,
    /// Which round.
    pub round: u32,
    /// Connections in all.
    pub concurrency: u32,
    /// Runs folded in (nodes).
    pub parts: u32,
    /// The rate that counts, per second.
    pub rate: f64,
    /// Latency percentiles, ms.
    pub latency: Latency,
    /// Every check of every part held.
    pub ok: bool,
    /// Server CPU µs per accepted order, where the run measured it (the
    /// highest of the parts).
    pub cpu_us_per_accept: Option<f64>,
}

/// A parsed results file.
#[derive(Debug, Clone)]
pub struct Results {
    /// The file's meta record.
    pub meta: Meta,
    /// Its runs, folded into points in file order.
    pub points: Vec<Point>,
}

impl Results {
    /// Parses a results file (JSON Lines; blank lines are skipped).
    ///
    /// # Errors
    /// A line that is not a record, or a file without its meta record.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut meta = None;
        let mut runs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(line)
                .with_context(|| format!("line {} of the results is not a record", n + 1))?;
            match record {
                Record::Meta(m) => meta = Some(m),
                Record::Run(r) => runs.push(r),
            }
        }
        let Some(meta) = meta else {
            bail!("the results have no meta record");
        };
        Ok(Self {
            meta,
            points: fold(&runs),
        })
    }

    /// Reads and parses a results file.
    ///
    /// # Errors
    /// As [`Results::parse`], or when the file cannot be read.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the results {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The points of one benchmark and series.
    pub fn series(&self, group: Group, series: &str) -> impl Iterator<Item = &Point> {
        let series = series.to_owned();
        self.points
            .iter()
            .filter(move |p| p.group == group && p.series == series)
    }

    /// The series of a benchmark, in the order they first appear.
    pub fn series_names(&self, group: Group) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for p in self.points.iter().filter(|p| p.group == group) {
            if !names.contains(&p.series) {
                names.push(p.series.clone());
            }
        }
        names
    }

    /// The concurrencies of the sweep, ascending.
    pub fn sweep_concurrencies(&self) -> Vec<u32> {
        let set: BTreeSet<u32> = self
            .points
            .iter()
            .filter(|p| p.group == Group::Sweep)
            .map(|p| p.concurrency)
            .collect();
        set.into_iter().collect()
    }

    /// The sweep's point of `series` at `concurrency`.
    pub fn at(&self, series: &str, concurrency: u32) -> Option<&Point> {
        self.series(Group::Sweep, series)
            .find(|p| p.concurrency == concurrency)
    }

    /// The round with the median rate of a series (the lower middle one
    /// for an even count).
    pub fn median(&self, group: Group, series: &str) -> Option<&Point> {
        let mut points: Vec<&Point> = self.series(group, series).collect();
        points.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        let middle = points.len().checked_sub(1)? / 2;
        points.get(middle).copied()
    }
}

/// Folds runs with the same benchmark, series, round and per-run
/// concurrency (the nodes of one multi-node run) into points.
fn fold(runs: &[Run]) -> Vec<Point> {
    let mut points: Vec<Point> = Vec::new();
    let mut index: BTreeMap<(Group, String, u32, u32), usize> = BTreeMap::new();
    for run in runs {
        let s = &run.summary;
        let rate = match run.measure {
            Measure::Orders => s.accepted_per_sec,
            Measure::Requests => s.throughput_rps,
        };
        let key = (run.group, run.series.clone(), run.round, s.concurrency);
        if let Some(&i) = index.get(&key) {
            let p = &mut points[i];
            p.concurrency += s.concurrency;
            p.parts += 1;
            p.rate += rate;
            p.ok &= s.ok;
            p.cpu_us_per_accept = match (p.cpu_us_per_accept, s.server_cpu_us_per_accept) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let (a, b) = (&mut p.latency, s.latency_ms);
            a.p50 = a.p50.max(b.p50);
            a.p90 = a.p90.max(b.p90);
            a.p99 = a.p99.max(b.p99);
            a.p999 = a.p999.max(b.p999);
            a.max = a.max.max(b.max);
            a.mean = a.mean.max(b.mean);
        } else {
            index.insert(key, points.len());
            points.push(Point {
                group: run.group,
                series: run.series.clone(),
                round: run.round,
                concurrency: s.concurrency,
                parts: 1,
                rate,
                latency: s.latency_ms,
                ok: s.ok,
                cpu_us_per_accept: s.server_cpu_us_per_accept,
            });
        }
    }
    points
}

/// What a series is, for people.
pub fn label(series: &str) -> &str {
    match series {
        "healthz" => "Flashsale `GET /healthz` (the ceiling)",
        "sold-out" => "Flashsale sold-out purchase (`409`)",
        "accept-embedded" => "Flashsale accept, embedded (fsync'd `201`)",
        "accept-distributed" => "Flashsale accept, distributed, over HTTP",
        "classic-http" => {
            "classic reference server over HTTP (`flashsale-classic`: EVALSHA + confirmed publish each)"
        }
        "redis-coalesced" => "Flashsale's distributed step, no HTTP (`redis-coalesced`)",
        "redis-evalsha" => "baseline `redis-evalsha` (EVALSHA + confirmed publish each)",
        "pg-row-lock" => "baseline `pg-row-lock` (PostgreSQL row lock each)",
        "bare" => "sold-out, no body",
        "json" => "sold-out, `{\"quantity\":1}` + JSON type",
        "keyed" => "sold-out, JSON + fresh `Idempotency-Key`",
        "replayed" => "sold-out, JSON + replayed `Idempotency-Key`",
        "group-commit" => "accept, group commit (default)",
        "commit-per-order" => "accept, one commit per order (`--commit-batch 1`)",
        "sold-out-1-node" => "sold-out flood, 1 node",
        "sold-out-3-nodes" => "sold-out flood, 3 nodes at once",
        "accept-1-node" => "accept, 1 node",
        "accept-3-nodes" => "accept, 3 nodes at once (a sale each)",
        other => other,
    }
}

/// The same label without Markdown, for plot legends.
pub fn plain_label(series: &str) -> String {
    label(series).replace('`', "")
}

/// The ratios of the report: (numerator, denominator, what it says).
const RATIOS: &[(&str, &str, &str)] = &[
    (
        "accept-embedded",
        "pg-row-lock",
        "accept, embedded / `pg-row-lock`",
    ),
    (
        "accept-distributed",
        "pg-row-lock",
        "accept, distributed / `pg-row-lock`",
    ),
    (
        "accept-distributed",
        "classic-http",
        "accept, distributed / the classic server (both over HTTP)",
    ),
    (
        "accept-distributed",
        "redis-evalsha",
        "accept, distributed (HTTP) / `redis-evalsha` (no HTTP)",
    ),
    (
        "classic-http",
        "redis-evalsha",
        "the classic server over HTTP / `redis-evalsha` (what HTTP, tokens and JSON cost it)",
    ),
    (
        "redis-coalesced",
        "redis-evalsha",
        "`redis-coalesced` / `redis-evalsha` (same loop, no HTTP)",
    ),
    ("sold-out", "healthz", "sold-out purchase / `GET /healthz`"),
    (
        "accept-embedded",
        "sold-out",
        "accept, embedded / sold-out purchase",
    ),
];

/// The plots the report links, relative to docs/ (the plots module writes
/// them under the same names).
pub const THROUGHPUT_PNG: &str = "plots/throughput.png";
/// p99 latency by concurrency.
pub const LATENCY_PNG: &str = "plots/latency-p99.png";
/// The percentile curves at one concurrency.
pub const PERCENTILES_PNG: &str = "plots/latency-percentiles.png";

/// The concurrency the percentile plot and the shapes use: 64 where the
/// sweep has it, else its lowest.
pub fn reference_concurrency(results: &Results) -> Option<u32> {
    let all = results.sweep_concurrencies();
    all.iter()
        .copied()
        .find(|&c| c == 64)
        .or_else(|| all.first().copied())
}

/// The generated section, markers included.
pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    let m = &results.meta;
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(
        out,
        "<!-- Generated by `{}` (crates/flashsale-bench/src/benchmarks.rs): rerun it rather \
         than editing this section; the hand-written history follows it. -->",
        m.command
    );
    let _ = writeln!(out, "## Latest report (generated)\n");
    if m.quick {
        let _ = writeln!(
            out,
            "> **Quick mode** (`QUICK=1`): floods of a second or so, for smoke-testing the \
             report; the figures below are not measurements to quote.\n"
        );
    }
    let _ = writeln!(
        out,
        "Measured {} on commit `{}` with `{}`, one benchmark at a time on this machine, \
         the load tool on the same cores as the servers: compare the **ratios** of one run, \
         not absolute figures across machines. {}\n",
        m.date, m.commit, m.command, m.method
    );
    let mc = &m.machine;
    let _ = writeln!(out, "| machine | |\n| --- | --- |");
    let _ = writeln!(out, "| CPU | {} |", mc.cpu);
    let _ = writeln!(
        out,
        "| cores | {} (server and load tool share them) |",
        mc.cores
    );
    let _ = writeln!(out, "| memory | {:.1} GiB |", mc.memory_gib);
    let _ = writeln!(out, "| kernel | {} |", mc.kernel);
    let _ = writeln!(out, "| OS | {} |", mc.os);
    let _ = writeln!(out, "| toolchain | {}, release profile |", mc.rustc);
    let _ = writeln!(out, "| load average before | {} |", mc.load_before);
    let _ = writeln!(out, "| date | {} |\n", m.date);

    sweep_tables(&mut out, results);
    shapes_table(&mut out, results);
    commit_table(&mut out, results);
    nodes_table(&mut out, results);
    invariants(&mut out, results);
    let _ = writeln!(out, "{END}");
    out
}

fn sweep_tables(out: &mut String, results: &Results) {
    let concurrencies = results.sweep_concurrencies();
    let names = results.series_names(Group::Sweep);
    if concurrencies.is_empty() {
        return;
    }
    let header = |out: &mut String, first: &str| {
        let _ = write!(out, "| {first} |");
        for c in &concurrencies {
            let _ = write!(out, " {c} |");
        }
        let _ = write!(out, "\n| --- |");
        for _ in &concurrencies {
            let _ = write!(out, " ---: |");
        }
        out.push('\n');
    };

    let _ = writeln!(out, "### Throughput by concurrency\n");
    let _ = writeln!(
        out,
        "![Throughput by concurrency: Flashsale and the baselines]({THROUGHPUT_PNG})\n"
    );
    let _ = writeln!(
        out,
        "Requests/s for `/healthz` and the sold-out flood, accepted orders/s for the \
         accept paths and the baselines; columns are connections (for the baselines, \
         buyers at once; `pg-row-lock` queues them on at most 64 database connections).\n"
    );
    header(out, "run");
    for name in &names {
        let _ = write!(out, "| {} |", label(name));
        for &c in &concurrencies {
            match results.at(name, c) {
                Some(p) => {
                    let _ = write!(out, " {}{} |", thousands(p.rate), broken(p));
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }

    let ratios: Vec<_> = RATIOS
        .iter()
        .filter(|(a, b, _)| names.iter().any(|n| n == a) && names.iter().any(|n| n == b))
        .collect();
    if !ratios.is_empty() {
        let _ = writeln!(out, "\n### Ratios, same concurrency, same run\n");
        header(out, "ratio");
        for (a, b, text) in ratios {
            let _ = write!(out, "| {text} |");
            for &c in &concurrencies {
                match (results.at(a, c), results.at(b, c)) {
                    (Some(x), Some(y)) if y.rate > 0.0 => {
                        let _ = write!(out, " {} |", ratio(x.rate / y.rate));
                    }
                    _ => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
    }

    let _ = writeln!(
        out,
        "\n### Latency by concurrency (ms, p50 / p99 / p99.9)\n"
    );
    let _ = writeln!(
        out,
        "![p99 latency by concurrency]({LATENCY_PNG})\n![Latency percentiles]({PERCENTILES_PNG})\n"
    );
    header(out, "run");
    for name in &names {
        let _ = write!(out, "| {} |", label(name));
        for &c in &concurrencies {
            match results.at(name, c) {
                Some(p) => {
                    let l = p.latency;
                    let _ = write!(out, " {} / {} / {} |", ms(l.p50), ms(l.p99), ms(l.p999));
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
    cpu_table(out, results, &names, &concurrencies);
}

/// Server CPU per accepted order, for the sweep's runs that measured it.
fn cpu_table(out: &mut String, results: &Results, names: &[String], concurrencies: &[u32]) {
    let measured: Vec<&String> = names
        .iter()
        .filter(|n| {
            results
                .series(Group::Sweep, n)
                .any(|p| p.cpu_us_per_accept.is_some())
        })
        .collect();
    if measured.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### Server CPU per accepted purchase (µs)\n\n\
         The server process's user + system CPU time (`/proc/PID/stat`) over the flood, \
         divided by the orders it accepted (`flashsale bench --server-pid`). The sweep's \
         distributed node runs every role, its order writer included; \
         `scripts/bench-distributed.sh` measures an API-only node (`--roles api`).\n"
    );
    let _ = write!(out, "| run |");
    for c in concurrencies {
        let _ = write!(out, " {c} |");
    }
    let _ = write!(out, "\n| --- |");
    for _ in concurrencies {
        let _ = write!(out, " ---: |");
    }
    out.push('\n');
    for name in measured {
        let _ = write!(out, "| {} |", label(name));
        for &c in concurrencies {
            match results.at(name, c).and_then(|p| p.cpu_us_per_accept) {
                Some(us) => {
                    let _ = write!(out, " {us:.1} |");
                }
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

fn shapes_table(out: &mut String, results: &Results) {
    let names = results.series_names(Group::Shapes);
    let Some(health) = results.median(Group::Shapes, "healthz") else {
        return;
    };
    let rounds = results.series(Group::Shapes, "healthz").count();
    let _ = writeln!(
        out,
        "### Sold-out flood by request shape against `GET /healthz`\n\n\
         The same embedded server, {} connections, {rounds} round(s) alternating every \
         shape; the median round is compared.\n",
        health.concurrency
    );
    let _ = writeln!(
        out,
        "| run | rounds /s | median /s | / healthz | p50 ms | p99 ms | p99.9 ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for name in &names {
        let Some(med) = results.median(Group::Shapes, name) else {
            continue;
        };
        let rounds: Vec<String> = results
            .series(Group::Shapes, name)
            .map(|p| thousands(p.rate))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {}{} | {} | {} | {} | {} |",
            label(name),
            rounds.join(" "),
            thousands(med.rate),
            broken(med),
            percent(med.rate / health.rate),
            ms(med.latency.p50),
            ms(med.latency.p99),
            ms(med.latency.p999)
        );
    }
    out.push('\n');
}

fn commit_table(out: &mut String, results: &Results) {
    let group = results.median(Group::Commit, "group-commit");
    let single = results.median(Group::Commit, "commit-per-order");
    if group.is_none() && single.is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "### Embedded accept path: group commit vs one commit per order\n\n\
         | run | connections | orders/s | p50 ms | p99 ms | p99.9 ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for p in [group, single].into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {}{} | {} | {} | {} |",
            label(&p.series),
            p.concurrency,
            thousands(p.rate),
            broken(p),
            ms(p.latency.p50),
            ms(p.latency.p99),
            ms(p.latency.p999)
        );
    }
    if let (Some(g), Some(s)) = (group, single) {
        if s.rate > 0.0 {
            let _ = writeln!(
                out,
                "\nGroup commit / one commit per order = **{}**.",
                ratio(g.rate / s.rate)
            );
        }
    }
    out.push('\n');
}

fn nodes_table(out: &mut String, results: &Results) {
    let names = results.series_names(Group::Nodes);
    if names.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "### Distributed mode: one node against three\n\n\
         Nodes on this machine sharing Redis, RabbitMQ and PostgreSQL; the three-node \
         runs flood every node at once with a third of the connections each (rates \
         summed, latency of the slowest node).\n\n\
         | run | connections | rate /s | p50 ms | p99 ms | p99.9 ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for name in &names {
        if let Some(p) = results.median(Group::Nodes, name) {
            let _ = writeln!(
                out,
                "| {} | {} | {}{} | {} | {} | {} |",
                label(name),
                p.concurrency,
                thousands(p.rate),
                broken(p),
                ms(p.latency.p50),
                ms(p.latency.p99),
                ms(p.latency.p999)
            );
        }
    }
    for (three, one, text) in [
        ("sold-out-3-nodes", "sold-out-1-node", "sold-out flood"),
        ("accept-3-nodes", "accept-1-node", "accept"),
    ] {
        if let (Some(a), Some(b)) = (
            results.median(Group::Nodes, three),
            results.median(Group::Nodes, one),
        ) {
            if b.rate > 0.0 {
                let _ = writeln!(
                    out,
                    "\n{text}: 3 nodes / 1 node = **{}**.",
                    ratio(a.rate / b.rate)
                );
            }
        }
    }
    out.push('\n');
}

fn invariants(out: &mut String, results: &Results) {
    let failed: Vec<&Point> = results.points.iter().filter(|p| !p.ok).collect();
    let _ = writeln!(out, "### Invariants\n");
    if failed.is_empty() {
        let _ = writeln!(
            out,
            "Every check of all {} runs held (no oversell, per-user limits, every accepted \
             order unique and stored; the baselines' stores agree with what they sold).\n",
            results.points.len()
        );
    } else {
        let _ = writeln!(
            out,
            "**{} of {} runs broke a check** (marked † above):\n",
            failed.len(),
            results.points.len()
        );
        for p in failed {
            let _ = writeln!(
                out,
                "- {:?} {} at {} connections, round {}",
                p.group,
                label(&p.series),
                p.concurrency,
                p.round
            );
        }
        out.push('\n');
    }
}

/// Replaces the generated section of `doc` with `section`; a document
/// without one gets it before its first `## ` heading (after the title and
/// its introduction), or at the end. Only markers alone on their line
/// count, so prose may name them.
///
/// # Errors
/// A document with a begin marker but no end marker after it.
pub fn splice(doc: &str, section: &str) -> anyhow::Result<String> {
    let section = section.trim_end();
    if let Some((start, _)) = marker_line(doc, BEGIN, 0) {
        let Some((_, end)) = marker_line(doc, END, start) else {
            bail!("docs/BENCHMARKS.md has {BEGIN} without {END}");
        };
        return Ok(format!("{}{section}{}", &doc[..start], &doc[end..]));
    }
    let at = doc
        .match_indices("\n## ")
        .next()
        .map_or(doc.len(), |(i, _)| i + 1);
    let (head, tail) = doc.split_at(at);
    let head = head.trim_end();
    Ok(if tail.is_empty() {
        format!("{head}\n\n{section}\n")
    } else {
        format!("{head}\n\n{section}\n\n{tail}")
    })
}

/// Where `marker` stands alone on a line at or after `from`: its start and
/// end offsets.
fn marker_line(doc: &str, marker: &str, from: usize) -> Option<(usize, usize)> {
    let mut pos = from;
    while let Some(i) = doc.get(pos..)?.find(marker) {
        let start = pos + i;
        let end = start + marker.len();
        let alone_before = start == 0 || doc[..start].ends_with('\n');
        let rest = &doc[end..];
        let alone_after = rest.is_empty() || rest.starts_with('\n') || rest.starts_with("\r\n");
        if alone_before && alone_after {
            return Some((start, end));
        }
        pos = end;
    }
    None
}

/// Writes the generated section into the document at `doc` and the plots
/// into `plots`.
///
/// # Errors
/// When the document cannot be read or written, or a plot cannot be drawn.
pub fn publish(results: &Results, doc: &Path, plots: &Path) -> anyhow::Result<Vec<String>> {
    let written = crate::plots::draw_all(results, plots)?;
    let text = match std::fs::read_to_string(doc) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", doc.display())),
    };
    let updated = splice(&text, &markdown(results))?;
    std::fs::write(doc, updated).with_context(|| format!("writing {}", doc.display()))?;
    Ok(written)
}

/// `48,700`.
fn thousands(rate: f64) -> String {
    let n = rate.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// `22.9×` or `1.35×`.
fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

/// `94.9 %`.
fn percent(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

/// Milliseconds, two decimals below 10 ms, one above.
fn ms(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A mark after the figure of a run whose checks did not all hold.
fn broken(p: &Point) -> &'static str {
    if p.ok {
        ""
    } else {
        " †"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../testdata/report-results.jsonl");

    fn results() -> Results {
        Results::parse(FIXTURE).unwrap()
    }

    #[test]
    fn the_fixture_parses_and_nodes_fold() {
        let r = results();
        assert_eq!(r.meta.machine.cores, 2);
        assert_eq!(r.sweep_concurrencies(), vec![16, 64, 256, 1024]);
        let three = r.median(Group::Nodes, "sold-out-3-nodes").unwrap();
        assert_eq!((three.parts, three.concurrency), (3, 63));
        assert!((three.rate - 60_000.0).abs() < 1e-6, "{three:?}");
        assert!(
            (three.latency.p99 - 4.0).abs() < 1e-9,
            "the slowest node's p99"
        );
        // Orders/s where the run says so, requests/s otherwise.
        assert!((r.at("pg-row-lock", 64).unwrap().rate - 1_000.0).abs() < 1e-6);
        assert!((r.at("healthz", 64).unwrap().rate - 50_000.0).abs() < 1e-6);
    }

    #[test]
    fn medians_pick_the_middle_round() {
        let r = results();
        let h = r.median(Group::Shapes, "healthz").unwrap();
        assert!((h.rate - 48_000.0).abs() < 1e-6, "{h:?}");
        assert_eq!(h.round, 2);
    }

    #[test]
    fn the_markdown_has_tables_ratios_and_the_machine() {
        let md = markdown(&results());
        assert!(
            md.starts_with(BEGIN) && md.trim_end().ends_with(END),
            "{md}"
        );
        assert!(md.contains("| CPU | Test CPU @ 2.00GHz |"), "{md}");
        assert!(md.contains("| cores | 2 "), "{md}");
        assert!(md.contains("rustc 1.95.0"), "{md}");
        assert!(md.contains("2026-12-02 06:00 UTC"), "{md}");
        assert!(md.contains("`./scripts/bench-report.sh`"), "{md}");
        assert!(
            md.contains("| run | 16 | 64 | 256 | 1024 |\n| --- | ---: | ---: | ---: | ---: |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| Flashsale `GET /healthz` (the ceiling) | 40,000 | 50,000 | 45,000 | 30,000 |"
            ),
            "{md}"
        );
        // 25,000 embedded orders/s against 1,000 row-locked ones at 64.
        assert!(
            md.contains("| accept, embedded / `pg-row-lock` | 20.0× | 25.0× |"),
            "{md}"
        );
        assert!(
            md.contains("| `redis-coalesced` / `redis-evalsha` (same loop, no HTTP) | 1.50× | 2.00× | 3.00× | 4.00× |"),
            "{md}"
        );
        assert!(
            md.contains("| Flashsale `GET /healthz` (the ceiling) | 0.80 / 2.00 / 5.00 |"),
            "{md}"
        );
        // Shapes: the median healthz round is 48,000; bare's median 45,600.
        assert!(
            md.contains("| sold-out, no body | 45,000 45,600 46,000 | 45,600 | 95.0 % |"),
            "{md}"
        );
        assert!(
            md.contains("Group commit / one commit per order = **8.00×**"),
            "{md}"
        );
        assert!(
            md.contains("sold-out flood: 3 nodes / 1 node = **1.20×**"),
            "{md}"
        );
        // The fair peer: Flashsale against the classic server, both over HTTP.
        assert!(
            md.contains(
                "| accept, distributed / the classic server (both over HTTP) | 1.50× | 1.60× | 1.50× | 1.25× |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| classic reference server over HTTP (`flashsale-classic`"),
            "{md}"
        );
        assert!(
            md.contains("### Server CPU per accepted purchase (µs)"),
            "{md}"
        );
        assert!(
            md.contains("| Flashsale accept, distributed, over HTTP | – | – | 30.0 | – |"),
            "{md}"
        );
        assert!(md.contains(" | 60.0 | 60.0 | 60.0 | 60.0 |"), "{md}");
        assert!(md.contains("**1 of "), "the broken run is called out: {md}");
        assert!(md.contains(" †"), "{md}");
        assert!(md.contains(THROUGHPUT_PNG) && md.contains(PERCENTILES_PNG));
    }

    #[test]
    fn splicing_replaces_only_the_generated_section() {
        let doc = "# Benchmarks\n\nIntro.\n\n## History\n\nOld figures.\n";
        let first = splice(doc, &format!("{BEGIN}\nnew\n{END}\n")).unwrap();
        assert_eq!(
            first,
            format!(
                "# Benchmarks\n\nIntro.\n\n{BEGIN}\nnew\n{END}\n\n## History\n\nOld figures.\n"
            )
        );
        let second = splice(&first, &format!("{BEGIN}\nnewer\n{END}")).unwrap();
        assert_eq!(
            second,
            format!(
                "# Benchmarks\n\nIntro.\n\n{BEGIN}\nnewer\n{END}\n\n## History\n\nOld figures.\n"
            )
        );
        assert!(splice(&format!("{BEGIN}\nb"), "x").is_err());
        // Markers named in prose are not the section.
        let prose = format!("# B\n\nThe part between `{BEGIN}` and `{END}`.\n\n## H\n");
        assert_eq!(
            splice(&prose, "S").unwrap(),
            format!("# B\n\nThe part between `{BEGIN}` and `{END}`.\n\nS\n\n## H\n")
        );
        assert_eq!(splice("# T\n", "S").unwrap(), "# T\n\nS\n");
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(thousands(48_698.4), "48,698");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(ratio(22.94), "22.9×");
        assert_eq!(ratio(1.349), "1.35×");
        assert_eq!(percent(0.9487), "94.9 %");
        assert_eq!(ms(2.744), "2.74");
        assert_eq!(ms(35.94), "35.9");
    }

    #[test]
    fn a_file_without_meta_or_with_garbage_is_refused() {
        assert!(Results::parse("").is_err());
        assert!(Results::parse("{\"kind\":\"run\"}").is_err());
    }

    #[test]
    fn publishing_writes_the_doc_and_non_empty_pngs() {
        let dir = std::env::temp_dir().join(format!("fs-report-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let doc = dir.join("BENCHMARKS.md");
        std::fs::write(&doc, "# Benchmarks\n\nIntro.\n\n## History\n\nKept.\n").unwrap();
        let written = publish(&results(), &doc, &dir.join("plots")).unwrap();
        assert_eq!(written.len(), 3, "{written:?}");
        for name in [THROUGHPUT_PNG, LATENCY_PNG, PERCENTILES_PNG] {
            let png = std::fs::read(dir.join(name)).unwrap();
            assert!(png.len() > 1000, "{name} is {} bytes", png.len());
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name} is a PNG");
        }
        let text = std::fs::read_to_string(&doc).unwrap();
        assert!(text.contains("## History\n\nKept."), "{text}");
        assert!(text.contains("### Throughput by concurrency"), "{text}");
        // Publishing again replaces the section instead of adding one.
        publish(&results(), &doc, &dir.join("plots")).unwrap();
        let again = std::fs::read_to_string(&doc).unwrap();
        assert_eq!(again.matches(BEGIN).count(), 1);
        assert_eq!(again, text);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
