//! The query socket: who may connect and what each caller sees ([`access`]), the bounds on
//! clients ([`clients`]), the connection loop on tokio ([`server`]) and the answers built
//! from the shared state ([`queries`]).
//!
//! Invariants: no answer does I/O while holding the ledger lock; a bad request gets an error
//! reply and the connection goes on; what a caller outside the socket group sees is narrowed
//! to its own processes before anything is serialised.

pub mod access;
pub mod capture;
pub mod clients;
pub mod queries;
pub mod server;
