//! A checker's path, told in words: one numbered line per step, saying what
//! the component did and what it left behind (units sold, `201`s, stored
//! orders), then which properties the last state breaks. The tests print
//! it; docs/MODEL.md quotes it.

use std::fmt::Write as _;

use stateright::{Model, Path};

use crate::model::{Action, HandoffModel, Relay, State};

impl HandoffModel {
    /// The safety properties `s` breaks, by name.
    pub fn broken(&self, s: &State) -> Vec<&'static str> {
        self.properties()
            .into_iter()
            .filter(|p| p.expectation == stateright::Expectation::Always)
            .filter(|p| !(p.condition)(self, s))
            .map(|p| p.name)
            .collect()
    }

    /// One step: what `action` did, taking `before` to `after`.
    pub fn describe(&self, before: &State, action: Action, after: &State) -> String {
        let sold = |s: &State| {
            s.master
                .meta
                .map_or("-".to_owned(), |m| m.sold().to_string())
        };
        let tally = format!(
            "[Redis sold {}/{}, 201s {}, stored {}]",
            sold(after),
            self.stock,
            self.accepted_count(after),
            self.stored_count(after)
        );
        let what = match action {
            Action::Decide(o) => format!(
                "{} buys: the master's script accepts it and adds it to the outbox",
                o.name()
            ),
            Action::Confirm(o) => format!(
                "{}: the broker confirms the publish; the buyer is told 201",
                o.name()
            ),
            Action::HandoffFails(o) => format!(
                "{}: no confirm (or the node dies): no 201, the order stays in the outbox",
                o.name()
            ),
            Action::CleanOutbox(o) => {
                format!("{}: the node removes it from the outbox", o.name())
            }
            Action::RelayRead(r, o) => {
                format!("relay {r} reads {} from the master's outbox", o.name())
            }
            Action::RelayConfirmed(r) => format!(
                "relay {r} publishes {}, confirmed, and removes it from the outbox",
                held_by(before, r)
            ),
            Action::RelayUnconfirmed(r) => format!(
                "relay {r} publishes {}: queued, but the confirm is lost",
                held_by(before, r)
            ),
            Action::RelayLost(r) => {
                format!("relay {r}'s publish of {} fails", held_by(before, r))
            }
            Action::Deliver(o) => format!("a writer takes {} from the queue", o.name()),
            Action::Insert(o) => format!("the writer inserts {}", o.name()),
            Action::Ack(o) => format!("the writer acks {}", o.name()),
            Action::Redeliver(o) => format!(
                "the writer holding {} dies; the broker redelivers it",
                o.name()
            ),
            Action::RedisRestart => format!(
                "the Redis master restarts empty (replication id {})",
                after.rid
            ),
            Action::Replicate => format!(
                "the replica copies the master (sold {})",
                sold(before)
            ),
            Action::Promote => format!(
                "the master dies; the replica is promoted with its copy (replication id {}, sale stamped {})",
                after.rid,
                after
                    .master
                    .meta
                    .map_or("-".to_owned(), |m| m.stamp.to_string())
            ),
            Action::ReseedRead => format!(
                "the watcher finds the sale {} and the queue drained; it reads the database",
                if before.master.meta.is_none() {
                    "not seeded"
                } else {
                    "fenced"
                }
            ),
            Action::ReseedWrite => match after.master.meta {
                Some(m) if after.master != before.master => format!(
                    "the watcher re-seeds Redis from what it read (sold {}, stamped {})",
                    m.sold(),
                    m.stamp
                ),
                _ => "the watcher finds the sale seeded and drops what it read".to_owned(),
            },
        };
        format!("{what} {tally}")
    }

    /// `path` in words, ending with the properties its last state breaks.
    pub fn narrate(&self, path: &Path<State, Action>) -> String {
        let steps = path.clone().into_vec();
        let mut out = String::new();
        for (i, pair) in steps.windows(2).enumerate() {
            let (before, Some(action)) = &pair[0] else {
                continue;
            };
            let _ = writeln!(
                out,
                "{:>2}. {}",
                i + 1,
                self.describe(before, *action, &pair[1].0)
            );
        }
        let broken = self.broken(path.last_state());
        if !broken.is_empty() {
            let _ = writeln!(out, "    breaks: {}", broken.join("; "));
        }
        out
    }
}

fn held_by(s: &State, relay: u8) -> String {
    match s.relays[usize::from(relay)] {
        Relay::Holding(o) => o.name(),
        Relay::Idle => "nothing".to_owned(),
    }
}
