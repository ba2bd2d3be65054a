//! The behaviour every [`JobStore`](super::JobStore) backend must show, written once and run
//! against each backend.
