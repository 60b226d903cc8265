//! Placement: which warm agent runs a sandbox. The one implementation,
//! shared by the admission webhook (binding at CREATE) and the controller
//! (re-placement), so both decide alike.
//!
//! - [`index`]: the in-memory index of agents, their slots and their nodes'
//!   images, and the decision itself.
//! - [`feed`]: turns what the watches see (agent pods, nodes, pools,
//!   sandboxes) into index updates; the same feed in every component.
//!
//! Pure: no I/O, no clock beyond `Instant` stamps, so it is tested
//! exhaustively and fast.
#![forbid(unsafe_code)]
#![deny(missing_docs, rust_2018_idioms)]

pub mod feed;
pub mod index;

pub use feed::{Change, Feed, agent_of};
pub use index::{AgentState, Choice, Index, NoCapacity, PoolUsage, pool_key};
