//! Tests: state.
