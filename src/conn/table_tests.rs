//! Deterministic tests of the stream table: a fixed clock, real loopback socket pairs,
//! exact bytes and exact moments.

use super::*;

#[test]
fn an_empty_table_has_no_work() {
    let table = StreamTable::default();
    assert!(table.is_empty());
    assert!(!table.has_work());
}
