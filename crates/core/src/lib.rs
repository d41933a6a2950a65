//! Pure logic shared by every ringfs component.
//!
//! Nothing in this crate performs I/O or depends on an async runtime, so all of it is
//! testable with plain unit and property tests.

pub mod compact;
pub mod error;
pub mod fs;
pub mod history;
pub mod ids;
pub mod layout;
pub mod migrate;
pub mod names;
pub mod slice;
pub mod units;

pub use error::CoreError;
pub use ids::{BlockId, Ino, NodeId, VolumeId};
