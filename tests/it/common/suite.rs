//! The store suite's helpers, from the exported kit (`tower_api_key::testing`, feature
//! `testing`): each store's test file names a `Backend` and calls
//! `tower_api_key::store_suite!`, so every store meets the same contract as a user's store.
#![allow(unused_imports)] // tests/logs shares the fixtures and uses a part of them.

pub use tower_api_key::testing::{account, clock, create, manager, verdict, Backend};
