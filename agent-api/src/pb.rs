//! Generated protobuf messages, client and server for `vpod.agent.v1` (from `proto/agent.proto`).

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("vpod.agent.v1");
