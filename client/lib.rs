//! disco: pull-based configuration management. The library holds every
//! stage of the pipeline (DESIGN §3); `main.rs` only parses and exits.
//!
//! Stages so far: [`config`] → [`fetch`] (local transport) → [`plan`], with
//! the server-tree model in [`tree`], names in [`names`] and parameters in
//! [`params`].

pub mod actions;
pub mod anchor;
pub mod attributes;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cron;
pub mod diff;
pub mod exec;
pub mod facts;
pub mod fetch;
pub mod fsutil;
pub mod graph;
pub mod lint;
pub mod masks;
pub mod merge;
pub mod names;
pub mod output;
pub mod params;
pub mod pipeline;
pub mod plan;
pub mod preview;
pub mod report;
pub mod rootpath;
pub mod run;
pub mod sandbox;
pub mod secrets;
pub mod transport;
pub mod tree;
pub mod watchdog;
