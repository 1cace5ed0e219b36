//! The store conformance suite: every store operation, run against SQLite
//! always and PostgreSQL when `TEST_DATABASE_URL` is set. Each test gets a
//! database of its own.

mod attachments;
mod integrations;
mod jobs;
mod migrations;
mod outbox;
mod plans;
mod projects;
mod schedules;
mod secrets;
mod slack;
mod subscriptions;
mod tickets;
mod users;
mod webhooks;
mod workflow;
