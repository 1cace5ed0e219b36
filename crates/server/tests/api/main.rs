//! HTTP integration tests: the real server on a real socket.

mod errors;
mod health;
mod integrations;
mod openapi;
mod projects;
mod request_ids;
mod tickets;
mod worker_auth;
