//! Black-box tests of the HTTP contract (`shared/CONTRACT.md`), compiled as
//! one binary. Each test starts its own server with the shared test kit
//! ([`kit`]: app harness, typed client, floods and checks, raw HTTP, child
//! processes, the distributed backends) on a free port with its own data
//! directory; `durability`, `cli` and `backup` also drive the real binary
//! (SIGKILL and SIGTERM mid-flood, generated secrets, a backup taken
//! mid-flood and restored). `store_contract` runs the
//! `OrderStore` contract against every order store; `webhooks` delivers
//! order events to a local receiver across a `kill -9`.

mod antibot;
mod auth;
mod backup;
mod bad_input;
mod buckets;
mod buyer_stream;
mod cli;
mod clock;
mod deploy_files;
mod distributed;
mod durability;
mod failover;
mod fast_lane;
mod fast_lane_equivalence;
mod fast_lane_shapes;
mod faults;
mod intents;
mod kit;
mod limits;
mod load;
mod malformed;
mod openapi;
mod orders;
mod pages;
mod purchase;
mod queue_contract;
mod request_id;
mod roles;
mod room;
mod sales;
mod slow_clients;
mod stock_contract;
mod store_contract;
mod tls;
mod webhooks;
mod window;
mod writer;
