//! HTTP integration tests: the real server on a real socket.

mod access;
mod attachments;
mod doctor;
mod errors;
mod health;
mod integrations;
mod openapi;
mod outbox;
mod pages;
mod projects;
mod request_ids;
mod route_matrix;
mod runs;
mod schedules;
mod secrets;
mod tickets;
mod worker_auth;
mod workflow;
