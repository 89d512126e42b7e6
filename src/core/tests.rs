//! Unit tests of the replica (being written).
