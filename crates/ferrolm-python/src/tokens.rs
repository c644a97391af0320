//! Token ids from Python (ints) as the core's `u32`s, checked once here.

use ferrolm_core::{Error, Result};

pub fn token_id(id: i64) -> Result<u32> {
    u32::try_from(id).map_err(|_| Error::InvalidInput(format!("token id {id} is outside the vocabulary")))
}

pub fn token_ids(ids: Vec<i64>) -> Result<Vec<u32>> {
    ids.into_iter().map(token_id).collect()
}

/// One row of ids per sequence.
pub fn token_rows(rows: Vec<Vec<i64>>) -> Result<Vec<Vec<u32>>> {
    rows.into_iter().map(token_ids).collect()
}
