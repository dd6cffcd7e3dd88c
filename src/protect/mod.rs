//! What stops a caller before any rate limit is counted: the whitelist and
//! blacklist, and the blocks that violations (and later, attacks) earn.

pub mod blocks;
pub mod conn_screen;
pub mod ddos;
pub mod lists;
pub mod shared;
