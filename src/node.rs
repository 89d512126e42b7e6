//! Placeholder: node (being written).
