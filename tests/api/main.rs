//! Black-box tests of the HTTP contract (`shared/CONTRACT.md`), compiled as
//! one binary. Each test starts its own server (see [`helpers`]) on a free
//! port with its own data directory; `durability` and `cli` also drive the
//! real binary (SIGKILL and SIGTERM mid-flood, generated secrets).

mod auth;
mod bad_input;
mod cli;
mod cluster;
mod distributed;
mod durability;
mod fast_lane;
mod fast_lane_equivalence;
mod fast_lane_shapes;
mod faults;
mod helpers;
mod intents;
mod load;
mod malformed;
mod orders;
mod purchase;
mod sales;
