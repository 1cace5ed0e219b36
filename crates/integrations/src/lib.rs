//! Ticket sources. `inbound` checks each provider's webhook signature and
//! reads its payload into what Viberglass does with it (file or change a
//! ticket, a comment that may start a run, or nothing, with the reason);
//! `feedback` tells the source issue how a run went; `outbound` signs and
//! sends outbound webhooks (Standard Webhooks), refusing private destinations; `slack` is Slack's request
//! signatures, payloads and Web API.
//!
//! Vendor APIs stay in this crate; it knows no SQL and no HTTP routing.
#![forbid(unsafe_code)]

pub mod feedback;
pub mod inbound;
pub mod outbound;
pub mod slack;
