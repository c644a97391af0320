//! The paged KV cache: a fixed pool of pages ([`PagePool`], with reference
//! counts and a prefix cache of full pages), the block table of each live
//! sequence ([`BlockTables`]: the bookkeeping, all the scheduler needs), and
//! the backend storage the pages index ([`KvCache`] = storage + bookkeeping).
//!
//! Attention reads keys and values through each sequence's block table, so
//! sequences share pages (a common prompt prefix, or a forked sequence)
//! without copies; a shared page is copied only when one owner writes to it.

mod cache;
mod layout;
mod pages_io;
mod pool;
mod radix;
mod tables;

pub use cache::KvCache;
pub use layout::{KvLayout, KvShape};
pub use pool::{page_hash, PageId, PagePool, PoolStats, PrefixHash};
pub use radix::PromptPages;
pub use tables::{BlockTables, SeqId};
