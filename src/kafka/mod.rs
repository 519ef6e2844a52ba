//! The Kafka edge, one file per stage.

pub mod consume;
pub mod dead_letter;
pub mod decision_log;
pub mod lag;
pub mod route;
pub mod sink;
