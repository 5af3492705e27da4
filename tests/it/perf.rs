//! Tests: perf.
