//! Tests: real_clients.
